"""Optimizers, parameter groups and learning-rate schedules shared by the tasks (gin: ``Optimizer.*`` and one
schedule class).

A task family's gin file states its recipe, e.g. SPEC §1.2's arithmetic Adam::

    Experiment.optimizer = @Optimizer()
    Optimizer.kind = 'adam_l2'                 # torch Adam's weight_decay: L2 added to the gradient
    Optimizer.learning_rate = 1e-3
    Optimizer.weight_decay = 1e-5
    Optimizer.schedule = @StepLR()             # StepLR(step_size=20 epochs, gamma=0.5)
    Optimizer.groups = {'embedding': {'learning_rate': 8e-6}}

The task names its parameter groups (``Task.param_groups``: group -> regex over ``/``-joined parameter paths;
``Optimizer.group_patterns`` adds or replaces regexes); ``Optimizer.groups`` gives a group its own
``learning_rate`` (the schedule's peak), ``weight_decay`` or ``frozen`` (no update and no decay at all, e.g.
SMC-Bench's never-stepped protein head, mBART's ``final_logits_bias``). Schedules map the update count ``t``
(completed updates, 0 at the first update) to the learning rate; the engine gives them the run's steps per
epoch and total steps.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from smc_jax.sparsity import path_str

PyTree = Any
ScheduleFn = Callable[[Any], Any]  # update count -> value

KINDS = ("adam", "adamw", "adam_l2")
DEFAULT_GROUP = "default"
GROUP_KEYS = ("learning_rate", "weight_decay", "frozen")


def _steps(count: Any) -> jax.Array:
    return jnp.asarray(count, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: :meth:`learning_rate` from the peak, the run's steps per epoch and total steps;
    :meth:`b1` an Adam β1 schedule where the schedule cycles it (else None)."""

    def learning_rate(self, peak: float, steps_per_epoch: int | None, total_steps: int) -> ScheduleFn | float:
        raise NotImplementedError

    def b1(self, b1: float, steps_per_epoch: int | None, total_steps: int) -> ScheduleFn | None:
        return None


@dataclasses.dataclass(frozen=True)
class Constant(Schedule):
    """The peak learning rate throughout (fairseq ``--lr-scheduler fixed``)."""

    def learning_rate(self, peak, steps_per_epoch, total_steps):
        return peak


@dataclasses.dataclass(frozen=True)
class StepLR(Schedule):
    """torch ``StepLR`` stepped once per epoch: ``peak·gamma^floor(epoch / step_epochs)``."""

    step_epochs: int = 20
    gamma: float = 0.5

    def learning_rate(self, peak, steps_per_epoch, total_steps):
        if not steps_per_epoch:
            raise ValueError("StepLR counts epochs, but this task's stream has none; use another Optimizer.schedule")
        return optax.exponential_decay(peak, int(steps_per_epoch) * int(self.step_epochs), self.gamma,
                                       staircase=True)


@dataclasses.dataclass(frozen=True)
class PolynomialDecay(Schedule):
    """fairseq ``polynomial_decay``: ``peak·max(t, 1)/warmup`` while ``t <= warmup_steps``, then from ``peak`` to
    ``end_learning_rate`` at the last update along ``(1 − progress)^power``. (fairseq sets the lr to peak/warmup
    before the first update and recomputes it after each one, so updates 1 and 2 both run at peak/warmup.)"""

    warmup_steps: int = 0
    end_learning_rate: float = 0.0
    power: float = 1.0

    def learning_rate(self, peak, steps_per_epoch, total_steps):
        warmup, total, end = int(self.warmup_steps), int(total_steps), float(self.end_learning_rate)

        def schedule(count):
            t = _steps(count)
            warm = peak * jnp.maximum(t, 1.0) / max(warmup, 1)
            remaining = jnp.clip(1.0 - (t - warmup) / max(total - warmup, 1), 0.0, 1.0)
            decay = end + (peak - end) * (remaining if self.power == 1 else remaining ** self.power)
            return jnp.where(t <= warmup, warm, decay) if warmup > 0 else decay

        return schedule


@dataclasses.dataclass(frozen=True)
class InverseSqrt(Schedule):
    """fairseq ``inverse_sqrt``: linear warmup from ``warmup_init_lr`` (fairseq's default −1 means 0, so the
    first update has lr 0) to ``peak`` over ``warmup_steps``, then ``peak·sqrt(warmup_steps / t)``."""

    warmup_steps: int = 4000
    warmup_init_lr: float = 0.0

    def learning_rate(self, peak, steps_per_epoch, total_steps):
        warmup, init = int(self.warmup_steps), float(self.warmup_init_lr)

        def schedule(count):
            t = _steps(count)
            if warmup <= 0:
                return peak * jax.lax.rsqrt(jnp.maximum(t, 1.0))
            warm = init + (peak - init) * t / warmup
            return jnp.where(t < warmup, warm, peak * jnp.sqrt(warmup / jnp.maximum(t, 1.0)))

        return schedule


@dataclasses.dataclass(frozen=True)
class OneCycle(Schedule):
    """torch ``OneCycleLR`` (two phases) with its β1 cycling (``cycle_momentum``; Adam's β1 is the momentum).
    ``per_epoch`` (SMC-Bench's protein recipe: built with ``steps_per_epoch=1, epochs=E`` and stepped once per
    epoch) holds each value for a whole epoch and spans ``epochs`` epochs (``None``: the run's); otherwise it
    spans the run's updates. The lr rises from ``peak/div_factor`` to ``peak`` over ``pct_start`` of the cycle,
    then falls to ``peak/div_factor/final_div_factor``; β1 moves the other way between ``max_momentum`` and
    ``base_momentum``. ``anneal``: ``'cos'`` | ``'linear'``."""

    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal: str = "cos"
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95
    per_epoch: bool = True
    epochs: int | None = None

    def __post_init__(self):
        if self.anneal not in ("cos", "linear"):
            raise ValueError(f"OneCycle.anneal must be 'cos' or 'linear', got {self.anneal!r}")
        if not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"OneCycle.pct_start must be in (0, 1), got {self.pct_start}")

    def _cycle(self, steps_per_epoch: int | None, total_steps: int) -> tuple[Callable, int]:
        """``(count -> cycle step, cycle length)``."""
        if not self.per_epoch:
            return _steps, int(total_steps)
        if not steps_per_epoch:
            raise ValueError("OneCycle.per_epoch needs epochs, but this task's stream has none; set "
                             "OneCycle.per_epoch = False")
        spe = int(steps_per_epoch)
        epochs = int(self.epochs) if self.epochs is not None else -(-int(total_steps) // spe)
        return (lambda count: jnp.floor_divide(jnp.asarray(count, jnp.int32), spe).astype(jnp.float32)), epochs

    def _anneal(self, start, end, pct):
        if self.anneal == "cos":
            return end + (start - end) / 2.0 * (jnp.cos(math.pi * pct) + 1.0)
        return (end - start) * pct + start

    def _two_phase(self, count, start, middle, end, steps_per_epoch, total_steps):
        to_step, length = self._cycle(steps_per_epoch, total_steps)
        step = to_step(count)
        end1, end2 = float(self.pct_start * length) - 1.0, float(length - 1)
        first = self._anneal(start, middle, step / max(end1, 1e-12))
        second = self._anneal(middle, end, (step - end1) / max(end2 - end1, 1e-12))
        return jnp.where(step <= end1, first, second)

    def learning_rate(self, peak, steps_per_epoch, total_steps):
        initial = peak / self.div_factor
        minimum = initial / self.final_div_factor
        return lambda count: self._two_phase(count, initial, peak, minimum, steps_per_epoch, total_steps)

    def b1(self, b1, steps_per_epoch, total_steps):
        if not self.cycle_momentum:
            return None
        hi, lo = self.max_momentum, self.base_momentum
        return lambda count: self._two_phase(count, hi, lo, hi, steps_per_epoch, total_steps)


@dataclasses.dataclass(frozen=True)
class WarmupCosine(Schedule):
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``end_learning_rate`` at the last update."""

    warmup_steps: int = 0
    end_learning_rate: float = 0.0

    def learning_rate(self, peak, steps_per_epoch, total_steps):
        return optax.warmup_cosine_decay_schedule(0.0, peak, int(self.warmup_steps),
                                                  max(int(total_steps), int(self.warmup_steps) + 1),
                                                  self.end_learning_rate)


SCHEDULES = (Constant, StepLR, PolynomialDecay, InverseSqrt, OneCycle, WarmupCosine)


def _adam(kind: str, learning_rate, b1, b2, eps, weight_decay) -> optax.GradientTransformation:
    if kind == "adam":
        return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
    if kind == "adamw":  # decoupled: p <- p - lr·(adam + wd·p), as torch AdamW and fairseq's Adam
        return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    # torch Adam(weight_decay=wd): wd·p added to the gradient before the moments
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                       optax.scale_by_learning_rate(learning_rate))


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optimizer of a run (gin: ``Optimizer.*``).

    - ``kind``: ``'adam'`` | ``'adamw'`` (decoupled weight decay, torch AdamW / fairseq Adam) | ``'adam_l2'``
      (weight decay as L2 added to the gradient, torch Adam's ``weight_decay``).
    - ``learning_rate`` (the schedule's peak), ``b1``, ``b2``, ``eps``, ``weight_decay``.
    - ``clip_norm``: global gradient-norm clipping before the optimizer (0: off, as fairseq's 0.0).
    - ``schedule``: a schedule of this module (``@StepLR()``, ``@PolynomialDecay()``, ``@InverseSqrt()``,
      ``@OneCycle()``, ``@WarmupCosine()``, ``@Constant()``).
    - ``groups``: per parameter group, a dict of ``learning_rate`` / ``weight_decay`` / ``frozen``;
      ``group_patterns``: group -> regex, added to (or replacing) the task's ``param_groups``.
    """

    kind: str = "adam"
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 0.0
    schedule: Schedule = Constant()
    groups: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    group_patterns: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Optimizer.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.schedule, Schedule):
            raise ValueError(f"Optimizer.schedule must be a schedule (@StepLR(), @PolynomialDecay(), ...), "
                             f"got {self.schedule!r}")
        for group, settings in dict(self.groups).items():
            unknown = set(settings) - set(GROUP_KEYS)
            if unknown:
                raise ValueError(f"Optimizer.groups[{group!r}] has unknown setting {sorted(unknown)[0]!r}; "
                                 f"settings: {', '.join(GROUP_KEYS)}")
        if self.learning_rate < 0 or self.weight_decay < 0 or self.clip_norm < 0:
            raise ValueError("Optimizer.learning_rate, weight_decay and clip_norm must be >= 0")

    def config(self) -> dict[str, Any]:
        """Every setting (the dense-workdir hash reads it)."""
        return {**dataclasses.asdict(self), "schedule": {type(self.schedule).__name__:
                                                         dataclasses.asdict(self.schedule)}}

    def build(self, param_groups: Mapping[str, str], steps_per_epoch: int | None, total_steps: int
              ) -> optax.GradientTransformation:
        """The optax transformation for params grouped by ``param_groups`` (the task's, plus ``group_patterns``)."""
        patterns = {**dict(param_groups), **dict(self.group_patterns)}
        unknown = [g for g in self.groups if g != DEFAULT_GROUP and g not in patterns]
        if unknown:
            raise ValueError(f"Optimizer.groups names group {unknown[0]!r}, which this task does not have; groups: "
                             f"{', '.join([DEFAULT_GROUP, *patterns])} (Optimizer.group_patterns adds one)")
        if not self.groups:
            tx = self._group({}, steps_per_epoch, total_steps)
        else:
            names = [DEFAULT_GROUP, *patterns]
            tx = optax.multi_transform({g: self._group(self.groups.get(g, {}), steps_per_epoch, total_steps)
                                        for g in names}, group_labels(patterns))
        return optax.chain(optax.clip_by_global_norm(self.clip_norm), tx) if self.clip_norm > 0 else tx

    def _group(self, settings: Mapping[str, Any], steps_per_epoch: int | None, total_steps: int
               ) -> optax.GradientTransformation:
        if settings.get("frozen", False):
            return optax.set_to_zero()
        peak = float(settings.get("learning_rate", self.learning_rate))
        decay = float(settings.get("weight_decay", self.weight_decay))
        lr = self.schedule.learning_rate(peak, steps_per_epoch, total_steps)
        b1 = self.schedule.b1(self.b1, steps_per_epoch, total_steps)
        if b1 is None:
            return _adam(self.kind, lr, self.b1, self.b2, self.eps, decay)
        inject = optax.inject_hyperparams(_adam, static_args=("kind",))
        return inject(kind=self.kind, learning_rate=lr, b1=b1, b2=self.b2, eps=self.eps, weight_decay=decay)


def group_labels(patterns: Mapping[str, str]) -> Callable[[PyTree], PyTree]:
    """``params -> labels``: each leaf's group, the first of ``patterns`` fully matching its path, else
    ``'default'``."""
    compiled = [(name, re.compile(p)) for name, p in patterns.items()]

    def labels(params: PyTree) -> PyTree:
        def label(path, _):
            text = path_str(path)
            return next((name for name, p in compiled if p.fullmatch(text)), DEFAULT_GROUP)

        return jax.tree_util.tree_map_with_path(label, params)

    return labels
