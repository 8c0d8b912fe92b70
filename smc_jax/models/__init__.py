"""Flax modules with HuggingFace/PyTorch-compatible parameter names (imports nothing else of smc_jax)."""

from typing import Any

__all__ = ["from_pretrained"]


def __getattr__(name: str) -> Any:
    # Lazy: importing smc_jax.models (e.g. for the GTS modules) does not pull in the checkpoint loader.
    if name == "from_pretrained":
        from smc_jax.models.hf import from_pretrained

        return from_pretrained
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
