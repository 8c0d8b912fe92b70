"""What the benchmarks of :mod:`smc_jax.cli.bench` share: waiting for and timing device work, the machine
line of their headers, the three configurations they compare, and a task family's gin recipe (its optimizer
and mask rules)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax

import smc_jax.sparsity as sp

if TYPE_CHECKING:
    from smc_jax.tasks import Task
    from smc_jax.train.pipelines import Experiment

CONFIGS = ("dense", "static", "rigl")


def block(tree):
    """``tree`` once every array in it is computed."""
    jax.block_until_ready(tree)
    return tree


def timed(fn, *args) -> float:
    """Seconds ``fn(*args)`` takes until its outputs are computed."""
    start = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - start


def run_round(state, run_step, batches, hint: bool = False) -> tuple[object, object, float]:
    """``(state, last loss, seconds)`` after a train step on each of ``batches`` in turn (``hint``: the mask-update
    hint; by default non-update steps), the whole state computed (the update may run after the loss)."""
    loss = None
    start = time.perf_counter()
    for batch in batches:
        state, loss = run_step(state, batch, hint)
    jax.block_until_ready(state)
    return state, loss, time.perf_counter() - start


def machine(cpus: bool = True) -> str:
    """``'<n> <platform> device(s)'``, with ``', <n> CPU(s)'`` when ``cpus``."""
    text = f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
    return text + (f", {os.cpu_count()} CPU(s)" if cpus else "")


def bench_algorithm(name: str, update_frequency: int, fairseq_order: bool = False) -> sp.Algorithm:
    """One of :data:`CONFIGS`: ``dense``; ``static``, Random (Before) at 0.5; ``rigl``, RigL 0.5 updating every
    ``update_frequency`` steps (``fairseq_order``: the mask update on the pre-update weights, SPEC §2.1)."""
    if name == "dense":
        return sp.Dense()
    if name == "static":
        return sp.RandomBefore(sparsity=0.5)
    if name == "rigl":
        return sp.RigL(sparsity=0.5, update_frequency=update_frequency, fairseq_order=fairseq_order)
    raise ValueError(f"unknown configuration {name!r}: use dense, static or rigl")


def compiled_run(name: str, task: Task, optimizer, params, prunable, batch, update_frequency: int, total_steps: int, *,
                 key: jax.Array, fairseq_order: bool = False) -> dict:
    """A configuration of :data:`CONFIGS` ready to time: ``sparse_optimizer(optimizer)`` over ``params``, the engine's
    train step for ``task`` (only its ``loss`` and ``param_groups`` are used), compiled by a first call on ``batch``
    (and a first mask update when the algorithm is dynamic). Returns ``{"state", "run_step", "first", "times"}``,
    ``first`` holding the seconds of those first calls (``"train"``, ``"update"``)."""
    from smc_jax.train.steps import init_state, train_step

    algorithm = bench_algorithm(name, update_frequency, fairseq_order=fairseq_order)
    masks = algorithm.init_masks(params, prunable, key=key)
    tx = sp.sparse_optimizer(optimizer, algorithm, masks, total_steps)
    state = init_state(sp.apply_masks(params, masks), tx, seed=0)
    run_step = train_step(task, tx)
    first = {}
    state, _, first["train"] = run_round(state, run_step, [batch])
    if algorithm.dynamic:
        state, _, first["update"] = run_round(state, run_step, [batch], hint=True)
    return {"state": state, "run_step": run_step, "first": first, "times": {k: [] for k in first}}


def recipe(task_gin: str, gin_files: Sequence[str] = ("algorithms/dense.gin",)) -> Experiment:
    """The :class:`Experiment` a task family's gin recipe states (``task_gin``, e.g. ``'tasks/mawps.gin'``, parsed
    with ``gin_files`` from the repo's ``gin/``): the benchmarks read its ``optimizer`` (built with
    ``.build(param_groups, steps_per_epoch, total_steps)``) and ``mask_rules`` rather than copying numbers."""
    from smc_jax.cli import gin_cli
    from smc_jax.train import config

    gin_cli.parse_run([task_gin, *gin_files])
    return config.experiment()
