"""Exact top-k selection by counting, with a choice of tie-breaking; global or per leaf.

The k-th largest score is found by counting, never by sorting: scores map to order-preserving ``uint32``
keys, a 16-bit radix select builds two histograms (per leaf, summed over leaves), and a tie pass decides
which of the positions tied at the threshold are kept. Each step is an elementwise map or a reduction, so
under ``jax.jit`` a sharded tree stays sharded (the per-device histograms are summed; no device gathers a
parameter).

Tie-breaking (:data:`TIE_BREAKS`):

- ``'random'``: the tied positions kept are a seeded pseudo-random subset, in proportion to each leaf's
  tied count. The order is a hash of (seed, leaf salt, row-major index) computed per element, so it needs
  no gather and is the same on any mesh. Within a leaf the hash is a bijection of the index (no
  collisions); across leaves equal hashes fall back to position order.
- ``'position'``: the earliest tied positions (leaf order, then row-major) are kept.
- ``'faithful'``: a threshold rule as SMC-Bench's ``score > τ`` with τ the (k+1)-th largest: when the
  tie group at the threshold does not fit whole, all of it is dropped, so fewer than k can be kept.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

TIE_BREAKS = ("random", "position", "faithful")

_DIGIT_BITS = 16
_NUM_BINS = 1 << _DIGIT_BITS


def check_tie_break(tie_break: str) -> str:
    """``tie_break`` itself, or a ``ValueError`` naming the valid choices."""
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"unknown tie_break {tie_break!r}; choose one of: {', '.join(TIE_BREAKS)}")
    return tie_break


# ----------------------------------------------------------------------------------------- keys


def sortable_key(x: jax.Array) -> jax.Array:
    """Map floats to ``uint32`` keys with the same order (computed in float32; -0.0 ties with 0.0, NaN sorts
    above +inf)."""
    bits = lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)
    bits = jnp.where(bits == jnp.uint32(0x80000000), jnp.uint32(0), bits)  # -0.0 -> +0.0 (no float compare:
    # XLA's CPU backend flushes denormals to zero in float ops, which would tie them with 0)
    negative = (bits >> 31).astype(bool)
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def flat_index(shape: tuple[int, ...]) -> jax.Array:
    """The row-major flat index of every element (``uint32``), built from iotas without a reshape."""
    flat = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        flat = flat + lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride)
        stride *= shape[dim]
    return flat


def _first_positions_key(shape: tuple[int, ...]) -> jax.Array:
    """``size - 1 - flat_index``: larger for earlier row-major positions."""
    size = 1
    for dim in shape:
        size *= dim
    return jnp.uint32(max(size - 1, 0)) - flat_index(shape)


def mix32(x: Any) -> jax.Array:
    """A bijective ``uint32`` mixing function (the "lowbias32" integer hash)."""
    x = jnp.asarray(x, jnp.uint32)
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def derive_seed(seed: Any, *salts: Any) -> jax.Array:
    """A ``uint32`` seed from ``seed`` (a Python int or a traced integer) and further salts (e.g. a step)."""
    out = mix32(jnp.asarray(seed).astype(jnp.uint32) if isinstance(seed, jax.Array) else jnp.uint32(seed % 2**32))
    for salt in salts:
        salt = jnp.asarray(salt).astype(jnp.uint32) if isinstance(salt, jax.Array) else jnp.uint32(salt % 2**32)
        out = mix32(out ^ mix32(salt + jnp.uint32(0x9E3779B9)))
    return out


def leaf_salt(path: str) -> int:
    """A leaf's hash salt: the CRC-32 of its path (stable under adding or reordering other leaves)."""
    return zlib.crc32(path.encode())


def tie_order(shape: tuple[int, ...], salt: Any, seed: Any) -> jax.Array:
    """The pseudo-random ``uint32`` order of a leaf's elements: a bijection of the flat index."""
    return mix32(mix32(flat_index(shape) ^ jnp.asarray(salt, jnp.uint32)) ^ jnp.asarray(seed, jnp.uint32))


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


TieKeys = Callable[[int], jax.Array]


def select_top(
    keys: Sequence[jax.Array], valid: Sequence[jax.Array], k: Any, *, per_leaf: bool = False,
    tie_break: str = "position", tie_keys: TieKeys | None = None, unique: bool = False,
) -> list[jax.Array]:
    """Bool masks keeping the valid positions with the largest keys: ``min(k, #valid)`` of them over all
    leaves, or with ``per_leaf`` ``min(k[i], #valid in leaf i)`` in each leaf i (fewer under ``'faithful'``).

    ``tie_keys(i)`` (needed by ``'random'``) returns leaf i's ``uint32`` order, distinct within the leaf;
    it is evaluated only where ties straddle the threshold. ``unique=True`` promises distinct keys among the
    valid positions (per leaf with ``per_leaf``) and skips the tie pass. Per-leaf work is one histogram per
    pass and the final elementwise masks; the bookkeeping runs on ``[leaves, bins]`` arrays, which keeps
    compile time linear in the number of leaves.
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
    check_tie_break(tie_break)
    partial = (take > 0) & (take < ties)
    if tie_break == "faithful":  # a straddling tie group is dropped whole
        fits = (take == ties) if per_leaf else jnp.broadcast_to(need == ties.sum(dtype=jnp.uint32), (n,))
        return [s | (t & fits[i]) for i, (s, t) in enumerate(zip(strict, at_tau))]
    full = [a & (take[i] == ties[i]) for i, a in enumerate(at_tau)]  # leaves that keep all their ties
    if tie_break == "random" and tie_keys is None:
        raise ValueError("tie_break='random' needs tie_keys")

    def tie_key(i: int) -> jax.Array:
        return tie_keys(i) if tie_break == "random" else _first_positions_key(at_tau[i].shape)

    if per_leaf:
        # One cond per leaf, so the tie pass runs only over the leaves whose ties straddle their threshold.
        def leaf_ties(i: int) -> jax.Array:
            def some_ties():  # the `take` ties with the largest order keys (a bijection within the leaf)
                return select_top([tie_key(i)], [at_tau[i]], take[i][None], per_leaf=True, unique=True)[0]

            return lax.cond(partial[i], some_ties, lambda: full[i])

        return [s | leaf_ties(i) for i, s in enumerate(strict)]

    def some_ties():
        if tie_break == "random":  # `need` ties over all leaves by the hash order; equal hashes go by position
            return select_top([tie_key(i) for i in range(n)], at_tau, need, tie_break="position")
        # the first `take` ties by row-major position in the boundary leaf
        chosen = select_top([tie_key(i) for i in range(n)], [t & partial[i] for i, t in enumerate(at_tau)],
                            jnp.where(partial, take, 0), per_leaf=True, unique=True)
        return [f | c for f, c in zip(full, chosen)]

    kept_ties = lax.cond(partial.any(), some_ties, lambda: full)
    return [s | t for s, t in zip(strict, kept_ties)]
