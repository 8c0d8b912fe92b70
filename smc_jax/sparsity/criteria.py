"""Scores and exact top-k selection: magnitude, random, SNIP |w·g|, gradient growth; global and per-layer.

Every selection keeps an exact number of weights. The k-th largest score is found by counting, never by
sorting: scores map to order-preserving ``uint32`` keys, a 16-bit radix select builds two histograms
(per leaf, summed over leaves), and a tie pass keeps the first tied positions in (leaf order, row-major)
order. Each step is an elementwise map or a reduction, so under ``jax.jit`` a sharded tree stays sharded
(the per-device histograms are summed; no device gathers a parameter).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from smc_jax.sparsity.masks import PyTree, _is_none, check_masks, map_masked, num_prunable, path_str

_DIGIT_BITS = 16
_NUM_BINS = 1 << _DIGIT_BITS
_MAX_COUNT = 2**32 - 1


# ----------------------------------------------------------------------------------------- keys


def sortable_key(x: jax.Array) -> jax.Array:
    """Map floats to ``uint32`` keys with the same order (computed in float32; -0.0 ties with 0.0, NaN sorts
    above +inf)."""
    bits = lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
    bits = jnp.where(bits == jnp.uint32(0x80000000), jnp.uint32(0), bits)  # -0.0 -> +0.0 (no float compare:
    # XLA's CPU backend flushes denormals to zero in float ops, which would tie them with 0)
    negative = (bits >> 31).astype(bool)
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _first_positions_key(shape: tuple[int, ...]) -> jax.Array:
    """``size - 1 - flat_index``: larger for earlier row-major positions, built without a reshape."""
    flat = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        flat = flat + lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride)
        stride *= shape[dim]
    return jnp.uint32(max(stride - 1, 0)) - flat


# ------------------------------------------------------------------------------ exact selection


def _histograms(digits: list[jax.Array]) -> jax.Array:
    """``[leaves, _NUM_BINS]`` uint32 counts of each leaf's int32 digits (the digit _NUM_BINS is not counted)."""
    rows = [
        jnp.zeros(_NUM_BINS + 1, jnp.int32).at[d].add(1, mode="promise_in_bounds")[:_NUM_BINS] for d in digits
    ]
    return jnp.stack(rows).astype(jnp.uint32)


def _pick_bins(hists: jax.Array, k: jax.Array, per_leaf: bool) -> tuple[jax.Array, jax.Array]:
    """From per-leaf histograms ``[L, B]``: per leaf, the largest bin b with at least ``k`` counts at or above
    it (0 when there is none), over each leaf (``per_leaf``, k of shape [L]) or over all leaves summed
    (k of shape [1], b broadcast); and the per-leaf counts strictly above b."""
    counts = hists if per_leaf else hists.sum(axis=0, keepdims=True, dtype=jnp.uint32)
    at_or_above = jnp.cumsum(counts[:, ::-1], axis=1, dtype=jnp.uint32)[:, ::-1]
    b = jnp.maximum(jnp.sum(at_or_above >= k[:, None], axis=1, dtype=jnp.int32) - 1, 0)
    b = jnp.broadcast_to(b, hists.shape[:1])
    above = jnp.sum(jnp.where(jnp.arange(_NUM_BINS) > b[:, None], hists, 0), axis=1, dtype=jnp.uint32)
    return b, above


def _select_top(
    keys: list[jax.Array], valid: list[jax.Array], k: jax.Array, per_leaf: bool = False, unique: bool = False
) -> list[jax.Array]:
    """Bool masks keeping the valid positions with the largest keys: exactly ``min(k, #valid)`` of them over
    all leaves, or with ``per_leaf`` exactly ``min(k[i], #valid in leaf i)`` in each leaf i.

    Ties at the threshold go to the earliest positions (leaf order, then row-major). ``unique=True``
    promises distinct keys among the valid positions (per leaf with ``per_leaf``) and skips the tie pass.
    Per-leaf work is one histogram per pass and the final elementwise masks; the bookkeeping runs on
    ``[leaves, bins]`` arrays, which keeps compile time linear in the number of leaves.
    """
    n = len(keys)
    k = jnp.broadcast_to(jnp.asarray(k, jnp.uint32), (n,) if per_leaf else (1,))
    hi = [jnp.where(v, (key >> _DIGIT_BITS).astype(jnp.int32), _NUM_BINS) for key, v in zip(keys, valid)]
    b_hi, above_hi = _pick_bins(_histograms(hi), k, per_leaf)
    lo = [
        jnp.where(v & ((key >> _DIGIT_BITS).astype(jnp.int32) == b_hi[i]),
                  (key & jnp.uint32(_NUM_BINS - 1)).astype(jnp.int32), _NUM_BINS)
        for i, (key, v) in enumerate(zip(keys, valid))
    ]
    hist_lo = _histograms(lo)
    b_lo, above_lo = _pick_bins(hist_lo, k - (above_hi if per_leaf else above_hi.sum(keepdims=True)), per_leaf)
    tau = (b_hi.astype(jnp.uint32) << _DIGIT_BITS) | b_lo.astype(jnp.uint32)  # [L]
    above = above_hi + above_lo  # [L]: count(key > tau) per leaf
    ties = hist_lo[jnp.arange(n), b_lo]  # [L]: count(key == tau) per leaf
    # count(key > tau) < k unless k > #valid, so nothing underflows; keep `take` ties per leaf.
    if per_leaf:
        take = jnp.minimum(k - above, ties)
    else:
        need = jnp.minimum(k[0] - above.sum(dtype=jnp.uint32), ties.sum(dtype=jnp.uint32))
        before = jnp.cumsum(ties, dtype=jnp.uint32) - ties
        take = jnp.clip(need - jnp.minimum(before, need), 0, ties)  # the first `need` ties in leaf order

    strict = [v & (key > tau[i]) for i, (key, v) in enumerate(zip(keys, valid))]
    at_tau = [v & (key == tau[i]) for i, (key, v) in enumerate(zip(keys, valid))]
    if unique:  # at most one valid key per leaf (per tree without per_leaf) equals tau
        return [s | (t & (take[i] > 0)) for i, (s, t) in enumerate(zip(strict, at_tau))]
    partial = (take > 0) & (take < ties)

    full = [a & (take[i] == ties[i]) for i, a in enumerate(at_tau)]  # leaves that keep all their ties

    def with_earliest_ties():
        # Also keep the first `take` ties by row-major position in the leaves that keep part of their ties
        # (only the boundary leaf for a global selection). One cond for the whole tree.
        candidates = [t & partial[i] for i, t in enumerate(at_tau)]
        positions = [_first_positions_key(t.shape) for t in at_tau]
        chosen = _select_top(positions, candidates, jnp.where(partial, take, 0), per_leaf=True, unique=True)
        return [f | c for f, c in zip(full, chosen)]

    kept_ties = lax.cond(partial.any(), with_earliest_ties, lambda: full)
    return [s | t for s, t in zip(strict, kept_ties)]


def _check_total(n: int) -> int:
    if n > _MAX_COUNT:
        raise ValueError(f"{n} prunable weights exceed the 2**32-1 that the uint32 counters hold")
    return n


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_sparsity(sparsity: Any) -> None:
    if _is_concrete(sparsity):
        value = float(np.asarray(sparsity))
        if not 0.0 <= value < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {value}")


def scaled_count(fraction: Any, n: Any, ceil: bool = False) -> jax.Array:
    """``floor`` (or ``ceil``) of ``fraction · n`` computed exactly for a float32 fraction in [0, 1].

    ``n`` is a (traced) count below 2**32. The product is formed in 64-bit integer arithmetic emulated
    with uint32 limbs, so the result is exact under ``jax.jit`` without float64 (float32 products of
    counts above 2**24 would be off by one).
    """
    n = jnp.asarray(n, jnp.uint32)
    bits = lax.bitcast_convert_type(jnp.asarray(fraction, jnp.float32), jnp.uint32)
    # Clip to [0, 1] on the bits (float ops would flush denormals to 0): negative -> 0, > 1 -> 1.
    bits = jnp.where((bits >> 31) == 1, jnp.uint32(0), jnp.minimum(bits, jnp.uint32(0x3F800000)))
    exponent = (bits >> 23) & jnp.uint32(0xFF)
    mantissa = (bits & jnp.uint32(0x7FFFFF)) | jnp.where(exponent > 0, jnp.uint32(0x800000), jnp.uint32(0))
    shift = jnp.uint32(150) - jnp.maximum(exponent, jnp.uint32(1))  # f = mantissa · 2**-shift, shift >= 23

    m1, m0 = mantissa >> 16, mantissa & jnp.uint32(0xFFFF)
    n1, n0 = n >> 16, n & jnp.uint32(0xFFFF)
    high, low = m1 * n1, m0 * n0
    for mid in (m1 * n0, m0 * n1):  # add mid · 2**16 to the (high, low) pair
        new_low = low + (mid << 16)
        high = high + (mid >> 16) + (new_low < low).astype(jnp.uint32)
        low = new_low

    def shl(x, s):  # x << s with s in [0, 32]; 0 for s == 32
        return jnp.where(s >= 32, jnp.uint32(0), x << jnp.minimum(s, 31))

    def low_bits(x, s):  # x & (2**s - 1) with s in [0, 32]
        return jnp.where(s >= 32, x, x & (shl(jnp.uint32(1), s) - jnp.uint32(1)))

    small = shift < 32  # 23 <= shift < 32
    s_small = jnp.minimum(shift, 31)
    q_small = shl(high, 32 - s_small) | (low >> s_small)
    r_small = low_bits(low, s_small) != 0
    mid_range = (shift >= 32) & (shift < 64)
    s_mid = jnp.clip(shift, 32, 63) - 32
    q_mid = high >> s_mid
    r_mid = (low != 0) | (low_bits(high, s_mid) != 0)
    quotient = jnp.where(small, q_small, jnp.where(mid_range, q_mid, jnp.uint32(0)))
    remainder = jnp.where(small, r_small, jnp.where(mid_range, r_mid, (high | low) != 0))
    if ceil:
        quotient = quotient + remainder.astype(jnp.uint32)
    return quotient


def _keep_count(sparsity: Any, n: int) -> Any:
    """``int(n · (1 - sparsity))``: exact in float64 for a Python sparsity, exact on the float32 value
    (``n - ceil(n · s)``) for a traced one."""
    _check_total(n)
    if _is_concrete(sparsity):
        return int(n * (1.0 - float(np.asarray(sparsity))))
    return jnp.uint32(n) - scaled_count(sparsity, n, ceil=True)


# --------------------------------------------------------------------------------------- scores


def magnitude_scores(params: PyTree, masks: PyTree) -> PyTree:
    """``|w|`` (float32) on prunable leaves, ``None`` elsewhere."""
    return map_masked(lambda m, p: jnp.abs(p.astype(jnp.float32)), masks, params)


def snip_scores(params: PyTree, grads: PyTree, masks: PyTree) -> PyTree:
    """SNIP connection sensitivity ``|w · g|`` (float32) on prunable leaves (Lee et al. 2019)."""
    return map_masked(
        lambda m, p, g: jnp.abs(p.astype(jnp.float32) * g.astype(jnp.float32)), masks, params, grads
    )


# ---------------------------------------------------------------------------------- selections


@jax.jit
def _global_select(keys: PyTree, masks: PyTree, k: jax.Array) -> PyTree:
    return _per_leaf(lambda m, key: _select_top(key, m, k), masks, keys)


def global_topk_masks(scores: PyTree, masks: PyTree, k: Any) -> PyTree:
    """Masks keeping exactly ``min(k, #active)`` active positions with the largest scores, over all leaves.

    Kept positions are a subset of ``masks``; ties go to the earliest positions (leaf order, row-major).
    """
    check_masks(scores, masks, what="scores")
    n = _check_total(num_prunable(masks))
    if _is_concrete(k):
        if int(k) < 0:
            raise ValueError(f"k must be >= 0, got {int(k)}")
        k = min(int(k), n)
    keys = map_masked(lambda m, s: sortable_key(s), masks, scores)
    return _global_select(keys, masks, jnp.asarray(k, jnp.uint32))


def global_magnitude_masks(params: PyTree, masks: PyTree, sparsity: Any) -> PyTree:
    """One global magnitude threshold (SMC-Bench ``one_shot_gm``, OMP/GMP/IMP).

    Keeps exactly ``int(N·(1−sparsity))`` of the largest ``|w|``, N = all prunable weights (active or
    not); kept weights are a subset of ``masks`` (so fewer are kept when fewer are active); ties are broken
    by position. The original's strict ``|w| > τ`` with τ the k-th largest keeps k−1 (one too few); this is
    the documented fix.
    """
    check_masks(params, masks)
    _check_sparsity(sparsity)
    k = _keep_count(sparsity, num_prunable(masks))
    return global_topk_masks(magnitude_scores(params, masks), masks, k)


def snip_masks(params: PyTree, grads: PyTree, masks: PyTree, sparsity: Any) -> PyTree:
    """SNIP: the global rule of :func:`global_magnitude_masks` on ``|w · g|``.

    Exactly ``int(N·(1−sparsity))`` weights are kept even when many scores tie at zero; the original's
    strict threshold drops every tied zero and overshoots the target (SPEC Q-A4: 0.2 became 0.287).
    """
    check_masks(params, masks)
    check_masks(grads, masks, what="grads")
    _check_sparsity(sparsity)
    k = _keep_count(sparsity, num_prunable(masks))
    return global_topk_masks(snip_scores(params, grads, masks), masks, k)


def _leaf_keys(key: jax.Array, masks: PyTree) -> PyTree:
    """One independent PRNG key per prunable leaf (folded in by leaf index)."""
    leaves, treedef = jax.tree.flatten(masks, is_leaf=_is_none)
    keys = [None if m is None else jax.random.fold_in(key, i) for i, m in enumerate(leaves)]
    return jax.tree.unflatten(treedef, keys)


def random_masks(key: jax.Array, masks: PyTree, sparsity: Any) -> PyTree:
    """Per-element Bernoulli(1 − sparsity) on prunable leaves, ANDed with ``masks`` (SMC-Bench ``random``).

    Uniform across layers in expectation only; the per-layer count is random. With jax's partitionable
    threefry (the default) the draw does not depend on how the leaves are sharded.
    """
    _check_sparsity(sparsity)
    density = 1.0 - jnp.asarray(sparsity, jnp.float32)
    return map_masked(
        lambda m, k: m & jax.random.bernoulli(k, density, m.shape), masks, _leaf_keys(key, masks)
    )


def _per_leaf(fn, masks: PyTree, *trees: PyTree) -> PyTree:
    """Apply ``fn(mask_leaves, *tree_leaves) -> new mask leaves`` to the prunable leaves of a tree."""
    leaves, treedef = jax.tree.flatten(masks, is_leaf=_is_none)
    index = [i for i, m in enumerate(leaves) if m is not None]
    others = [jax.tree.leaves(t, is_leaf=_is_none) for t in trees]
    for i, new in zip(index, fn([leaves[i] for i in index], *[[o[i] for i in index] for o in others])):
        leaves[i] = new
    return jax.tree.unflatten(treedef, leaves)


@jax.jit
def _layerwise_select(keys: PyTree, masks: PyTree, ks: PyTree) -> PyTree:
    return _per_leaf(lambda m, key, k: _select_top(key, m, jnp.stack(k), per_leaf=True), masks, keys, ks)


def layerwise_topk_masks(scores: PyTree, masks: PyTree, ks: PyTree) -> PyTree:
    """Per leaf, keep exactly ``min(k_leaf, #active)`` active positions with the largest scores.

    ``ks`` is a tree like ``masks`` holding a count per prunable leaf.
    """
    check_masks(scores, masks, what="scores")
    _check_total(num_prunable(masks))

    def count(mask, k):
        if not _is_concrete(k):
            return jnp.asarray(k, jnp.uint32)
        if int(k) < 0:
            raise ValueError(f"k must be >= 0, got {int(k)}")
        return jnp.uint32(min(int(k), mask.size))

    ks = map_masked(count, masks, ks)
    return _layerwise_select(map_masked(lambda m, s: sortable_key(s), masks, scores), masks, ks)


def random_layerwise_masks(key: jax.Array, masks: PyTree, densities: dict[str, float]) -> PyTree:
    """Per leaf, keep exactly ``int(n_leaf · density_leaf)`` uniformly random positions among the active.

    ``densities`` maps leaf paths (as in :func:`smc_jax.sparsity.masks.mask_shapes`) to densities, e.g.
    from :func:`smc_jax.sparsity.distributions.erk_densities`.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(masks, is_leaf=_is_none)
    ks = []
    for path, m in leaves:
        if m is None:
            ks.append(None)
            continue
        name = path_str(path)
        if name not in densities:
            raise ValueError(f"no density given for prunable leaf {name!r}")
        density = float(densities[name])
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density for {name!r} must be in [0, 1], got {density}")
        ks.append(int(math.prod(m.shape) * density))
    ks = jax.tree.unflatten(treedef, ks)
    random_keys = map_masked(lambda m, k: jax.random.bits(k, m.shape, jnp.uint32), masks, _leaf_keys(key, masks))
    return _layerwise_select(random_keys, masks, ks)


@jax.jit
def _rigl(params: PyTree, grads: PyTree, masks: PyTree, drop_fraction: jax.Array) -> PyTree:
    def update(masks, params, grads):
        n_on = jnp.stack([jnp.sum(m, dtype=jnp.uint32) for m in masks])
        n_drop = scaled_count(drop_fraction, n_on, ceil=True)
        smallest_first = [~sortable_key(jnp.abs(p.astype(jnp.float32))) for p in params]
        dropped = _select_top(smallest_first, masks, n_drop, per_leaf=True)
        kept = [m & ~d for m, d in zip(masks, dropped)]
        growth = [sortable_key(jnp.abs(g.astype(jnp.float32))) for g in grads]
        grown = _select_top(growth, [~m for m in kept], n_drop, per_leaf=True)
        return [m | g for m, g in zip(kept, grown)]

    return _per_leaf(update, masks, params, grads)


def rigl_update(params: PyTree, grads: PyTree, masks: PyTree, drop_fraction: Any) -> PyTree:
    """One RigL drop-and-grow step (Evci et al. 2020), per leaf.

    Drop the ``ceil(drop_fraction · n_on)`` active weights with the smallest ``|w|`` (ties: earliest
    positions first), then grow as many positions with the largest ``|g|`` among the now-inactive ones
    (just-dropped positions are eligible; ties, e.g. zero gradients, go to the earliest positions). Every
    leaf keeps its number of active weights: the original's growth could regrow fewer than it dropped
    (SPEC Q-A13). ``drop_fraction`` (in [0, 1]) may be traced; the count is exact for its float32 value.
    """
    check_masks(params, masks)
    check_masks(grads, masks, what="grads")
    if _is_concrete(drop_fraction):
        value = float(np.asarray(drop_fraction))
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1], got {value}")
    return _rigl(params, grads, masks, jnp.asarray(drop_fraction, jnp.float32))
