"""The training loop of one run: jitted train step, per-epoch evaluation, checkpoints, metrics, summary.

Task-agnostic: a task object (e.g. :class:`smc_jax.tasks.arithmetic.task.ArithmeticTask`) supplies
``init_params``, ``train_batches(seed, epoch)``, ``loss(params, batch, key)``, ``optimizer(steps_per_epoch)``,
``evaluate(params)`` and the names it reports (``name``, ``model_name``, ``pretrained``, ``fold``,
``metric``, ``metrics``). :func:`fit` trains given starting params and masks under one algorithm; the
multi-phase experiments (After, LTH, folds) are built from it in :mod:`smc_jax.train.pipelines`.

The host loop only feeds batches: the step counter lives on the host too, so the mask-update hint of
:func:`smc_jax.sparsity.sparse_optimizer` is a Python bool and no device value is read per step (the loss
is fetched once per ``log_every`` steps for the progress line). Every epoch ends with an evaluation, a
checkpoint of the whole state plus the data position (resume continues with the same masks and the same
batches), and, when the selection metric improves, a ``best`` checkpoint of params and masks.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smc_jax import sparsity as sp
from smc_jax.train.checkpoints import RunCheckpoints
from smc_jax.train.partitioning import Partitioner, Partitioning

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
    the one at every epoch's end and at the last step; ``None``: epoch ends only)."""

    log_every: int = 50
    progress: str = "auto"
    keep_checkpoints: int = 1
    split_step: bool | None = None
    grad_accum_steps: int = 1
    eval_every: int | None = None

    def __post_init__(self):
        if int(self.log_every) < 1:
            raise ValueError(f"TrainConfig.log_every must be >= 1, got {self.log_every}")
        if int(self.grad_accum_steps) < 1:
            raise ValueError(f"TrainConfig.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if self.eval_every is not None and int(self.eval_every) < 1:
            raise ValueError(f"TrainConfig.eval_every must be None or >= 1, got {self.eval_every}")
        if self.progress not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"TrainConfig.progress must be auto, bar, lines or off, got {self.progress!r}")


class Progress:
    """One updating line on a terminal, plain log lines elsewhere."""

    def __init__(self, mode: str, total: int, title: str):
        self.bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.quiet = mode == "off"
        self.total, self.title = total, title
        self.last = ""

    def update(self, step: int, fields: dict[str, str]) -> None:
        if self.quiet:
            return
        text = " ".join(f"{k} {v}" for k, v in fields.items())
        if self.bar:
            done = int(30 * step / max(self.total, 1))
            line = f"\r{self.title} [{'#' * done}{'.' * (30 - done)}] {step}/{self.total} {text}"
            sys.stderr.write(line.ljust(len(self.last)))
            sys.stderr.flush()
            self.last = line
        else:
            print(f"{self.title} step {step}/{self.total} {text}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar and self.last:
            sys.stderr.write("\n")
            self.last = ""
        print(f"{self.title} {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar and self.last and not self.quiet:
            sys.stderr.write("\n")
            sys.stderr.flush()


def init_state(params: PyTree, tx: optax.GradientTransformation, seed: int) -> dict[str, Any]:
    """The train state: step counter, a copy of ``params`` (the step donates its state, not the caller's
    arrays), the optimizer state and the dropout key data."""
    params = jax.tree.map(jnp.array, params)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 2))}


def place(partitioner: Partitioner, task: Any, params: PyTree, masks: PyTree | None = None
          ) -> tuple[PyTree, PyTree | None, PyTree]:
    """``(params, masks, param shardings)`` laid out on ``partitioner``'s mesh: params by the task's logical
    axes (``task.param_axes()``; replicated when the task has none), mask trees like their params."""
    params_sh = partitioner.param_shardings(params, task.param_axes() if hasattr(task, "param_axes") else None)
    params = partitioner.put(params, params_sh)
    if masks is not None:
        masks = partitioner.put(masks, partitioner.like_params(masks, params, params_sh))
    return params, masks, params_sh


def placed_state(partitioner: Partitioner, params: PyTree, params_sh: PyTree, tx: optax.GradientTransformation,
                 seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`init_state` of placed ``params`` on the mesh, and its shardings: optimizer-state leaves (moments,
    masks) like their params, the step and the rng replicated."""
    state = init_state(params, tx, seed)
    rep = partitioner.replicated
    shardings = {"step": rep, "params": params_sh, "rng": rep,
                 "opt_state": partitioner.like_params(state["opt_state"], params, params_sh)}
    return partitioner.put(state, shardings), shardings


def accumulated_value_and_grad(loss: Any, accum_steps: int):
    """``loss``'s value and gradient averaged over ``accum_steps`` equal micro-batches: every batch array is
    split along its leading (batch) axis and the micro-batches run one after another in a ``lax.scan``, so
    activations are held for one micro-batch at a time; micro-batch ``i`` gets dropout key ``fold_in(key, i)``."""
    if accum_steps == 1:
        return jax.value_and_grad(loss)

    def split(x):
        if x.shape[0] % accum_steps:
            raise ValueError(f"a batch of {x.shape[0]} rows does not split into {accum_steps} micro-batches; "
                             "make BATCH_SIZE a multiple of TrainConfig.grad_accum_steps")
        return x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:])

    def value_and_grad(params, batch, key):
        def body(carry, xs):
            i, micro = xs
            value, grads = jax.value_and_grad(loss)(params, micro, jax.random.fold_in(key, i))
            return (carry[0] + value, jax.tree.map(jnp.add, carry[1], grads)), None

        zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
        (value, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), jax.tree.map(split, batch)))
        return value / accum_steps, jax.tree.map(lambda g: g / accum_steps, grads)

    return value_and_grad


def train_step(task: Any, tx: optax.GradientTransformation, split: bool | None = None, accum_steps: int = 1,
               state_shardings: PyTree | None = None, partitioner: Partitioner | None = None):
    """The train step ``(state, batch, hint) -> (state, loss)``: jitted, the state donated; ``hint`` is the
    mask-update hint of :func:`smc_jax.sparsity.sparse_optimizer` (a Python bool; one program per value).
    ``accum_steps`` > 1 averages the gradient over that many micro-batches of ``batch``
    (:func:`accumulated_value_and_grad`); the optimizer and any mask update see the averaged gradient.
    With ``state_shardings`` and ``partitioner`` the programs get explicit ``in_shardings``/``out_shardings``
    (the state as given, the batch split by rows, the loss replicated), so the state keeps its layout.

    ``split`` runs the step as two programs, the loss gradient and then the optimizer update, instead of
    one. On XLA:CPU the pair is faster (GTS on MAWPS: ~142 ms against ~153 ms per step as one program,
    measured with the GTS bench batches); ``None`` splits on CPU backends and fuses elsewhere. Both
    dispatch asynchronously: no host sync either way."""
    split = jax.default_backend() == "cpu" if split is None else bool(split)

    value_and_grad = accumulated_value_and_grad(task.loss, int(accum_steps))

    def gradient(params, rng, step, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
        return value_and_grad(params, batch, key)

    def update(state, grads, hint):
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"], is_update_step=hint)
        params = optax.apply_updates(state["params"], updates)
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": state["rng"]}

    sharded = state_shardings is not None and partitioner is not None
    jits: dict[int, tuple] = {}

    def programs(batch):
        """The jitted programs for this batch's row count (one per task in practice)."""
        rows = int(np.shape(jax.tree.leaves(batch)[0])[0])
        if rows not in jits:
            kw_grad, kw_update, kw_fused = {}, {}, {}
            if sharded:
                rep = partitioner.replicated
                batch_sh = jax.tree.map(lambda _: partitioner.batch_sharding(rows), batch)
                params_sh = state_shardings["params"]
                kw_grad = dict(in_shardings=(params_sh, rep, rep, batch_sh), out_shardings=(rep, params_sh))
                kw_update = dict(in_shardings=(state_shardings, params_sh), out_shardings=state_shardings)
                kw_fused = dict(in_shardings=(state_shardings, batch_sh), out_shardings=(state_shardings, rep))
            if split:
                jits[rows] = (jax.jit(gradient, **kw_grad),
                              {hint: jax.jit(functools.partial(update, hint=hint), donate_argnums=0, **kw_update)
                               for hint in (False, True)})
            else:
                jits[rows] = ({hint: jax.jit(functools.partial(fused, hint=hint), donate_argnums=0, **kw_fused)
                               for hint in (False, True)},)
        return jits[rows]

    def fused(state, batch, hint):
        loss, grads = gradient(state["params"], state["rng"], state["step"], batch)
        return update(state, grads, hint), loss

    def step(state, batch, hint=False):
        if sharded:
            batch = partitioner.put_batch(batch)
        compiled = programs(batch)
        if split:
            gradient_fn, update_fns = compiled
            loss, grads = gradient_fn(state["params"], state["rng"], state["step"], batch)
            return update_fns[bool(hint)](state, grads), loss
        return compiled[0][bool(hint)](state, batch)

    step.programs = programs  # the jitted programs for a batch (tests lower them to inspect the HLO)
    return step


def _trim_metrics(path: Path, step: int) -> None:
    """Drop the events a resumed run will write again (those after the restored step)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _append(path: Path, event: dict) -> None:
    if jax.process_index() != 0:
        return
    with open(path, "a") as f:
        f.write(json.dumps(event) + "\n")


def fit(task: Any, algorithm: sp.Algorithm, workdir: str | Path, *, seed: int, num_epochs: int,
        params: PyTree, masks: PyTree, config: TrainConfig = TrainConfig(), report: dict | None = None,
        target_sparsity: float | None = None, train_steps: int | None = None,
        partitioning: Partitioning | None = None) -> dict[str, Any]:
    """Train ``params`` (already masked) from ``masks`` under ``algorithm`` for ``num_epochs`` (or exactly
    ``train_steps`` updates, the last epoch cut short), evaluating after every epoch, at the last step and
    every ``config.eval_every`` steps; resume from ``workdir/checkpoints`` when present. Writes
    ``metrics.jsonl`` and ``summary.json`` and returns the summary. ``report`` adds keys to the summary
    (``sparsity_label`` …). ``partitioning`` lays the state out on the device mesh (default: every device
    on ``data``); params and masks may come as host or single-device arrays. In a multi-process run every
    process calls this; only process 0 writes files and progress."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = task.steps_per_epoch
    total = int(train_steps) if train_steps is not None else steps_per_epoch * int(num_epochs)
    if total < 1:
        raise ValueError(f"TRAIN_STEPS must be >= 1, got {total}")
    epochs_to_run = -(-total // steps_per_epoch)
    epochs_label = int(num_epochs) if train_steps is None else round(total / steps_per_epoch, 3)
    partitioner = Partitioner(partitioning or Partitioning())
    main = jax.process_index() == 0
    params, masks, params_sh = place(partitioner, task, params, masks)
    tx = sp.sparse_optimizer(task.optimizer(steps_per_epoch, total), algorithm, masks, total)
    state, state_sh = placed_state(partitioner, params, params_sh, tx, seed)
    checkpoints = RunCheckpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
    metrics_path = workdir / "metrics.jsonl"
    meta = {"epoch": 0, "batch": 0, "best": None, "best_step": None, "final": None, "wall_time_s": 0.0,
            "train_time_s": 0.0, "train_steps": 0}
    restored = checkpoints.restore(state)
    if restored is not None:
        state, meta = restored
        if main:
            _trim_metrics(metrics_path, int(meta["step"]))
    elif metrics_path.exists() and main:
        metrics_path.unlink()
    step = int(meta.get("step", 0))
    updates = set(algorithm.update_steps(total)) if algorithm.dynamic else set()
    report_from = algorithm.window(total)[1] if isinstance(algorithm, sp.GMP) else 0
    step_fn = train_step(task, tx, config.split_step, config.grad_accum_steps, state_sh, partitioner)
    title = f"[{task.name}{'' if task.fold is None else f' fold {task.fold}'} {algorithm.name}]"
    progress = Progress(config.progress if main else "off", total, title)
    if restored is not None and main:  # always said, even with progress off
        print(f"{title} resumed from step {step} (epoch {meta['epoch']}, batch {meta['batch']}) in {workdir}",
              file=sys.stderr, flush=True)
    started = time.perf_counter()
    pending: list[jax.Array] = []

    def evaluate(epoch: int, next_epoch: int, next_batch: int) -> None:
        """Evaluate, keep the best, checkpoint the state with the position of the next batch."""
        nonlocal started
        eval_started = time.perf_counter()
        result = task.evaluate(state["params"] if jax.process_count() == 1 else partitioner.replicate(state["params"]))
        eval_time = time.perf_counter() - eval_started
        current = sp.sparsity_report(partitioner.to_host(sp.get_masks(state["opt_state"])))
        algo_state = partitioner.to_host(sp.get_sparse_state(state["opt_state"]).algorithm_state)
        event = {"event": "eval", "step": step, "epoch": epoch + 1, **result,
                 "sparsity": current["global"], **{k: float(v) for k, v in algo_state.items()},
                 "eval_time_s": eval_time}
        _append(metrics_path, event)
        progress.message(" ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in event.items() if k != "event"))
        meta["final"] = result
        if step >= report_from and (meta["best"] is None or result[task.metric] > meta["best"][task.metric]):
            meta["best"], meta["best_step"] = result, step
            checkpoints.save_best(step, {"params": state["params"], "masks": sp.get_masks(state["opt_state"])},
                                  {"step": step, "epoch": epoch + 1, **result})
        meta.update(epoch=next_epoch, batch=next_batch, step=step)
        meta["wall_time_s"] += time.perf_counter() - started
        started = time.perf_counter()
        checkpoints.save(step, state, meta)

    try:
        for epoch in range(int(meta["epoch"]), epochs_to_run):
            train_started, first = time.perf_counter(), step
            batches = task.train_batches(seed, epoch)
            if len(batches) != steps_per_epoch:
                raise ValueError(f"{task.name}: epoch {epoch} has {len(batches)} batches, steps_per_epoch says "
                                 f"{steps_per_epoch}")
            start = int(meta["batch"]) if epoch == meta["epoch"] else 0
            for i in range(start, len(batches)):
                if step >= total:
                    break
                state, loss = step_fn(state, batches[i], (step + 1) in updates)
                pending.append(loss)
                step += 1
                if step % config.log_every == 0 or step == total:
                    losses = np.asarray(jax.device_get(pending))
                    pending = []
                    rate = (step - first) / max(time.perf_counter() - train_started, 1e-9)
                    _append(metrics_path, {"event": "train", "step": step, "epoch": epoch + 1,
                                           "loss": float(losses.mean()), "steps_per_s": rate})
                    progress.update(step, {"epoch": f"{epoch + 1}/{epochs_to_run}", "loss": f"{losses.mean():.4f}",
                                           "it/s": f"{rate:.1f}"})
                epoch_done = i == len(batches) - 1 or step == total
                if epoch_done or (config.eval_every and step % int(config.eval_every) == 0):
                    jax.block_until_ready(state["step"])
                    meta["train_time_s"] += time.perf_counter() - train_started
                    meta["train_steps"] += step - first
                    evaluate(epoch, epoch + 1 if epoch_done else epoch, 0 if epoch_done else i + 1)
                    train_started, first = time.perf_counter(), step
    except BaseException:  # an error or Ctrl-C: finish the saves in flight, so a rerun resumes cleanly
        checkpoints.close()
        raise
    checkpoints.wait()
    progress.close()
    masks_now = partitioner.to_host(sp.get_masks(state["opt_state"]))
    current = sp.sparsity_report(masks_now)
    algo_state = partitioner.to_host(sp.get_sparse_state(state["opt_state"]).algorithm_state)
    target = float(getattr(algorithm, "sparsity", 0.0)) if target_sparsity is None else float(target_sparsity)
    scheduled = float(algo_state["scheduled_sparsity"]) if "scheduled_sparsity" in algo_state else target
    summary = {
        "task": task.name, "model": task.model_name, "pretrained": task.pretrained, "algorithm": algorithm.name,
        "label": algorithm.label, "seed": int(seed), "fold": task.fold,
        "target_sparsity": target, "sparsity_label": target, "scheduled_sparsity": scheduled,
        "actual_sparsity": current["global"], "metric": task.metric, "metrics": list(task.metrics),
        "reported": meta["best"][task.metric], "final": meta["final"], "best": meta["best"],
        "best_step": meta["best_step"], "num_eval": task.num_eval, "steps": step, "epochs": epochs_label,
        "wall_time_s": meta["wall_time_s"],
        "train_steps_per_s": meta["train_steps"] / meta["train_time_s"] if meta["train_time_s"] else math.nan,
        "num_params": int(sum(np.size(x) for x in jax.tree.leaves(state["params"]))),
        "num_prunable": sp.num_prunable(masks_now),
        "per_leaf_sparsity": current["per_leaf"],
        **(report or {}),
    }
    write_json(workdir / "summary.json", summary)
    checkpoints.close()
    return summary


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a reader never sees half a file); in a multi-process run, process 0 only."""
    if jax.process_index() != 0:
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default) + "\n")
    tmp.replace(path)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
