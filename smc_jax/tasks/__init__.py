"""The task families, registered by family name (``TASKS['arithmetic']`` is :class:`ArithmeticTask`); an
instance's ``name`` is its dataset or setting (``'mawps'``), what ``summary.json["task"]`` holds."""

from smc_jax.tasks.arithmetic import ArithmeticTask
from smc_jax.tasks.base import BatchStream, EpochStream, EvalChunk, Task, TaskBase
from smc_jax.tasks.commonsense import CommonsenseTask
from smc_jax.tasks.protein import ProteinTask
from smc_jax.tasks.translation import TranslationTask

TASKS: dict[str, type] = {"arithmetic": ArithmeticTask, "commonsense": CommonsenseTask, "protein": ProteinTask,
                         "translation": TranslationTask}

__all__ = ["TASKS", "ArithmeticTask", "BatchStream", "CommonsenseTask", "EpochStream", "EvalChunk", "ProteinTask",
           "Task", "TaskBase", "TranslationTask"]
