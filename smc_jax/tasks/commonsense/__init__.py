"""Commonsense reasoning: CommonsenseQA, WinoGrande and RACE (data and formats in ``data``, the task in ``task``)."""

from smc_jax.tasks.commonsense.task import CommonsenseTask

__all__ = ["CommonsenseTask"]
