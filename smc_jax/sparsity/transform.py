"""``sparse_optimizer``: an optax transform whose state holds the masks and runs the algorithm's schedule.

With ``u`` the inner optimizer's update, one step forms ``p′ = (p + u)·m_old``, runs any scheduled mask
update on ``p′`` and this step's dense gradients, and returns ``p′·m_new − p``; ``optax.apply_updates``
then yields masked params and regrown weights start at exactly 0 (SMC-Bench's arithmetic order, SPEC
§2.2). With ``fairseq_order`` the mask update sees the pre-update ``p`` and gradients and the step returns
``(p + u)·m_new − p`` (SPEC §2.1).

The mask update sits in a ``lax.cond`` whose operands are the step's inputs (params, gradients, inner
state), never a new intermediate: on the steps without an event the whole update stays one elementwise
pass that XLA fuses with the inner optimizer. On event steps the arithmetic order recomputes the inner
update inside the branch to form ``p′`` (optax updates are pure), which costs one extra inner update per
event and nothing on the other steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from smc_jax.sparsity.algorithms import Algorithm, get_algorithm
from smc_jax.sparsity.masks import PyTree, _is_none, apply_masks, check_masks, map_masked


class SparseState(NamedTuple):
    """Optimizer state of :func:`sparse_optimizer`."""

    count: jax.Array  # optimizer steps taken so far (int32)
    masks: PyTree  # bool masks shaped like the params, None on non-prunable leaves
    inner_state: optax.OptState
    algorithm_state: dict[str, jax.Array]  # the algorithm's scalars (scheduled sparsity, drop fraction)


def _masked_step(params: PyTree, updates: PyTree, keep: PyTree) -> PyTree:
    """``where(keep, p + u, 0) - p`` on masked leaves, ``u`` elsewhere."""
    return jax.tree.map(
        lambda k, p, u: u if k is None else jnp.where(k, p + u, jnp.zeros((), p.dtype)) - p,
        keep, params, updates, is_leaf=_is_none,
    )


def _reset_regrown(inner_state: Any, params_def: Any, regrown: PyTree) -> Any:
    """Zero every params-shaped entry of ``inner_state`` (e.g. Adam's moments) where weights regrew."""

    def is_params_like(node):
        return jax.tree.structure(node) == params_def

    def reset(node):
        if not is_params_like(node):
            return node
        return jax.tree.map(
            lambda r, x: x if r is None else jnp.where(r, jnp.zeros((), x.dtype), x),
            regrown, node, is_leaf=_is_none,
        )

    return jax.tree.map(reset, inner_state, is_leaf=is_params_like)


def sparse_optimizer(
    inner: optax.GradientTransformation,
    algorithm: Algorithm | str,
    masks: PyTree,
    total_steps: int,
) -> optax.GradientTransformationExtraArgs:
    """Wrap ``inner`` so that its updates keep the params sparse under ``algorithm``.

    Args:
      inner: the dense optimizer, e.g. ``optax.adamw(1e-3)``; it sees dense gradients (SMC-Bench) unless
        the algorithm sets ``mask_gradients``.
      algorithm: an :class:`Algorithm` instance or an experiment name (see ``ALGORITHMS``).
      masks: the masks at step 0, e.g. ``algorithm.init_masks(params, prunable_masks(params), key=key)``.
      total_steps: the number of optimizer steps of the run (the horizon of GMP and RigL schedules).

    ``update(grads, state, params, **extra)`` needs ``params``; read the current masks with
    :func:`get_masks`.
    """
    if isinstance(algorithm, str):
        algorithm = get_algorithm(algorithm)
    if not isinstance(algorithm, Algorithm):
        raise ValueError(f"algorithm must be an Algorithm or an experiment name, got {type(algorithm).__name__}")
    if int(total_steps) < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    total_steps = int(total_steps)
    inner = optax.with_extra_args_support(inner)
    initial_masks = masks
    fairseq_order = bool(getattr(algorithm, "fairseq_order", False))
    mask_gradients = bool(getattr(algorithm, "mask_gradients", False))
    reset_moments = bool(getattr(algorithm, "reset_moments", False))
    sparse = algorithm.name != "dense"

    def init_fn(params):
        check_masks(params, initial_masks)
        return SparseState(
            count=jnp.zeros((), jnp.int32),
            masks=jax.tree.map(jnp.asarray, initial_masks),
            inner_state=inner.init(params),
            algorithm_state=algorithm.init_state(initial_masks, total_steps),
        )

    def update_fn(grads, state, params=None, **extra):
        if params is None:
            raise ValueError("sparse_optimizer needs params: call update(grads, state, params)")
        step = state.count + 1
        old = state.masks
        inner_grads = apply_masks(grads, old) if mask_gradients else grads
        updates, inner_state = inner.update(inner_grads, state.inner_state, params, **extra)
        if not sparse:
            return updates, SparseState(step, old, inner_state, state.algorithm_state)

        new = old
        if algorithm.dynamic:
            if fairseq_order:
                def mask_update():
                    return algorithm.mask_update(step, params, grads, old, total_steps)
            else:
                def mask_update():
                    # p' from the step's inputs: recomputing the (pure) inner update here keeps the cond's
                    # operands to buffers that exist anyway, so the no-event path stays one fused pass.
                    again, _ = inner.update(inner_grads, state.inner_state, params, **extra)
                    post = apply_masks(optax.apply_updates(params, again), old)
                    return algorithm.mask_update(step, post, grads, old, total_steps)

            new = lax.cond(algorithm.is_update_step(step, total_steps), mask_update, lambda: old)
        algorithm_state = algorithm.next_state(step, state.algorithm_state, total_steps)
        keep = new if fairseq_order else map_masked(lambda a, b: a & b, old, new)
        out = _masked_step(params, updates, keep)
        if reset_moments and algorithm.dynamic:
            regrown = map_masked(lambda a, b: b & ~a, old, new)
            inner_state = _reset_regrown(inner_state, jax.tree.structure(params), regrown)
        return out, SparseState(step, new, inner_state, algorithm_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_sparse_state(opt_state: Any) -> SparseState:
    """The :class:`SparseState` inside an optimizer state (also inside chains and wrappers)."""
    found = [
        node for node in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, SparseState))
        if isinstance(node, SparseState)
    ]
    if len(found) != 1:
        raise ValueError(f"expected one sparse_optimizer state in the optimizer state, found {len(found)}")
    return found[0]


def get_masks(opt_state: Any) -> PyTree:
    """The current masks held by a :func:`sparse_optimizer` state."""
    return get_sparse_state(opt_state).masks
