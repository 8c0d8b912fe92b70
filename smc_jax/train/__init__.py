"""smc_jax.train: the training engine (train loop, checkpoints)."""
