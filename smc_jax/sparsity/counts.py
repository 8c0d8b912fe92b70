"""Exact weight counts on device without float64: ``floor``/``ceil`` of a fraction times a count.

Counts of up to 2**32 − 1 weights times a fraction are formed in integer arithmetic on 16-bit limbs held in
``uint32``, so they are exact under ``jax.jit`` on any backend (a float32 product of counts above 2**24 is
off by one; TPUs have no float64).

- :func:`scaled_count`: ``floor``/``ceil`` of the exact rational product of a float32 fraction and a count.
- :func:`ceil_product`: ``math.ceil(p * n)`` as Python computes it, with the product rounded to float64 first
  (SMC-Bench's RigL drop count ``math.ceil(death_rate * n_on)``). ``p`` arrives as a float64 carried in two
  ``uint32`` words (:func:`float64_bits` on the host), or as a float32 (widened exactly).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class Float64Bits(NamedTuple):
    """A float64 carried on device as the high and low ``uint32`` words of its IEEE-754 bit pattern."""

    hi: jax.Array
    lo: jax.Array


def float64_bits(values: Any) -> Float64Bits:
    """Host side: the bit words of ``values`` (a Python float or a float64 array) as ``uint32`` arrays."""
    bits = np.asarray(values, np.float64).view(np.uint64)
    return Float64Bits(jnp.asarray((bits >> np.uint64(32)).astype(np.uint32)),
                       jnp.asarray((bits & np.uint64(0xFFFFFFFF)).astype(np.uint32)))


def _float32_bits(fraction: Any) -> jax.Array:
    """The bits of a float32 fraction clipped to [0, 1] on the bits (float ops flush denormals to 0)."""
    bits = lax.bitcast_convert_type(jnp.asarray(fraction, jnp.float32), jnp.uint32)
    return jnp.where((bits >> 31) == 1, jnp.uint32(0), jnp.minimum(bits, jnp.uint32(0x3F800000)))


def scaled_count(fraction: Any, n: Any, ceil: bool = False) -> jax.Array:
    """``floor`` (or ``ceil``) of ``fraction · n`` computed exactly for a float32 fraction in [0, 1].

    ``n`` is a (traced) count below 2**32. The product is formed in 64-bit integer arithmetic emulated
    with uint32 limbs, so the result is exact under ``jax.jit`` without float64.
    """
    n = jnp.asarray(n, jnp.uint32)
    bits = _float32_bits(fraction)
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


# ------------------------------------------------------------------------ float64-rounded products

_LIMB = 16
_PRODUCT_LIMBS = 6  # M < 2**53 times n < 2**32 is below 2**85 < 2**96


def _mantissa_and_shift(fraction: Float64Bits | Any) -> tuple[list[jax.Array], jax.Array]:
    """``(limbs of M, s)`` with ``fraction = M · 2**-s`` exactly, M < 2**53 in four 16-bit limbs."""
    if isinstance(fraction, Float64Bits):
        hi, lo = jnp.asarray(fraction.hi, jnp.uint32), jnp.asarray(fraction.lo, jnp.uint32)
        exponent = (hi >> 20) & jnp.uint32(0x7FF)
        top = (hi & jnp.uint32(0xFFFFF)) | jnp.where(exponent > 0, jnp.uint32(1 << 20), jnp.uint32(0))
        shift = jnp.int32(1075) - jnp.maximum(exponent, jnp.uint32(1)).astype(jnp.int32)
        limbs = [lo & 0xFFFF, lo >> 16, top & 0xFFFF, top >> 16]
    else:
        bits = _float32_bits(fraction)
        exponent = (bits >> 23) & jnp.uint32(0xFF)
        mantissa = (bits & jnp.uint32(0x7FFFFF)) | jnp.where(exponent > 0, jnp.uint32(1 << 23), jnp.uint32(0))
        shift = jnp.int32(150) - jnp.maximum(exponent, jnp.uint32(1)).astype(jnp.int32)
        limbs = [mantissa & 0xFFFF, mantissa >> 16, jnp.zeros_like(mantissa), jnp.zeros_like(mantissa)]
    return [jnp.asarray(x, jnp.uint32) for x in limbs], shift


def _product_bits(m_limbs: list[jax.Array], n: jax.Array) -> jax.Array:
    """The bits of the exact product ``M · n`` as a ``[..., 96]`` bool array (bit k at index k)."""
    n_limbs = [n & 0xFFFF, n >> 16]
    columns = [jnp.zeros_like(n) for _ in range(_PRODUCT_LIMBS + 1)]
    for i, a in enumerate(m_limbs):
        for j, b in enumerate(n_limbs):
            product = a * b  # < 2**32
            columns[i + j] = columns[i + j] + (product & 0xFFFF)
            columns[i + j + 1] = columns[i + j + 1] + (product >> 16)
    limbs, carry = [], jnp.zeros_like(n)
    for column in columns[:_PRODUCT_LIMBS]:
        total = column + carry
        limbs.append(total & 0xFFFF)
        carry = total >> 16
    stacked = jnp.stack(limbs, axis=-1)  # [..., 6]
    bits = (stacked[..., :, None] >> jnp.arange(_LIMB, dtype=jnp.uint32)) & 1
    return bits.reshape(*stacked.shape[:-1], _PRODUCT_LIMBS * _LIMB).astype(bool)


def ceil_product(fraction: Float64Bits | Any, n: Any) -> jax.Array:
    """``math.ceil(p * n)`` with ``p * n`` rounded to float64 (round half to even) first, as Python does.

    ``fraction`` is a :class:`Float64Bits` (a host float64 from :func:`float64_bits`) or a float32 array
    (widened exactly); both in [0, 1]. ``n`` is a (traced) ``uint32`` count, any shape. Exact: the product
    is formed in integer limbs and rounded to 53 significant bits on device.
    """
    n = jnp.asarray(n, jnp.uint32)
    m_limbs, shift = _mantissa_and_shift(fraction)
    bits = _product_bits(m_limbs, n)  # P = M·n; p·n = P · 2**-shift
    k = jnp.arange(bits.shape[-1], dtype=jnp.int32)
    length = jnp.max(jnp.where(bits, k + 1, 0), axis=-1)  # bit length of P
    offset = k - shift
    in_quotient = bits & (offset >= 0) & (offset < 32)
    quotient = jnp.sum(jnp.where(in_quotient, jnp.uint32(1) << jnp.clip(offset, 0, 31).astype(jnp.uint32), 0),
                       axis=-1, dtype=jnp.uint32)  # floor(P / 2**shift) < 2**32 since p <= 1
    below = k < shift
    remainder = jnp.any(bits & below, axis=-1)
    # Rounding to 53 bits moves P by at most half an ulp, 2**h with h = length - 54 (< shift - 21 because
    # p·n < 2**32), so it lands on the integer q exactly iff the remainder is at most 2**h (a tie goes to q:
    # its last mantissa bit, h + 1 < shift, is 0).
    half = (length - 54)[..., None]
    above_half = jnp.any(bits & below & (k > half), axis=-1)
    under_half = jnp.any(bits & (k < half), axis=-1)
    at_half = jnp.any(bits & (k == half), axis=-1)
    rounds_to_quotient = (length >= 54) & ~above_half & ~(at_half & under_half)
    return quotient + (remainder & ~rounds_to_quotient).astype(jnp.uint32)
