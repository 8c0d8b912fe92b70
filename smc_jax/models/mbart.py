"""mBART (HF ``MBartForConditionalGeneration`` == fairseq ``mbart_large``) in Flax linen.

Encoder: ``sqrt(d_model)`` x shared token embedding + learned positions (row = position + 2, own table),
``layernorm_embedding``, dropout, pre-LayerNorm layers (self-attention; fc1, exact-erf GELU, fc2), final
``layer_norm``. Decoder: the same with a causal self-attention, then a cross-attention to the encoder output in
every layer. Logits: final decoder hidden state x shared embedding^T + ``final_logits_bias`` (a HF buffer, frozen
here by ``stop_gradient``: zero gradient, so Adam without weight decay never moves it; a task's sparsity rules
must exclude it by name). LayerNorm epsilon 1e-5; masked attention scores use ``finfo.min``; attention dropout
draws one value per (row, head, query, key); every dropout takes its bits from XLA's RngBitGenerator
(:class:`~smc_jax.models.layers.Dropout`).

Parameter paths are HF-Flax's (every layer its own path)::

    model/shared/embedding                                               ('vocab', 'embed')
    model/{encoder,decoder}/embed_positions/embedding                    (None, 'embed')  max_positions + 2 rows
    model/{encoder,decoder}/{layernorm_embedding,layer_norm}/{scale,bias}
    model/{encoder,decoder}/layers/<i>/self_attn/{q,k,v}_proj/{kernel,bias}   ('embed', 'heads')
    model/{encoder,decoder}/layers/<i>/self_attn/out_proj/{kernel,bias}       ('heads', 'embed')
    model/{encoder,decoder}/layers/<i>/{self_attn,final}_layer_norm/{scale,bias}
    model/{encoder,decoder}/layers/<i>/fc1/{kernel,bias}, fc2/{kernel,bias}   ('embed', 'mlp'), ('mlp', 'embed')
    model/decoder/layers/<i>/encoder_attn/..., encoder_attn_layer_norm/...    as self_attn
    final_logits_bias                                                    (None, 'vocab')  shape (1, vocab)

Vocabulary layouts and the fairseq conversion are in :mod:`smc_jax.models.mbart_vocab`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smc_jax.models import layers
from smc_jax.models.layers import KeyValue

Dtype = Any
Cache = tuple[KeyValue, ...]
ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": jax.nn.relu,
               "gelu_new": lambda x: jax.nn.gelu(x, approximate=True), "silu": jax.nn.silu, "swish": jax.nn.silu}
POSITION_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class MBartConfig:
    """The architecture fields of a HF ``MBartConfig`` (hashable; defaults: facebook/mbart-large-cc25 with the
    hub file's dropouts). ``layer_norm_eps`` is not a HF field (PyTorch's default, 1e-5)."""

    vocab_size: int = 250027
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    max_position_embeddings: int = 1024
    scale_embedding: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_function: str = "gelu"
    init_std: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2

    def __post_init__(self):
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function {self.activation_function!r} unsupported; use one of "
                             f"{', '.join(ACTIVATIONS)}")
        for heads in (self.encoder_attention_heads, self.decoder_attention_heads):
            if self.d_model % heads:
                raise ValueError(f"d_model {self.d_model} is not a multiple of {heads} attention heads")

    # names the shared layer factories read
    hidden_size = property(lambda self: self.d_model)
    initializer_range = property(lambda self: self.init_std)

    @property
    def embed_scale(self) -> float:
        return float(np.sqrt(self.d_model)) if self.scale_embedding else 1.0

    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | Any, **overrides: Any) -> MBartConfig:
        """Read the fields from a HF ``MBartConfig`` or its ``config.json`` dict (other keys are ignored)."""
        raw = dict(config if isinstance(config, Mapping) else config.to_dict())
        if raw.get("model_type", "mbart") != "mbart":
            raise ValueError(f"model_type {raw['model_type']!r} is not 'mbart'")
        for key in ("encoder_layerdrop", "decoder_layerdrop"):
            if raw.get(key):
                raise ValueError(f"config sets {key}={raw[key]}: LayerDrop is not supported")
        if raw.get("tie_word_embeddings") is False:
            raise ValueError("config sets tie_word_embeddings=False: only the tied output projection is supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: raw[k] for k in fields if raw.get(k) is not None}, **overrides})


class DecoderCache(NamedTuple):
    """Incremental decoding state: per decoder layer a self-attention :class:`KeyValue` cache (each beam writes
    its own slot, in place) and the ``ancestry``
    ``[batch, beams, length]`` int32, the slot holding each beam's key/value of each position (a beam search
    re-orders only this)."""

    layers: Cache
    ancestry: jax.Array


class MBartOutput(NamedTuple):
    """What :class:`MBartForConditionalGeneration` returns (``out[0]`` is the logits)."""

    logits: jax.Array  # [batch, target length, vocab], float32
    encoder_last_hidden_state: jax.Array  # [batch, source length, d_model]


class _Module(layers.ConfiguredModule):
    config: MBartConfig


class _Layer(_Module):
    """What encoder and decoder layers share: dropout, the pre-LN feed-forward block, attention factory."""

    def ffn_setup(self, ffn_dim: int):
        self.final_layer_norm = self.layer_norm("embed", "final_layer_norm")
        self.fc1 = self.dense(ffn_dim, ("embed", "mlp"), "fc1")
        self.fc2 = self.dense(self.config.d_model, ("mlp", "embed"), "fc2")
        self.dropout = layers.Dropout(self.config.dropout)
        self.activation_dropout = layers.Dropout(self.config.activation_dropout)

    def attention(self, heads: int, name: str) -> layers.MultiHeadAttention:
        c = self.config
        return layers.MultiHeadAttention(heads, c.d_model, c.attention_dropout, init_std=c.init_std,
                                         names=("q_proj", "k_proj", "v_proj"), out_name="out_proj", rbg_dropout=True,
                                         dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    def ffn(self, x: jax.Array, deterministic: bool) -> jax.Array:
        h = ACTIVATIONS[self.config.activation_function](self.fc1(self.final_layer_norm(x)))
        h = self.fc2(self.activation_dropout(h, deterministic=deterministic))
        return x + self.dropout(h, deterministic=deterministic)


class EncoderLayer(_Layer):
    """HF ``MBartEncoderLayer``: pre-LN self-attention block, pre-LN feed-forward block."""

    def setup(self):
        self.self_attn = self.attention(self.config.encoder_attention_heads, "self_attn")
        self.self_attn_layer_norm = self.layer_norm("embed", "self_attn_layer_norm")
        self.ffn_setup(self.config.encoder_ffn_dim)

    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        h = self.self_attn(self.self_attn_layer_norm(x), mask, deterministic)
        return self.ffn(x + self.dropout(h, deterministic=deterministic), deterministic)


class DecoderLayer(_Layer):
    """HF ``MBartDecoderLayer``: causal self-attention, cross-attention and feed-forward blocks (pre-LN).
    ``encoder``: the encoder output or its projected :class:`KeyValue` (:meth:`cross_kv`); ``cache``:
    incremental self-attention (returned updated)."""

    def setup(self):
        heads = self.config.decoder_attention_heads
        self.self_attn = self.attention(heads, "self_attn")
        self.self_attn_layer_norm = self.layer_norm("embed", "self_attn_layer_norm")
        self.encoder_attn = self.attention(heads, "encoder_attn")
        self.encoder_attn_layer_norm = self.layer_norm("embed", "encoder_attn_layer_norm")
        self.ffn_setup(self.config.decoder_ffn_dim)

    def __call__(self, x, self_mask, encoder, encoder_mask, deterministic: bool, cache: KeyValue | None = None,
                 cache_index: int | jax.Array = 0) -> tuple[jax.Array, KeyValue | None]:
        h = self.self_attn_layer_norm(x)
        if cache is None:
            h = self.self_attn(h, self_mask, deterministic)
        else:
            h, cache = self.self_attn(h, self_mask, deterministic, cache=cache, cache_index=cache_index)
        x = x + self.dropout(h, deterministic=deterministic)
        h = self.encoder_attn(self.encoder_attn_layer_norm(x), encoder_mask, deterministic, kv=encoder)
        x = x + self.dropout(h, deterministic=deterministic)
        return self.ffn(x, deterministic), cache

    def cross_kv(self, encoder: jax.Array) -> KeyValue:
        return self.encoder_attn(None, None, True, kv=encoder)


class _Stack(_Module):
    """``layers/<i>`` for every layer (``remat``: each layer recomputed in the backward pass)."""

    decoder: bool = False
    remat: bool = False

    def setup(self):
        c = self.config
        cls, n = (DecoderLayer, c.decoder_layers) if self.decoder else (EncoderLayer, c.encoder_layers)
        if self.remat:
            cls = nn.remat(cls, static_argnums=(5,) if self.decoder else (3,))
        self.blocks = [cls(c, self.dtype, self.param_dtype, name=str(i)) for i in range(n)]

    def __call__(self, x, mask, deterministic: bool):
        for block in self.blocks:
            x = block(x, mask, deterministic)
        return x

    def decode(self, x, self_mask, encoder, encoder_mask, deterministic: bool, caches: Cache | None = None,
               cache_index: int | jax.Array = 0) -> tuple[jax.Array, Cache | None]:
        encoder = encoder if isinstance(encoder, tuple) and not isinstance(encoder, KeyValue) else (
            (encoder,) * len(self.blocks))
        new = []
        for i, block in enumerate(self.blocks):
            x, cache = block(x, self_mask, encoder[i], encoder_mask, deterministic,
                             None if caches is None else caches[i], cache_index)
            new.append(cache)
        return x, None if caches is None else tuple(new)

    def cross_kv(self, encoder: jax.Array) -> Cache:
        return tuple(block.cross_kv(encoder) for block in self.blocks)


class _Side(_Module):
    """HF ``MBartEncoder`` / ``MBartDecoder`` below the token embedding: positions, ``layernorm_embedding``,
    dropout, ``layers``, final ``layer_norm``."""

    decoder: bool = False
    remat: bool = False

    def setup(self):
        c = self.config
        self.embed_positions = self.embed(c.max_position_embeddings + POSITION_OFFSET, (None, "embed"),
                                          "embed_positions")
        self.layernorm_embedding = self.layer_norm("embed", "layernorm_embedding")
        self.layers = _Stack(c, self.dtype, self.param_dtype, decoder=self.decoder, remat=self.remat, name="layers")
        self.final_norm = self.layer_norm("embed", "layer_norm")
        self.dropout = layers.Dropout(c.dropout)

    def embed_inputs(self, tokens: jax.Array, positions: jax.Array, deterministic: bool) -> jax.Array:
        x = tokens + self.embed_positions(positions + POSITION_OFFSET)
        return self.dropout(self.layernorm_embedding(x), deterministic=deterministic)

    def __call__(self, tokens, mask, deterministic: bool):
        x = self.embed_inputs(tokens, jnp.arange(tokens.shape[1])[None], deterministic)
        return self.final_norm(self.layers(x, mask, deterministic))

    def decode(self, tokens, positions, self_mask, encoder, encoder_mask, deterministic: bool,
               caches: Cache | None = None, cache_index: int | jax.Array = 0):
        x = self.embed_inputs(tokens, positions, deterministic)
        x, caches = self.layers.decode(x, self_mask, encoder, encoder_mask, deterministic, caches, cache_index)
        return self.final_norm(x), caches

    def cross_kv(self, encoder: jax.Array) -> Cache:
        return self.layers.cross_kv(encoder)


class MBartModel(_Module):
    """HF ``MBartModel``: ``shared`` (the scaled token embedding of both sides), ``encoder``, ``decoder``."""

    remat: bool = False

    def setup(self):
        c = self.config
        self.shared = self.embed(c.vocab_size, ("vocab", "embed"), "shared")
        kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat)
        self.encoder = _Side(**kw, decoder=False, name="encoder")
        self.decoder = _Side(**kw, decoder=True, name="decoder")

    def tokens(self, ids: jax.Array) -> jax.Array:
        return self.shared(ids) * jnp.asarray(self.config.embed_scale, self.dtype)

    def table(self) -> jax.Array:
        return self.shared.embedding

    def encode(self, input_ids, attention_mask, deterministic: bool):
        return self.encoder(self.tokens(input_ids), layers.padding_mask(attention_mask), deterministic)

    def decode(self, ids, positions, self_mask, encoder, encoder_mask, deterministic: bool, caches=None,
               cache_index=0):
        return self.decoder.decode(self.tokens(ids), positions, self_mask, encoder, encoder_mask, deterministic,
                                   caches, cache_index)

    def cross_kv(self, encoder: jax.Array) -> Cache:
        return self.decoder.cross_kv(encoder)


class MBartForConditionalGeneration(_Module):
    """HF ``MBartForConditionalGeneration`` (tied output projection, frozen ``final_logits_bias``).

    ``apply({'params': p}, input_ids=, attention_mask=, decoder_input_ids=, decoder_attention_mask=,
    deterministic=True)`` -> :class:`MBartOutput` (``.logits`` / ``[0]``: ``[batch, target, vocab]`` float32).
    ``attention_mask`` defaults to ``input_ids != pad``; ``decoder_attention_mask`` (None: none) hides padded
    decoder keys on top of the causal mask. Incremental decoding: :meth:`encode` once, :meth:`cross_kv` once per
    sentence, :func:`init_cache`, then :meth:`decode` per step. ``dtype``: computation dtype (params stay
    ``param_dtype``; logits and softmaxes in float32); ``remat``: recompute every layer in the backward pass.
    """

    remat: bool = False

    def setup(self):
        c = self.config
        self.model = MBartModel(c, self.dtype, self.param_dtype, remat=self.remat, name="model")
        self.final_logits_bias = self.param(
            "final_logits_bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, "vocab")),
            (1, c.vocab_size), self.param_dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """``[..., d_model]`` -> float32 ``[..., vocab]``: tied projection plus the frozen bias."""
        table = self.model.table().astype(self.dtype)
        out = jnp.einsum("...d,vd->...v", hidden.astype(self.dtype), table, preferred_element_type=jnp.float32)
        return out + jax.lax.stop_gradient(self.final_logits_bias[0]).astype(jnp.float32)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 decoder_input_ids: jax.Array | None = None, decoder_attention_mask: jax.Array | None = None,
                 deterministic: bool = True) -> MBartOutput:
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids is required (shift_tokens_right(labels) in the HF format)")
        if attention_mask is None:
            attention_mask = (input_ids != self.config.pad_token_id).astype(jnp.int32)
        encoder = self.encode(input_ids, attention_mask, deterministic)
        length = decoder_input_ids.shape[1]
        self_mask = layers.causal_mask(length)
        if decoder_attention_mask is not None:
            self_mask = self_mask & layers.padding_mask(decoder_attention_mask)
        hidden, _ = self.model.decode(decoder_input_ids, jnp.arange(length)[None], self_mask, encoder,
                                      layers.padding_mask(attention_mask), deterministic)
        return MBartOutput(self.logits(hidden), encoder)

    def encode(self, input_ids: jax.Array, attention_mask: jax.Array, deterministic: bool = True) -> jax.Array:
        """The encoder output ``[batch, source, d_model]``."""
        return self.model.encode(input_ids, attention_mask, deterministic)

    def cross_kv(self, encoder_hidden: jax.Array) -> Cache:
        """Every decoder layer's cross-attention keys/values ``[batch, heads, source, head_dim]`` (once per source)."""
        return self.model.cross_kv(encoder_hidden)

    def decode(self, decoder_input_ids: jax.Array, cache_index: int | jax.Array, cache: DecoderCache,
               cross_kv: Cache, attention_mask: jax.Array, deterministic: bool = True
               ) -> tuple[jax.Array, DecoderCache]:
        """Logits ``[rows, steps, vocab]`` of ``decoder_input_ids`` ``[rows, steps]`` at decoder positions
        ``cache_index ..``, attending to the ``cache`` (:func:`init_cache`) of the earlier positions (returned
        updated). ``rows`` = the cache's ``batch * beams`` (a sentence's beams consecutive): ``cross_kv`` and
        ``attention_mask`` (the source's, ``[batch, source]``) are shared by each sentence's beams, not tiled."""
        steps = decoder_input_ids.shape[1]
        ancestry, self_mask = self_attention_mask(cache.ancestry, cache_index, steps)
        positions = cache_index + jnp.arange(steps)[None]
        hidden, caches = self.model.decode(decoder_input_ids, positions, self_mask, cross_kv,
                                           layers.padding_mask(attention_mask), deterministic, cache.layers,
                                           cache_index)
        return self.logits(hidden), DecoderCache(caches, ancestry)

    def dummy_inputs(self) -> tuple[jax.Array, ...]:
        """Positional inputs for ``init``/``eval_shape``."""
        ids = jnp.full((1, 2), self.config.eos_token_id, jnp.int32)
        return ids, jnp.ones((1, 2), jnp.int32), ids, jnp.ones((1, 2), jnp.int32)


def init_cache(config: MBartConfig, batch: int, length: int, dtype: Dtype = jnp.float32,
               beams: int = 1) -> DecoderCache:
    """An empty :class:`DecoderCache` for ``batch * beams`` decoder rows and ``length`` >= the number of decoder
    positions fed; every beam's history in its own slot."""
    heads = config.decoder_attention_heads
    ancestry = jnp.broadcast_to(jnp.arange(beams, dtype=jnp.int32)[None, :, None], (batch, beams, length))
    return DecoderCache(tuple(KeyValue.zeros(batch, length, heads, config.d_model // heads, dtype, beams)
                              for _ in range(config.decoder_layers)), ancestry)


def self_attention_mask(ancestry: jax.Array, cache_index: int | jax.Array, steps: int
                        ) -> tuple[jax.Array, jax.Array]:
    """``ancestry`` ``[batch, beams, length]`` with positions ``cache_index ..`` (``steps`` of them) written by
    every beam into its own slot, and the cached self-attention mask ``[batch, 1, beams * steps, length * beams]``:
    the query of (beam k, step s) sees position l of slot k' iff ``l <= cache_index + s`` and
    ``ancestry[b, k, l] == k'`` (its own history, causal)."""
    batch, beams, length = ancestry.shape
    own = jnp.broadcast_to(jnp.arange(beams, dtype=ancestry.dtype)[None, :, None], (batch, beams, steps))
    ancestry = jax.lax.dynamic_update_slice(ancestry, own, (0, 0, cache_index))
    slot = ancestry[:, :, None, :, None] == jnp.arange(beams, dtype=ancestry.dtype)  # [b, k, 1, l, k']
    causal = (jnp.arange(length) <= cache_index + jnp.arange(steps)[:, None])[:, :, None]  # [s, l, 1]
    return ancestry, (slot & causal).reshape(batch, 1, beams * steps, length * beams)


def shift_tokens_right(labels: np.ndarray | jax.Array, pad_token_id: int = 1) -> jax.Array:
    """HF's mBART decoder input: each row's last non-pad token (the language code) moved to the front."""
    labels = jnp.asarray(labels)
    last = jnp.sum(labels != pad_token_id, axis=1) - 1
    first = jnp.take_along_axis(labels, last[:, None], axis=1)
    return jnp.concatenate([first, labels[:, :-1]], axis=1)
