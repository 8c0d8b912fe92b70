"""Arithmetic reasoning: MAWPS, ASDiv-A and SVAMP (data and scoring in ``data``, the task in ``task``)."""

from smc_jax.tasks.arithmetic.task import ArithmeticTask

__all__ = ["ArithmeticTask"]
