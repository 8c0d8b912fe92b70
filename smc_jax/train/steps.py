"""The jitted programs of a run: the train state and its layout on the mesh, the train step (optionally with
gradient accumulation), and the evaluation program over a task's evaluation sets.

The train step and the evaluation dispatch asynchronously; nothing here reads a device value on the host except
:func:`evaluator`, which gathers the evaluation outputs once every chunk has been dispatched.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smc_jax.tasks.base import Task
from smc_jax.train.partitioning import Partitioner

PyTree = Any


def init_state(params: PyTree, tx: optax.GradientTransformation, seed: int) -> dict[str, Any]:
    """The train state: step counter, a copy of ``params`` (the step donates its state, not the caller's
    arrays), the optimizer state and the dropout key data."""
    params = jax.tree.map(jnp.array, params)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 2))}


def place(partitioner: Partitioner, task: Task, params: PyTree, masks: PyTree | None = None
          ) -> tuple[PyTree, PyTree | None, PyTree]:
    """``(params, masks, param shardings)`` laid out on ``partitioner``'s mesh: params by the task's logical
    axes (``task.param_axes()``; replicated when the task has none), mask trees like their params."""
    params_sh = partitioner.param_shardings(params, task.param_axes())
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


def train_step(task: Task, tx: optax.GradientTransformation, split: bool | None = None, accum_steps: int = 1,
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


def evaluator(task: Task) -> Callable[..., dict[str, Any]]:
    """``(params, partitioner=None) -> task.compute_metrics(outputs)``: :meth:`Task.eval_step` jitted (one program
    per chunk shape) and run on every chunk of every evaluation set, the batch split by rows on the mesh, every call
    dispatched before any output is read; outputs gathered to the host, trimmed to the real rows and
    concatenated per set. Without a partitioner, every local device on ``data``."""
    step = jax.jit(task.eval_step)

    def evaluate(params: PyTree, partitioner: Partitioner | None = None) -> dict[str, Any]:
        partitioner = partitioner or Partitioner()
        pending = {name: [(chunk.count, step(params, partitioner.put_batch(chunk.batch))) for chunk in chunks]
                   for name, chunks in task.eval_sets().items()}
        outputs = {}
        for name, parts in pending.items():
            host = [jax.tree.map(lambda x, n=count: np.asarray(x)[:n], partitioner.to_host(out))
                    for count, out in parts]
            outputs[name] = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *host)
        return task.compute_metrics(outputs)

    return evaluate
