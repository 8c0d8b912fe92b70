"""The seam between the training engine and a task: the :class:`Task` protocol, batch streams, and a base class.

The engine (:mod:`smc_jax.train`) calls a task only through the members of :class:`Task`, each documented here
once. A task family is a class registered in ``smc_jax.tasks.TASKS``; an instance is one dataset or setting
(``name``), one fold of it and one model. :class:`TaskBase` carries what the families share: the epoch
stream, the SNIP batch, cached parameter axes and the default metric contract.

Evaluation is split in two: :meth:`Task.eval_step` is a pure, jittable function of ``(params, batch)`` that
the engine jits, shards and runs over every chunk of :meth:`Task.eval_sets` (a forward, an argmax, a beam
search); the engine gathers its outputs to the host, trims each chunk to its real rows, concatenates the
chunks of a set, and hands them to :meth:`Task.compute_metrics`, plain Python over numpy arrays.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

PyTree = Any
Batch = dict[str, np.ndarray]

METRIC_MODES = ("max", "min")
SELECTIONS = ("best", "last")


class EvalChunk(NamedTuple):
    """One jitted evaluation call: ``batch`` padded to a fixed row count, of which the first ``count`` are real."""

    count: int
    batch: Batch


@runtime_checkable
class BatchStream(Protocol):
    """A run's training batches in order, with a checkpointable position.

    ``next(stream)`` returns the next batch; :meth:`state` is the position of the batch it would return next
    (JSON-serialisable; the engine stores it in every checkpoint); :meth:`restore` moves the stream there,
    so a resumed run sees exactly the batches the uninterrupted run would have seen.
    """

    def __next__(self) -> Batch: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: Mapping[str, Any]) -> None: ...


@runtime_checkable
class Task(Protocol):
    """What the engine, the pipelines and the scripts read from a task.

    Names
      ``name``: the dataset or setting (``'mawps'``, ``'csqa'``); ``summary.json["task"]``.
      ``model_name``: ``'gts'``, ``'roberta'``, …; ``pretrained``: the checkpoint id or directory, ``None`` for
      learned weights; ``fold``: the cross-validation fold, ``None`` where the dataset has none.

    Metric contract
      ``metric``: the key of :meth:`compute_metrics` that selects; ``metrics``: the keys a report tabulates;
      ``metric_mode``: ``'max'`` or ``'min'`` (which evaluation is best); ``selection``: ``'best'`` (the best
      evaluation by ``metric_mode``; a GMP run takes the best at or after its pruning window) or ``'last'``
      (the final evaluation). ``num_eval``: the examples behind ``metric`` (folds are micro-averaged by it).

    Training
      ``steps_per_epoch``: updates per pass over the data, ``None`` for an unbounded sampled stream (the run
      then needs ``TRAIN_STEPS``). :meth:`train_stream` gives the batches; :meth:`loss` is the mean training
      loss of a batch, dropout on with ``key``, off with ``None``; :meth:`snip_batch` is the batch SNIP scores.
      ``param_groups``: optimizer group name -> regex fully matching ``/``-joined parameter paths (first match
      wins; the rest form ``'default'``); the optimizer itself is a gin binding of ``train/optim.py``.
    """

    name: str
    model_name: str
    pretrained: str | None
    fold: int | None
    metric: str
    metrics: tuple[str, ...]
    metric_mode: str
    selection: str
    num_eval: int
    steps_per_epoch: int | None
    param_groups: Mapping[str, str]

    @classmethod
    def folds(cls, dataset: str) -> int | None:
        """How many folds ``FOLD='all'`` expands to for ``dataset``; ``None`` for a single split."""
        ...

    def init_params(self, key: jax.Array) -> PyTree:
        """The starting parameters (a pretrained checkpoint's, or a random init from ``key``)."""
        ...

    def param_axes(self) -> PyTree | None:
        """Logical axis names per parameter (a ``PartitionSpec`` per leaf, like the params); ``None``: replicate."""
        ...

    def loss(self, params: PyTree, batch: PyTree, key: jax.Array | None = None) -> jax.Array:
        """The scalar training loss of ``batch``; jittable."""
        ...

    def train_stream(self, seed: int) -> BatchStream:
        """The run's training batches from the start (the engine restores a resumed run's position)."""
        ...

    def snip_batch(self, seed: int) -> Batch:
        """The batch whose gradients SNIP scores (not consumed from the training stream)."""
        ...

    def eval_sets(self) -> Mapping[str, Sequence[EvalChunk]]:
        """Evaluation sets by name, each a list of padded chunks (built once; the same at every evaluation)."""
        ...

    def eval_step(self, params: PyTree, batch: PyTree) -> PyTree:
        """Per-row outputs of one chunk (every leaf leads with the batch axis); pure and jittable."""
        ...

    def compute_metrics(self, outputs: Mapping[str, PyTree]) -> dict[str, float]:
        """Metrics (host side) from ``{set name: outputs of its real rows, in eval_sets order}``."""
        ...

    def config(self) -> dict[str, Any]:
        """The settings that decide a dense run's result (the dense-workdir hash reads them)."""
        ...

    def describe(self) -> str:
        """One line for the log: data sizes, model."""
        ...


class EpochStream:
    """The stream of an epoch-based task: ``epoch_batches(epoch)`` gives each epoch's batches (a fresh shuffle
    per epoch), consumed in order; the position is ``{'epoch', 'batch'}`` of the next batch."""

    def __init__(self, epoch_batches: Callable[[int], list[Batch]], steps_per_epoch: int, name: str = "task"):
        self._epoch_batches, self.steps_per_epoch, self._name = epoch_batches, int(steps_per_epoch), name
        self.epoch, self.batch = 0, 0
        self._batches: list[Batch] | None = None

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._batches is None:
            self._batches = self._epoch_batches(self.epoch)
            if len(self._batches) != self.steps_per_epoch:
                raise ValueError(f"{self._name}: epoch {self.epoch} has {len(self._batches)} batches, "
                                 f"steps_per_epoch says {self.steps_per_epoch}")
        batch = self._batches[self.batch]
        self.batch += 1
        if self.batch == len(self._batches):
            self.epoch, self.batch, self._batches = self.epoch + 1, 0, None
        return batch

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.batch}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.batch, self._batches = int(state["epoch"]), int(state["batch"]), None


class TaskBase:
    """What task families share. A subclass sets ``train`` (its encoded training examples) and ``batch_size``,
    and implements :meth:`epoch_batches`, :meth:`make_train_batch` (a padded batch of example indices),
    :meth:`_trace_param_axes`, :meth:`init_params`, :meth:`loss`, :meth:`eval_sets`, :meth:`eval_step`,
    :meth:`compute_metrics`, :meth:`config` and :meth:`describe`; it overrides the class attributes of the
    metric contract where they differ."""

    family: ClassVar[str] = ""
    metric: str = "accuracy"
    metrics: tuple[str, ...] = ("accuracy",)
    metric_mode: str = "max"
    selection: str = "best"
    param_groups: Mapping[str, str] = {}
    SNIP_EPOCH: ClassVar[int] = 2**31 - 1  # SNIP's batch: the first of a separate shuffle

    train: list
    batch_size: int
    dataset: str
    fold: int | None

    @classmethod
    def folds(cls, dataset: str) -> int | None:
        return None

    @classmethod
    def configured_name(cls, bindings: Mapping[str, Any]) -> str:
        """The ``name`` a configuration gives, without loading anything (sweeps name runs with it): the
        ``dataset`` binding, else the class's default."""
        if "dataset" in bindings:
            return str(bindings["dataset"])
        default = getattr(cls, "__dataclass_fields__", {}).get("dataset")
        return str(default.default) if default is not None else cls.family

    @property
    def name(self) -> str:
        return self.dataset

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // int(self.batch_size))

    def epoch_order(self, seed: int, epoch: int) -> list[list[int]]:
        """Example indices of each batch of ``epoch``."""
        raise NotImplementedError

    def make_train_batch(self, indices: Sequence[int]) -> Batch:
        raise NotImplementedError

    def epoch_batches(self, seed: int, epoch: int) -> list[Batch]:
        """The padded batches of ``epoch``, in order."""
        return [self.make_train_batch(b) for b in self.epoch_order(seed, epoch)]

    def train_stream(self, seed: int) -> BatchStream:
        return EpochStream(functools.partial(self.epoch_batches, seed), self.steps_per_epoch, self.name)

    def snip_batch(self, seed: int) -> Batch:
        return self.make_train_batch(self.epoch_order(seed, self.SNIP_EPOCH)[0])

    def param_axes(self) -> PyTree | None:
        if "_param_axes_cache" not in self.__dict__:  # traced once: every layout of a run asks for it
            self.__dict__["_param_axes_cache"] = self._trace_param_axes()
        return self.__dict__["_param_axes_cache"]

    def _trace_param_axes(self) -> PyTree | None:
        return None
