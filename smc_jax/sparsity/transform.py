"""``sparse_optimizer``: an optax transform whose state holds the masks and runs the algorithm's schedule.

With ``u`` the inner optimizer's update, one step forms ``p′ = (p + u)·m_old``, runs any scheduled mask
update on ``p′`` and this step's dense gradients, and returns ``p′·m_new − p``; ``optax.apply_updates``
then yields masked params and regrown weights start at exactly 0 (SMC-Bench's arithmetic order, SPEC
§2.2). With ``fairseq_order`` the mask update sees the pre-update ``p`` and gradients and the step returns
``(p + u)·m_new − p`` (SPEC §2.1).

Whether a step updates the masks is decided on device by a ``lax.cond`` unless the caller says so:
``update(..., is_update_step=False)`` compiles the step without the mask update (one fused elementwise
pass over the inner update, as cheap as the static algorithms), ``is_update_step=True`` without the cond.
A training loop knows its step on the host, so it can compile both and pick with
``step in algorithm.update_steps(total_steps)`` at no device cost.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from smc_jax.sparsity.algorithms import Algorithm, Dense, get_algorithm
from smc_jax.sparsity.masks import PyTree, _is_none, apply_masks, check_masks, map_masked


class SparseState(NamedTuple):
    """Optimizer state of :func:`sparse_optimizer`."""

    count: jax.Array  # optimizer steps taken so far (int32)
    masks: PyTree  # bool masks shaped like the params, None on non-prunable leaves
    inner_state: optax.OptState
    algorithm_state: dict[str, jax.Array]  # the algorithm's scalars (scheduled sparsity, drop fraction)


def _masked_step(params: PyTree, updates: PyTree, keep: PyTree, target: PyTree | None = None) -> PyTree:
    """``where(keep, t, 0) - p`` with ``t = p + u`` (or ``target``) on masked leaves, ``u`` elsewhere."""
    target = jax.tree.map(lambda p, u: (p + u).astype(p.dtype), params, updates) if target is None else target
    return jax.tree.map(
        lambda k, p, u, t: u if k is None else jnp.where(k, t, jnp.zeros((), p.dtype)) - p,
        keep, params, updates, target, is_leaf=_is_none,
    )


def _reset_regrown(inner_state: Any, params_def: Any, regrown: PyTree) -> Any:
    """Zero every params-shaped entry of ``inner_state`` (e.g. Adam's moments) where weights regrew."""

    def is_params_like(node):
        return jax.tree.structure(node) == params_def

    not_regrown = map_masked(lambda r: ~r, regrown)
    return jax.tree.map(lambda node: apply_masks(node, not_regrown) if is_params_like(node) else node,
                        inner_state, is_leaf=is_params_like)


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

    ``update(grads, state, params, *, is_update_step=None, **extra)`` needs ``params``. ``is_update_step``
    is a Python bool hint from a loop that counts steps on the host (``step in
    algorithm.update_steps(total_steps)``, steps counted from 1): ``False`` skips the mask update at trace
    time, ``True`` runs it unconditionally, ``None`` decides on device with ``lax.cond``. Read the current
    masks with :func:`get_masks`.
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
    sparse = not isinstance(algorithm, Dense)

    def init_fn(params):
        check_masks(params, initial_masks)
        return SparseState(
            count=jnp.zeros((), jnp.int32),
            masks=jax.tree.map(jnp.array, initial_masks),  # a copy: the state may be donated
            inner_state=inner.init(params),
            algorithm_state=algorithm.init_state(initial_masks, total_steps),
        )

    def update_fn(grads, state, params=None, *, is_update_step: bool | None = None, **extra):
        if params is None:
            raise ValueError("sparse_optimizer needs params: call update(grads, state, params)")
        if is_update_step is not None and not isinstance(is_update_step, (bool, np.bool_)):
            raise ValueError(
                "is_update_step must be a Python bool or None (a hint computed on the host), got "
                f"{type(is_update_step).__name__}; compile one step per value instead of passing it traced"
            )
        step = state.count + 1
        old = state.masks
        inner_grads = apply_masks(grads, old) if mask_gradients else grads
        updates, inner_state = inner.update(inner_grads, state.inner_state, params, **extra)
        if not sparse:
            return updates, SparseState(step, old, inner_state, state.algorithm_state)

        dynamic = algorithm.dynamic and is_update_step is not False
        if not dynamic:
            out, new = _masked_step(params, updates, old), old
        else:
            # Arithmetic order: the mask update sees p' = (p + u)·m_old; fairseq order: p itself.
            seen = params if fairseq_order else apply_masks(optax.apply_updates(params, updates), old)
            if is_update_step:
                new = algorithm.mask_update(step, seen, grads, old, total_steps)
            else:
                new = lax.cond(algorithm.is_update_step(step, total_steps),
                               lambda: algorithm.mask_update(step, seen, grads, old, total_steps),
                               lambda: old)
            # (Forming the arithmetic order's result from p' itself keeps XLA from copying the moments.)
            out = _masked_step(params, updates, new, None if fairseq_order else seen)
        algorithm_state = algorithm.next_state(step, state.algorithm_state, total_steps)
        if reset_moments and dynamic:
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
