"""smc_jax: SMC-Bench ("Sparsity May Cry", ICLR 2023) rebuilt in JAX/Flax."""

__version__ = "0.1.0"
