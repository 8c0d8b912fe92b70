"""gin registration of everything a gin file may name: the algorithms, the tasks and the engine's settings.

The sparsity core and the tasks stay free of gin (DESIGN.md); this module registers them, once, under
their class names (``RigL.sparsity = %SPARSITY``, ``Experiment.task = @ArithmeticTask``): the algorithms, every
task family of ``smc_jax.tasks.TASKS``, the optimizer and its schedules (with the protein head's optimizer group,
``protein_head_group``), and the engine's settings.
"""

from __future__ import annotations

import gin

from smc_jax import sparsity as sp
from smc_jax.tasks import TASKS
from smc_jax.tasks.protein import protein_head_group
from smc_jax.train.optim import SCHEDULES, Optimizer
from smc_jax.train.partitioning import Partitioning
from smc_jax.train.pipelines import Experiment
from smc_jax.train.trainer import MaskRules, TrainConfig

ALGORITHM_CLASSES = (sp.Dense, sp.LTH, sp.OMPAfter, sp.RandomAfter, sp.GMP, sp.OMPBefore, sp.RandomBefore, sp.SNIP,
                     sp.RigL)
CONFIGURABLES = (*ALGORITHM_CLASSES, *TASKS.values(), Optimizer, *SCHEDULES, Experiment, MaskRules, Partitioning,
                 TrainConfig, protein_head_group)

_registered: dict[str, type] = {}


def register() -> dict[str, type]:
    """Register the configurables with gin (idempotent); returns name -> the gin-wrapped class."""
    if not _registered:
        for cls in CONFIGURABLES:
            _registered[cls.__name__] = gin.external_configurable(cls, name=cls.__name__)
    return _registered


def experiment() -> Experiment:
    """The :class:`Experiment` the parsed gin config describes."""
    return register()["Experiment"]()
