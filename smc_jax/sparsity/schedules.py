"""Schedules: GMP's cubic sparsity, RigL's cosine drop fraction, event steps, IMP rounds.

Steps count optimizer updates from 1: step t is the t-th update, as SMC-Bench's ``mask.step()`` counter
reads after it is incremented. The functions take Python numbers (and return Python floats) or jax
arrays (and return jax arrays, usable under ``jax.jit``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _xp(*values: Any):
    return jnp if any(isinstance(v, jax.Array) for v in values) else np


def gmp_sparsity(step: Any, final_sparsity: Any, begin_step: Any, end_step: Any) -> Any:
    """Zhu & Gupta's cubic schedule ``s_f · (1 − (1 − p)³)``, ``p = (step − begin) / (end − begin)``
    clipped to [0, 1] (p = 1 from ``end_step`` on, also when ``end_step <= begin_step``). Python numbers are
    computed in float64 (Python floats), jax arrays in float32."""
    xp = _xp(step, final_sparsity, begin_step, end_step)
    if xp is np:
        if step >= end_step:
            progress = 1.0
        else:
            progress = min(max((step - begin_step) / max(end_step - begin_step, 1e-9), 0.0), 1.0)
        return float(final_sparsity) * (1.0 - (1.0 - progress) ** 3)
    span = xp.maximum(xp.asarray(end_step, xp.float32) - begin_step, 1e-9)
    progress = xp.clip((xp.asarray(step, xp.float32) - begin_step) / span, 0.0, 1.0)
    progress = xp.where(xp.asarray(step) >= end_step, 1.0, progress)
    return final_sparsity * (1.0 - (1.0 - progress) ** 3)


def cosine_drop_fraction(step: Any, total_steps: Any, initial: float = 0.5, final: float = 0.005) -> Any:
    """RigL's drop fraction, cosine from ``initial`` at step 0 to ``final`` at ``total_steps`` (then flat):
    ``final + (initial − final) · (1 + cos(π · t / T)) / 2`` (SMC-Bench ``CosineDecay``, η_min 0.005). Python
    numbers are computed in float64, jax arrays in float32."""
    xp = _xp(step, total_steps)
    if xp is np:
        t = min(max(step / max(total_steps, 1.0), 0.0), 1.0)
        return final + (initial - final) * 0.5 * (1.0 + math.cos(math.pi * t))
    t = xp.clip(xp.asarray(step, xp.float32) / xp.maximum(xp.asarray(total_steps, xp.float32), 1.0), 0.0, 1.0)
    return final + (initial - final) * 0.5 * (1.0 + xp.cos(math.pi * t))


def gmp_window(total_steps: int, begin_fraction: float = 0.1, end_fraction: float = 0.8) -> tuple[int, int]:
    """``(t0, t1) = (int(T · begin_fraction), int(T · end_fraction))``, the GMP pruning window."""
    return int(total_steps * begin_fraction), int(total_steps * end_fraction)


def gmp_events(
    total_steps: int, update_frequency: int, begin_fraction: float = 0.1, end_fraction: float = 0.8
) -> list[int]:
    """Steps at which GMP prunes: multiples of ``update_frequency`` in ``[t0, t1)`` (SMC-Bench), plus ``t1``
    itself, so that the target is reached exactly (the original stops below it, SPEC Q-A11)."""
    t0, t1 = gmp_window(total_steps, begin_fraction, end_fraction)
    first = max(update_frequency * math.ceil(t0 / update_frequency), update_frequency)
    events = list(range(first, t1, update_frequency))
    if 1 <= t1 <= total_steps and t1 not in events:
        events.append(t1)
    return events


def periodic_events(total_steps: int, update_frequency: int, end_step: int | None = None) -> list[int]:
    """Steps ``f, 2f, …`` up to ``end_step`` (default ``total_steps``): RigL's update steps."""
    end = total_steps if end_step is None else min(end_step, total_steps)
    return list(range(update_frequency, end + 1, update_frequency))


def event_index(step: jax.Array, events: list[int] | np.ndarray) -> tuple[jax.Array, jax.Array]:
    """``(hit, index)``: whether ``step`` is one of ``events`` (sorted) and its position there."""
    table = jnp.asarray(np.asarray(events, np.int32))
    if table.size == 0:
        return jnp.zeros((), bool), jnp.zeros((), jnp.int32)
    index = jnp.clip(jnp.searchsorted(table, step), 0, table.size - 1)
    return table[index] == step, index


def imp_round_sparsity(round_index: int, prune_fraction: float = 0.2) -> float:
    """Sparsity after ``round_index`` IMP rounds that each prune ``prune_fraction`` of the survivors:
    ``1 − (1 − p)^k`` (k = 1..10 gives SMC-Bench's ten points)."""
    return 1.0 - (1.0 - prune_fraction) ** round_index


def imp_num_rounds(target_sparsity: float, prune_fraction: float = 0.2, tolerance: float = 0.005) -> int:
    """The number of IMP rounds to run: the smallest k with ``1 − (1 − p)^k >= target − tolerance``."""
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {target_sparsity}")
    if not 0.0 < prune_fraction < 1.0:
        raise ValueError(f"prune_fraction must be in (0, 1), got {prune_fraction}")
    k = 0
    while imp_round_sparsity(k, prune_fraction) < target_sparsity - tolerance:
        k += 1
    return k
