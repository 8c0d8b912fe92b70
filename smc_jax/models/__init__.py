"""Flax modules with HuggingFace/PyTorch-compatible parameter names (imports nothing else of smc_jax)."""
