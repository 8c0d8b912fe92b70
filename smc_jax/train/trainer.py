"""The training loop of one run: the step-driven loop over a task's batch stream, evaluation, selection of the
reported evaluation, checkpoints, metrics and the summary.

Task-agnostic: the task is a :class:`smc_jax.tasks.base.Task`. :func:`fit` trains given starting params and masks
under one algorithm for a number of updates; the multi-phase experiments (After, LTH, folds) are built from it in
:mod:`smc_jax.train.pipelines`.

The host loop only feeds batches: the step counter lives on the host too, so the mask-update hint of
:func:`smc_jax.sparsity.sparse_optimizer` is a Python bool and no device value is read per step (the losses are
fetched once per ``log_every`` steps for the progress line, and checked there for divergence). Each evaluation
(at epoch ends, every ``eval_every`` updates, at the last update) is followed by a checkpoint of the whole state
plus the stream position (a resumed run continues with the same masks and the same batches) and, when the
evaluation is the one ``reported`` would now be taken from, a ``best`` checkpoint of params and masks (the one
the After and LTH pipelines continue from).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from smc_jax import sparsity as sp
from smc_jax.tasks.base import METRIC_MODES, SELECTIONS, Task
from smc_jax.train.checkpoints import RunCheckpoints
from smc_jax.train.optim import Optimizer
from smc_jax.train.partitioning import Partitioner, Partitioning
from smc_jax.train.records import Progress, append_event, trim_events, write_json
from smc_jax.train.steps import evaluator, place, placed_state, train_step

PyTree = Any


@dataclasses.dataclass(frozen=True)
class MaskRules:
    """Which params are prunable (SPEC §2.3 as data): leaves with ``ndim >= min_ndim`` whose ``/``-joined
    path fully matches an ``include`` regex (any, when empty) and no ``exclude`` regex; ``exclude_for``
    adds regexes per algorithm name (GTS: merge/pooler stay dense for snip, gmp and the RigL variants);
    ``emb_heads`` are the regexes of the embeddings and task heads, excluded too when
    ``no_pruning_emb_heads`` (fairseq's ``--no-pruning-emb-heads``, SPEC §2.3)."""

    min_ndim: int = 2
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_for: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    emb_heads: tuple[str, ...] = ()
    no_pruning_emb_heads: bool = False

    def masks(self, params: PyTree, algorithm_name: str) -> PyTree:
        exclude = tuple(self.exclude) + tuple(self.exclude_for.get(algorithm_name, ()))
        if self.no_pruning_emb_heads:
            exclude += tuple(self.emb_heads)
        return sp.prunable_masks(params, include=tuple(self.include), exclude=exclude, min_ndim=self.min_ndim)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Loop settings: ``log_every`` steps between progress/metrics lines, ``progress`` (``'auto'``: a bar on
    a terminal, plain lines otherwise; ``'bar'``; ``'lines'``; ``'off'``), ``keep_checkpoints`` (latest kept),
    ``split_step`` (gradient and optimizer update as two programs; ``None``: on CPU only, see :func:`train_step`),
    ``grad_accum_steps`` (micro-batches per update: each batch is split along its leading axis and the
    gradients averaged; steps count updates, SPEC Q-C8), ``eval_every`` (steps between evaluations besides
    those at epoch ends and at the last step; ``None``: none), ``eval_at_epoch_end`` (evaluate at every
    epoch's end; epoch-based tasks)."""

    log_every: int = 50
    progress: str = "auto"
    keep_checkpoints: int = 1
    split_step: bool | None = None
    grad_accum_steps: int = 1
    eval_every: int | None = None
    eval_at_epoch_end: bool = True

    def __post_init__(self):
        if int(self.log_every) < 1:
            raise ValueError(f"TrainConfig.log_every must be >= 1, got {self.log_every}")
        if int(self.grad_accum_steps) < 1:
            raise ValueError(f"TrainConfig.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.eval_every is not None and int(self.eval_every) < 1:
            raise ValueError(f"TrainConfig.eval_every must be None or >= 1, got {self.eval_every}")
        if self.progress not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"TrainConfig.progress must be auto, bar, lines or off, got {self.progress!r}")


class Diverged(RuntimeError):
    """The training loss became non-finite: the run stopped, ``summary.json`` says ``"diverged": true``."""

    def __init__(self, step: int, workdir: Path, checkpoint: int | None):
        self.step = int(step)
        last = (f"the last checkpoint is {workdir / 'checkpoints' / 'latest' / str(checkpoint)} (step {checkpoint})"
                if checkpoint is not None else "no checkpoint was saved before it")
        super().__init__(f"training diverged: non-finite loss at step {step} in {workdir}; {last}; lower the "
                         "learning rate (Optimizer.learning_rate) and rerun in a fresh WORKDIR")


def run_length(task: Task, num_epochs: int | None, train_steps: int | None) -> int:
    """Updates in the run: ``train_steps``, else ``num_epochs`` epochs of the task's stream."""
    if train_steps is not None:
        total = int(train_steps)
    elif task.steps_per_epoch is None:
        raise ValueError(f"{task.name} trains on an unbounded stream (no epochs): set TRAIN_STEPS")
    else:
        total = int(task.steps_per_epoch) * int(num_epochs if num_epochs is not None else 1)
    if total < 1:
        raise ValueError(f"TRAIN_STEPS must be >= 1, got {total}")
    return total


class Selection:
    """The best evaluation by ``metric_mode`` and the one ``reported`` is taken from (``best``, ``last`` or
    ``best_after_window``: the best at or after step ``start``), kept in the run's ``meta``."""

    def __init__(self, metric: str, mode: str, rule: str, start: int, meta: dict):
        if mode not in METRIC_MODES:
            raise ValueError(f"metric_mode must be one of {METRIC_MODES}, got {mode!r}")
        self.metric, self.mode, self.rule, self.start, self.meta = metric, mode, rule, int(start), meta

    def better(self, value: float, reference: dict | None) -> bool:
        if reference is None:
            return True
        ref = reference[self.metric]
        if ref is None or not math.isfinite(ref):
            return math.isfinite(value)
        return value > ref if self.mode == "max" else value < ref

    def update(self, step: int, result: dict) -> bool:
        """Record ``result``; True when it becomes the selected evaluation."""
        value = float(result[self.metric])
        self.meta["final"] = result
        if self.better(value, self.meta["best"]):
            self.meta["best"], self.meta["best_step"] = result, step
        chosen = self.rule == "last" or (step >= self.start and self.better(value, self.meta["selected"]))
        if chosen:
            self.meta["selected"], self.meta["selected_step"] = result, step
        return chosen


def _selection_rule(task: Task, algorithm: sp.Algorithm, total: int) -> tuple[str, int]:
    if task.selection not in SELECTIONS:
        raise ValueError(f"{task.name}: selection must be one of {SELECTIONS}, got {task.selection!r}")
    if task.selection == "best" and isinstance(algorithm, sp.GMP):
        return "best_after_window", algorithm.window(total)[1]
    return task.selection, 0


def fit(task: Task, algorithm: sp.Algorithm, workdir: str | Path, *, seed: int, params: PyTree, masks: PyTree,
        optimizer: Optimizer, num_epochs: int | None = None, train_steps: int | None = None,
        config: TrainConfig = TrainConfig(), report: dict | None = None, target_sparsity: float | None = None,
        partitioning: Partitioning | None = None) -> dict[str, Any]:
    """Train ``params`` (already masked) from ``masks`` under ``algorithm`` with ``optimizer`` for ``num_epochs``
    epochs or exactly ``train_steps`` updates (the last epoch cut short), evaluating at epoch ends
    (``config.eval_at_epoch_end``), every ``config.eval_every`` updates and at the last one; resume from
    ``workdir/checkpoints`` when present. Writes ``metrics.jsonl`` and ``summary.json`` and returns the summary;
    ``report`` adds keys to it. A non-finite training loss stops the run with :class:`Diverged` after writing a
    summary marked ``"diverged": true``. ``partitioning`` lays the state out on the device mesh (default: every
    device on ``data``). In a multi-process run every process calls this; only process 0 writes files."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spe = task.steps_per_epoch
    total = run_length(task, num_epochs, train_steps)
    epochs_label = (int(num_epochs) if train_steps is None else round(total / spe, 3)) if spe else None
    partitioner = Partitioner(partitioning or Partitioning())
    main = jax.process_index() == 0
    params, masks, params_sh = place(partitioner, task, params, masks)
    tx = sp.sparse_optimizer(optimizer.build(task.param_groups, spe, total), algorithm, masks, total)
    state, state_sh = placed_state(partitioner, params, params_sh, tx, seed)
    checkpoints = RunCheckpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
    metrics_path = workdir / "metrics.jsonl"
    meta = {"step": 0, "stream": None, "best": None, "best_step": None, "selected": None, "selected_step": None,
            "final": None, "wall_time_s": 0.0, "train_time_s": 0.0, "train_steps": 0}
    stream = task.train_stream(seed)
    restored = checkpoints.restore(state)
    if restored is not None:
        state, saved = restored
        meta.update(saved)
        stream.restore(meta["stream"] if meta["stream"] is not None else {k: saved[k] for k in ("epoch", "batch")})
        if main:
            trim_events(metrics_path, int(meta["step"]))
    elif metrics_path.exists() and main:
        metrics_path.unlink()
    step = int(meta["step"])
    rule, window_end = _selection_rule(task, algorithm, total)
    selection = Selection(task.metric, task.metric_mode, rule, window_end, meta)
    updates = set(algorithm.update_steps(total)) if algorithm.dynamic else set()
    step_fn = train_step(task, tx, config.split_step, config.grad_accum_steps, state_sh, partitioner)
    evaluate_params = evaluator(task)
    title = f"[{task.name}{'' if task.fold is None else f' fold {task.fold}'} {algorithm.name}]"
    progress = Progress(config.progress if main else "off", total, title)
    epochs_of = (lambda s: -(-s // spe)) if spe else (lambda s: None)

    def epoch_field(at: int) -> dict[str, int]:
        """``{'epoch': e}`` for an event at step ``at``; nothing on a stream without epochs."""
        epoch = epochs_of(at)
        return {} if epoch is None else {"epoch": epoch}

    def sparsity_now() -> tuple[PyTree, dict[str, Any], dict[str, Any]]:
        """The current masks on the host, their sparsity report and the algorithm's scalars."""
        masks_now = partitioner.to_host(sp.get_masks(state["opt_state"]))
        algo_state = partitioner.to_host(sp.get_sparse_state(state["opt_state"]).algorithm_state)
        return masks_now, sp.sparsity_report(masks_now), algo_state
    if restored is not None and main:  # always said, even with progress off
        print(f"{title} resumed from step {step} (stream at {stream.state()}) in {workdir}", file=sys.stderr,
              flush=True)
    started = time.perf_counter()
    pending: list[jax.Array] = []

    def summary(diverged_step: int | None = None) -> dict[str, Any]:
        masks_now, current, algo_state = sparsity_now()
        target = float(getattr(algorithm, "sparsity", 0.0)) if target_sparsity is None else float(target_sparsity)
        selected = meta["selected"]
        out = {
            "task": task.name, "model": task.model_name, "pretrained": task.pretrained, "algorithm": algorithm.name,
            "label": algorithm.label, "seed": int(seed), "fold": task.fold,
            "target_sparsity": target, "sparsity_label": target,
            "scheduled_sparsity": float(algo_state.get("scheduled_sparsity", target)),
            "actual_sparsity": current["global"], "metric": task.metric, "metrics": list(task.metrics),
            "metric_mode": task.metric_mode, "reported": None if selected is None else selected[task.metric],
            "selection": rule, "selected_step": meta["selected_step"], "selected": selected,
            "final": meta["final"], "best": meta["best"], "best_step": meta["best_step"], "num_eval": task.num_eval,
            "steps": step, "epochs": epochs_label, "wall_time_s": meta["wall_time_s"],
            "train_steps_per_s": meta["train_steps"] / meta["train_time_s"] if meta["train_time_s"] else math.nan,
            "num_params": int(sum(np.size(x) for x in jax.tree.leaves(state["params"]))),
            "num_prunable": sp.num_prunable(masks_now), "per_leaf_sparsity": current["per_leaf"],
            "diverged": diverged_step is not None, **(report or {}),
        }
        if diverged_step is not None:
            out["diverged_step"] = int(diverged_step)
        return out

    def check_finite(losses: np.ndarray, first: int) -> None:
        """Stop at the first non-finite loss (``losses`` are those of steps ``first + 1 …``)."""
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            at = first + int(bad[0]) + 1
            checkpoints.wait()
            append_event(metrics_path, {"event": "diverged", "step": at, "loss": float(losses[bad[0]])})
            progress.close()
            write_json(workdir / "summary.json", summary(diverged_step=at))
            raise Diverged(at, workdir, checkpoints.latest_step())

    def evaluate() -> None:
        """Evaluate, update the selection, checkpoint the state with the stream's position."""
        nonlocal started
        eval_started = time.perf_counter()
        result = evaluate_params(state["params"], partitioner)
        eval_time = time.perf_counter() - eval_started
        _, current, algo_state = sparsity_now()
        event = {"event": "eval", "step": step, **epoch_field(step), **result,
                 "sparsity": current["global"], **{k: float(v) for k, v in algo_state.items()},
                 "eval_time_s": eval_time}
        append_event(metrics_path, event)
        progress.message(" ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in event.items() if k != "event"))
        if selection.update(step, result):
            checkpoints.save_best(step, {"params": state["params"], "masks": sp.get_masks(state["opt_state"])},
                                  {"step": step, **epoch_field(step), **result})
        meta.update(stream=stream.state(), step=step)
        meta["wall_time_s"] += time.perf_counter() - started
        started = time.perf_counter()
        checkpoints.save(step, state, meta)

    try:
        train_started, first = time.perf_counter(), step
        while step < total:
            state, loss = step_fn(state, next(stream), (step + 1) in updates)
            pending.append(loss)
            step += 1
            if step % config.log_every == 0 or step == total:
                losses = np.asarray(jax.device_get(pending))
                check_finite(losses, step - len(losses))
                pending = []
                rate = (step - first) / max(time.perf_counter() - train_started, 1e-9)
                append_event(metrics_path, {"event": "train", "step": step, **epoch_field(step),
                                            "loss": float(losses.mean()), "steps_per_s": rate})
                shown = {k: f"{v}/{epochs_of(total)}" for k, v in epoch_field(step).items()}
                progress.update(step, {**shown, "loss": f"{losses.mean():.4f}", "it/s": f"{rate:.1f}"})
            epoch_end = spe is not None and step % spe == 0
            if (step == total or (config.eval_at_epoch_end and epoch_end)
                    or (config.eval_every and step % int(config.eval_every) == 0)):
                if pending:  # no loss of this stretch goes unchecked into an evaluation
                    check_finite(np.asarray(jax.device_get(pending)), step - len(pending))
                jax.block_until_ready(state["step"])
                meta["train_time_s"] += time.perf_counter() - train_started
                meta["train_steps"] += step - first
                evaluate()
                train_started, first = time.perf_counter(), step
    except BaseException:  # an error or Ctrl-C: finish the saves in flight, so a rerun resumes cleanly
        checkpoints.close()
        raise
    checkpoints.wait()
    progress.close()
    out = summary()
    write_json(workdir / "summary.json", out)
    checkpoints.close()
    return out
