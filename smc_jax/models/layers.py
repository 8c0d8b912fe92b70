"""Transformer pieces the models share (:mod:`~smc_jax.models.bert`, :mod:`~smc_jax.models.esm`,
:mod:`~smc_jax.models.mbart`).

Factories (:func:`dense`, :func:`layer_norm`, :func:`embed`) build Flax layers whose every kernel, bias,
scale and embedding carries logical axis names (``nn.with_logical_partitioning``), computing in ``dtype``
with parameters in ``param_dtype``. Called inside a module's ``@nn.compact`` method they become that
module's submodules under ``name``. The axis names are those of :mod:`smc_jax.train.partitioning`'s rules:
``'embed'`` (model width), ``'heads'`` (the joined heads x head_dim axis), ``'mlp'`` (feed-forward width),
``'vocab'``, ``'hidden'`` (head/pooler width).

:class:`MultiHeadAttention` is HF's ``*SelfAttention`` module: the ``query``/``key``/``value`` projections
and the attention itself, returning the concatenated heads (the output projection belongs to the caller,
whose naming differs per model, unless ``out_name`` names one inside). It also does cross-attention
(keys/values from another sequence, or already projected as a :class:`KeyValue`) and incremental
self-attention over a :class:`KeyValue` cache (per-beam slots written in place, never re-ordered). Masks are
boolean, ``True`` where a query may attend to a key, broadcastable to ``[batch, heads, queries, keys]``;
:func:`padding_mask` makes the key-padding one and :func:`causal_mask` the causal one (with an offset for cached
decoding); they combine by ``&``. The attention is explicit and heads-major (:func:`attend_heads_major`: float32
softmax, optional dropout on the probabilities, as HF). :class:`Dropout` draws its bits from XLA's
RngBitGenerator; :func:`materialized` is a fusion boundary before a softmax over logits.
Rotary position embeddings (:func:`rotary_tables`, :func:`apply_rotary`) rotate the halves of each head
(GPT-NeoX/ESM layout, not interleaved).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Axes = tuple[str | None, ...]
Initializer = Callable[..., jax.Array]


def normal_init(std: float, axes: Axes) -> Initializer:
    """normal(``std``) with logical axes ``axes``."""
    return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def dense(features: int, axes: tuple[str | None, str | None], *, name: str, std: float = 0.02,
          use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nn.Dense:
    """``nn.Dense`` with a normal(``std``) kernel on ``axes`` (in, out) and a zero bias on ``(axes[1],)``."""
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                    kernel_init=normal_init(std, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)))


def layer_norm(axis: str | None, *, name: str, eps: float, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32) -> nn.LayerNorm:
    """``nn.LayerNorm`` (unit scale, zero bias, both on ``(axis,)``) with epsilon ``eps``."""
    ones, zeros = nn.initializers.ones_init(), nn.initializers.zeros_init()
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
                        scale_init=nn.with_logical_partitioning(ones, (axis,)),
                        bias_init=nn.with_logical_partitioning(zeros, (axis,)))


def embed(num_embeddings: int, features: int, axes: tuple[str | None, str | None], *, name: str,
          std: float = 0.02, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> nn.Embed:
    """``nn.Embed`` with a normal(``std``) table on ``axes`` (rows, features)."""
    return nn.Embed(num_embeddings, features, dtype=dtype, param_dtype=param_dtype, name=name,
                    embedding_init=normal_init(std, axes))



class ConfiguredModule(nn.Module):
    """A module with a model ``config`` (``initializer_range``, ``layer_norm_eps``, ``hidden_size``) and the
    factories above bound to it and to the module's ``dtype``/``param_dtype``."""

    config: Any
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def dense(self, features: int, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
        return dense(features, axes, name=name, std=self.config.initializer_range, dtype=self.dtype,
                     param_dtype=self.param_dtype)

    def layer_norm(self, axis: str | None, name: str) -> nn.LayerNorm:
        return layer_norm(axis, name=name, eps=self.config.layer_norm_eps, dtype=self.dtype,
                          param_dtype=self.param_dtype)

    def embed(self, num: int, axes: tuple[str | None, str | None], name: str) -> nn.Embed:
        return embed(num, self.config.hidden_size, axes, name=name, std=self.config.initializer_range,
                     dtype=self.dtype, param_dtype=self.param_dtype)

class Dropout(nn.Module):
    """``nn.Dropout`` (zero with probability ``rate``, scale the rest by ``1 / (1 - rate)``, one draw per element)
    with its random bits from XLA's ``RngBitGenerator`` (an ``rbg`` key made from the module's ``'dropout'`` rng):
    on the CPU about 1.7x cheaper than threefry bits. Active when ``deterministic`` is False."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        if keep == 0.0:
            return jnp.zeros_like(x)
        return jax.lax.select(rbg_bernoulli(self.make_rng("dropout"), keep, x.shape), x / keep, jnp.zeros_like(x))


def rbg_bernoulli(key: jax.Array, p: float, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.bernoulli(·, p, shape)`` with its bits from XLA's ``RngBitGenerator``: an ``rbg`` key made from
    ``key`` (on the CPU about 1.7x cheaper than threefry bits)."""
    rbg = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
    return jax.random.bernoulli(rbg, p, shape)


def materialized(x: jax.Array) -> jax.Array:
    """float32 ``x`` unchanged, but a fusion boundary for XLA's CPU backend: its YNNPACK fusions otherwise pull the
    reductions of a softmax over the logits into the fusion of the matmul producing them, which then runs about
    twice as slow as the matmul and the reductions apart (an ``optimization_barrier`` is gone by then)."""
    return jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=23)


def position_ids_from_padding(input_ids: jax.Array, padding_idx: int) -> jax.Array:
    """HF ``create_position_ids_from_input_ids``: real tokens count from ``padding_idx + 1``, pads get it."""
    real = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(real, axis=-1) * real + padding_idx


def padding_mask(attention_mask: jax.Array) -> jax.Array:
    """``[batch, keys]`` 1/0 (real/padding) -> boolean ``[batch, 1, 1, keys]`` attention mask."""
    return attention_mask[:, None, None, :].astype(bool)


def causal_mask(queries: int, keys: int | None = None, offset: int | jax.Array = 0) -> jax.Array:
    """Boolean ``[1, 1, queries, keys]``: query i (at position ``offset + i``) sees keys ``0 .. offset + i``.
    ``keys`` defaults to ``queries``; ``offset`` may be traced (the cache index in incremental decoding)."""
    keys = queries if keys is None else keys
    return (jnp.arange(keys)[None, :] <= offset + jnp.arange(queries)[:, None])[None, None]


class KeyValue(NamedTuple):
    """Projected keys and values, heads-major: ``[batch, heads, length, head_dim]`` for a source sequence's
    (computed once for cross-attention). As an incremental self-attention cache (:meth:`zeros`) of ``beams``
    rows of queries per batch row: values ``[batch, heads, length * beams, head_dim]``, keys
    ``[batch, heads, head_dim, length * beams]`` (the layouts the attention products read without a copy),
    position-major (index ``position * beams + slot``), each beam writing its own slot in place."""

    key: jax.Array
    value: jax.Array

    @classmethod
    def zeros(cls, batch: int, length: int, heads: int, head_dim: int, dtype: Dtype = jnp.float32,
              beams: int = 1) -> KeyValue:
        """An empty cache."""
        return cls(jnp.zeros((batch, heads, head_dim, length * beams), dtype),
                   jnp.zeros((batch, heads, length * beams, head_dim), dtype))


# ------------------------------------------------------------------------------------------------- rotary

def rotary_tables(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float32 ``(cos, sin)`` of shape ``[*positions.shape, 1, 2 * len(inv_freq)]`` (the 1 broadcasts over
    heads in ``[batch, length, heads, head_dim]`` tensors): angle ``position * inv_freq``, repeated for both
    halves of the head."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([freqs, freqs], axis=-1)[..., None, :]
    return jnp.cos(angles), jnp.sin(angles)


def rotate_half(x: jax.Array) -> jax.Array:
    """``concat(-x2, x1)`` for the halves ``x1, x2`` of the last axis."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding of ``x`` ``[..., length, heads, head_dim]``, computed in float32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


# ---------------------------------------------------------------------------------------------- attention

def attend_heads_major(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *,
                       scale: float | None = None, dropout: Callable[[jax.Array], jax.Array] | None = None,
                       keys_last: bool = False) -> jax.Array:
    """Scaled dot-product attention of heads-major ``[batch, heads, length, head_dim]`` tensors (the layout
    XLA's CPU backend multiplies fastest for small head dims); ``keys_last``: the keys come as
    ``[batch, heads, head_dim, length]``. ``scale`` multiplies the logits (None: divide by sqrt(head_dim));
    ``dropout``, when given, is applied to the float32 attention probabilities."""
    logits = jnp.einsum("bnth,bnhs->bnts" if keys_last else "bnth,bnsh->bnts", q, k,
                        preferred_element_type=jnp.float32)
    logits = logits / q.shape[-1] ** 0.5 if scale is None else logits * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout is not None:
        probs = dropout(probs)
    return jnp.einsum("bnts,bnsh->bnth", probs.astype(v.dtype), v)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *, scale: float | None = None,
           dropout: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """:func:`attend_heads_major` of ``[batch, length, heads, head_dim]`` tensors."""
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    return jnp.swapaxes(attend_heads_major(q, k, v, mask, scale=scale, dropout=dropout), 1, 2)


class MultiHeadAttention(nn.Module):
    """Multi-head attention: projections named ``names`` (query, key, value), then attention; returns the
    concatenated heads ``[batch, length, features]``, or their projection back to the query's width by the
    Dense ``out_name`` when one is named (HF's ``out_proj`` inside the attention module, mBART).

    ``features``: joined heads x head_dim width. ``scale_query``: multiply the query by head_dim**-0.5 right
    after its projection (before any rotary embedding) and leave the logits unscaled (ESM); otherwise the
    logits are divided by sqrt(head_dim) (BERT). ``dropout_rate``: on the attention probabilities, active
    when ``deterministic`` is False (one ``nn.Dropout`` submodule, ``Dropout_0``, or this module's
    :class:`Dropout` with ``rbg_dropout``; one draw per batch row, head, query and key).
    """

    num_heads: int
    features: int
    dropout_rate: float = 0.0
    scale_query: bool = False
    init_std: float = 0.02
    names: tuple[str, str, str] = ("query", "key", "value")
    out_name: str | None = None
    rbg_dropout: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def head_dim(self) -> int:
        return self.features // self.num_heads

    def project(self, x: jax.Array, name: str) -> jax.Array:
        """``[batch, length, width]`` -> ``[batch, length, heads, head_dim]`` through the Dense ``name``."""
        y = dense(self.features, ("embed", "heads"), name=name, std=self.init_std, dtype=self.dtype,
                  param_dtype=self.param_dtype)(x)
        return y.reshape(*x.shape[:-1], self.num_heads, self.head_dim)

    @nn.compact
    def __call__(self, x: jax.Array | None, mask: jax.Array | None, deterministic: bool,
                 rotary: tuple[jax.Array, jax.Array] | None = None, *, kv: jax.Array | KeyValue | None = None,
                 cache: KeyValue | None = None, cache_index: int | jax.Array = 0,
                 ) -> jax.Array | KeyValue | tuple[jax.Array, KeyValue]:
        """Attention of the queries ``x`` ``[batch, length, width]``.

        ``mask``: boolean, broadcastable to ``[batch, heads, queries, keys]``; ``rotary``: ``(cos, sin)`` from
        :func:`rotary_tables`, applied to the query and to keys projected from ``x``.
        ``kv``: cross-attention source, ``[batch, source, width]`` (projected here) or a :class:`KeyValue`
        already projected; with ``x=None`` the call returns that :class:`KeyValue` (compute it once per source).
        When ``kv``'s batch is a divisor of ``x``'s, the rows of ``x`` are groups of ``x_batch / kv_batch``
        consecutive rows (beams) sharing one source: their queries attend to it without tiling it.
        ``cache``: incremental self-attention over a :class:`KeyValue` cache of ``batch`` rows, ``x`` holding
        ``batch * beams`` rows (a batch row's beams consecutive): each row's keys/values are written into its
        beam's slot at positions ``cache_index ..``, and the queries of a batch row's beams attend over all its
        slots, ``length * beams`` keys (``mask`` picks each query's own history, ``[batch, 1, beams * steps,
        length * beams]``, e.g. ``mbart.self_attention_mask``); returns ``(out, cache)``.
        """
        if self.features % self.num_heads:
            raise ValueError(f"features {self.features} is not a multiple of num_heads {self.num_heads}")
        _, key_name, value_name = self.names
        heads_major = lambda y: jnp.swapaxes(y, 1, 2)  # noqa: E731
        if x is None:
            if kv is None or isinstance(kv, KeyValue):
                raise ValueError("x=None projects the keys/values of kv: pass kv as an array")
            return KeyValue(heads_major(self.project(kv, key_name)), heads_major(self.project(kv, value_name)))
        q = self.project(x, self.names[0])
        if kv is None:
            k, v = self.project(x, key_name), self.project(x, value_name)
        elif isinstance(kv, KeyValue):
            k, v = kv
        else:
            k, v = heads_major(self.project(kv, key_name)), heads_major(self.project(kv, value_name))
        scale = None
        if self.scale_query:
            q, scale = q * self.head_dim**-0.5, 1.0
        if rotary is not None:
            q = apply_rotary(q, *rotary)
            k = apply_rotary(k, *rotary) if kv is None else k
        if cache is not None:
            if kv is not None:
                raise ValueError("a key/value cache is for self-attention (kv must be None)")
            batch, steps = cache.value.shape[0], x.shape[1]
            beams = x.shape[0] // batch
            # [rows, steps, heads, head_dim] -> [batch, heads, head_dim | steps * beams | head_dim]
            new = lambda y, order: y.reshape(batch, beams, steps, *y.shape[2:]).transpose(order).reshape(  # noqa
                batch, self.num_heads, -1, self.head_dim)
            start = cache_index * beams
            cache = KeyValue(
                jax.lax.dynamic_update_slice(cache.key, new(k, (0, 3, 4, 2, 1)).reshape(
                    batch, self.num_heads, self.head_dim, -1).astype(cache.key.dtype), (0, 0, 0, start)),
                jax.lax.dynamic_update_slice(cache.value, new(v, (0, 3, 2, 1, 4)).astype(cache.value.dtype),
                                             (0, 0, start, 0)))
            k, v = cache  # read as laid out: any relayout or reshape has XLA copy the whole cache every step
        elif kv is None:
            k, v = heads_major(k), heads_major(v)
        if k.shape[0] != q.shape[0]:
            if q.ndim != 4 or q.shape[0] % k.shape[0]:
                raise ValueError(f"queries of batch {q.shape[0]} cannot share keys/values of batch {k.shape[0]}")
            q = q.reshape(k.shape[0], -1, *q.shape[2:])
        dropout = None
        if not deterministic and self.dropout_rate > 0.0:
            cls = Dropout if self.rbg_dropout else nn.Dropout
            dropout = lambda p: cls(self.dropout_rate)(p, deterministic=False)  # noqa: E731
        out = heads_major(attend_heads_major(heads_major(q), k, v, mask, scale=scale, dropout=dropout,
                                                keys_last=cache is not None))
        out = out.reshape(*x.shape[:-1], self.features)
        if self.out_name is not None:
            out = dense(x.shape[-1], ("heads", "embed"), name=self.out_name, std=self.init_std, dtype=self.dtype,
                        param_dtype=self.param_dtype)(out)
        return out if cache is None else (out, cache)
