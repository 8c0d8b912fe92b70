"""ESM-1b and ESM-2 protein language models (the encoder, HF ``EsmModel``) in Flax linen.

The forward pass is HF ``EsmModel``'s (``add_pooling_layer=False``): word embeddings; token-dropout
rescaling (``<mask>`` embeddings zeroed, every embedding scaled by 0.88 / (1 - masked fraction of the
sequence); also at inference); absolute positions counted from the padding index (ESM-1b) and the
embedding LayerNorm (``emb_layer_norm_before``); padding zeroed; pre-LayerNorm layers with the query scaled
by head_dim**-0.5 before rotary embeddings on query and key (ESM-2: positions 0..T-1, halves rotated);
exact-erf GELU; final ``emb_layer_norm_after``.

Parameter paths mirror HF's module tree (kernels are the transposes of PyTorch's ``Linear.weight``; every
layer has its own path, no ``nn.scan``)::

    embeddings/word_embeddings/embedding                              ('vocab', 'embed')
    embeddings/position_embeddings/embedding                          (None, 'embed')   absolute only
    embeddings/layer_norm/{scale,bias}                                emb_layer_norm_before only
    encoder/layer/<i>/attention/LayerNorm/{scale,bias}                pre-attention LayerNorm
    encoder/layer/<i>/attention/self/{query,key,value}/{kernel,bias}  ('embed', 'heads')
    encoder/layer/<i>/attention/output/dense/{kernel,bias}            ('heads', 'embed')
    encoder/layer/<i>/LayerNorm/{scale,bias}                          pre-feed-forward LayerNorm
    encoder/layer/<i>/intermediate/dense/{kernel,bias}                ('embed', 'mlp')
    encoder/layer/<i>/output/dense/{kernel,bias}                      ('mlp', 'embed')
    encoder/emb_layer_norm_after/{scale,bias}

LayerNorms and width-sized biases are on ('embed',). The rotary inverse frequencies are not a parameter:
they are :attr:`EsmConfig.rotary_inv_freq`, a compile-time constant (never trained or decayed). The loader
reads them from the checkpoint (stored fp16-rounded in the released ESM-2 weights); a config built without
them computes ``1 / rope_theta ** (arange(0, head_dim, 2) / head_dim)`` in float32, as HF does.
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

Dtype = Any
POSITION_TYPES = ("absolute", "rotary")
# token dropout: the fraction of tokens replaced by <mask> in ESM pretraining (15% selected, 80% of them masked)
MASK_RATIO_TRAIN = 0.15 * 0.8


def default_inv_freq(head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """float32 ``1 / theta ** (arange(0, head_dim, 2) / head_dim)`` (HF's default rotary frequencies)."""
    return (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))).astype(
        np.float32)


@dataclasses.dataclass(frozen=True)
class EsmConfig:
    """The architecture fields of a HF ``EsmConfig`` (hashable, a Flax module attribute).

    The defaults are the ESM-2 ones with esm2_t6_8M's sizes, so a from-scratch model needs only sizes, e.g.
    ``EsmConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)``; ESM-1b-style adds
    ``position_embedding_type='absolute', emb_layer_norm_before=True``. ``intermediate_size`` defaults to
    4 x ``hidden_size``. ``rotary_inv_freq`` (rotary only) defaults to :func:`default_inv_freq`.
    """

    vocab_size: int = 33
    hidden_size: int = 320
    num_hidden_layers: int = 6
    num_attention_heads: int = 20
    intermediate_size: int | None = None
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 1026
    position_embedding_type: str = "rotary"
    emb_layer_norm_before: bool = False
    token_dropout: bool = True
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    mask_token_id: int | None = 32
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    rotary_inv_freq: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.position_embedding_type not in POSITION_TYPES:
            raise ValueError(f"position_embedding_type {self.position_embedding_type!r} unsupported; "
                             f"use one of {POSITION_TYPES}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 4 * self.hidden_size)
        if not self.rotary:
            if self.rotary_inv_freq is not None:
                raise ValueError("rotary_inv_freq is set but position_embedding_type is 'absolute'")
            return
        if self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {self.head_dim}")
        freqs = self.rotary_inv_freq
        if freqs is None:
            freqs = default_inv_freq(self.head_dim, self.rope_theta)
        freqs = tuple(float(f) for f in np.asarray(freqs, np.float32).reshape(-1))
        if len(freqs) != self.head_dim // 2:
            raise ValueError(f"rotary_inv_freq has {len(freqs)} values, head_dim {self.head_dim} needs "
                             f"{self.head_dim // 2}")
        object.__setattr__(self, "rotary_inv_freq", freqs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary(self) -> bool:
        return self.position_embedding_type == "rotary"

    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | Any, **overrides: Any) -> EsmConfig:
        """Read the fields from a HF ``EsmConfig`` object or its ``config.json`` dict (unknown keys are ignored;
        ``None`` means the HF behaviour: no embedding LayerNorm, no token dropout)."""
        raw = dict(config if isinstance(config, Mapping) else config.to_dict())
        if raw.get("model_type", "esm") != "esm":
            raise ValueError(f"model_type {raw['model_type']!r} is not 'esm'")
        for flag, what in (("is_decoder", "a decoder"), ("add_cross_attention", "cross-attention"),
                           ("is_folding_model", "ESMFold")):
            if raw.get(flag):
                raise ValueError(f"config sets {flag}: {what} is not supported (only the ESM encoder)")
        raw["emb_layer_norm_before"] = bool(raw.get("emb_layer_norm_before"))
        raw["token_dropout"] = bool(raw.get("token_dropout"))
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: raw[k] for k in fields if k in raw and (raw[k] is not None or k == "mask_token_id")}
        if isinstance(values.get("rotary_inv_freq"), list):
            values["rotary_inv_freq"] = tuple(values["rotary_inv_freq"])
        return cls(**{**values, **overrides})


class EsmModelOutput(NamedTuple):
    """What :class:`EsmModel` returns (``out[0]`` is the last hidden state)."""

    last_hidden_state: jax.Array  # [batch, length, hidden_size], after emb_layer_norm_after


class _Module(layers.ConfiguredModule):
    """Shared fields and the layer factories (every parameter gets logical axes)."""

    config: EsmConfig


class EsmEmbeddings(_Module):
    """HF ``EsmEmbeddings``: word embeddings, token-dropout rescaling, absolute positions, the optional
    LayerNorm, padding zeroed (no dropout, as HF)."""

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        c = self.config
        x = self.embed(c.vocab_size, ("vocab", "embed"), "word_embeddings")(input_ids)
        if c.token_dropout:
            masked = (input_ids == c.mask_token_id) if c.mask_token_id is not None else jnp.zeros_like(
                input_ids, bool)
            x = jnp.where(masked[..., None], jnp.zeros((), x.dtype), x)
            observed = masked.sum(-1).astype(jnp.float32) / attention_mask.sum(-1)
            x = (x * (1 - MASK_RATIO_TRAIN) / (1 - observed)[:, None, None]).astype(x.dtype)
        if not c.rotary:
            positions = layers.position_ids_from_padding(input_ids, c.pad_token_id)
            x = x + self.embed(c.max_position_embeddings, (None, "embed"), "position_embeddings")(positions)
        if c.emb_layer_norm_before:
            x = self.layer_norm("embed", "layer_norm")(x)
        return x * attention_mask[..., None].astype(x.dtype)


class EsmResidual(_Module):
    """HF ``EsmSelfOutput``/``EsmOutput``: ``dense``, dropout, plus the residual (no LayerNorm)."""

    in_axis: str = "heads"

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        x = self.dense(c.hidden_size, (self.in_axis, "embed"), "dense")(x)
        return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic) + residual


class EsmAttention(_Module):
    """HF ``EsmAttention``: ``LayerNorm`` (pre-attention), ``self``, ``output``."""

    @nn.compact
    def __call__(self, x, mask, rotary, deterministic: bool):
        c = self.config
        y = self.layer_norm("embed", "LayerNorm")(x)
        heads = layers.MultiHeadAttention(c.num_attention_heads, c.hidden_size, c.attention_probs_dropout_prob,
                                          scale_query=True, init_std=c.initializer_range, dtype=self.dtype,
                                          param_dtype=self.param_dtype, name="self")(y, mask, deterministic, rotary)
        return EsmResidual(c, self.dtype, self.param_dtype, in_axis="heads", name="output")(heads, x, deterministic)


class EsmLayer(_Module):
    """HF ``EsmLayer``: ``attention``, then ``LayerNorm`` (pre-feed-forward), ``intermediate`` (exact GELU),
    ``output``."""

    @nn.compact
    def __call__(self, x, mask, rotary, deterministic: bool):
        c = self.config
        kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype)
        h = EsmAttention(**kw, name="attention")(x, mask, rotary, deterministic)
        y = self.layer_norm("embed", "LayerNorm")(h)
        y = jax.nn.gelu(Intermediate(**kw, name="intermediate")(y), approximate=False)
        return EsmResidual(**kw, in_axis="mlp", name="output")(y, h, deterministic)


class Intermediate(_Module):
    """HF ``EsmIntermediate``'s ``dense`` (the GELU is applied by the layer)."""

    @nn.compact
    def __call__(self, x):
        return self.dense(self.config.intermediate_size, ("embed", "mlp"), "dense")(x)


class EsmLayerCollection(_Module):
    """``layer/<i>`` for every layer; ``remat`` checkpoints each layer (recomputed in the backward pass)."""

    remat: bool = False

    @nn.compact
    def __call__(self, x, mask, rotary, deterministic: bool):
        layer_cls = nn.remat(EsmLayer, static_argnums=(4,)) if self.remat else EsmLayer
        for i in range(self.config.num_hidden_layers):
            x = layer_cls(self.config, self.dtype, self.param_dtype, name=str(i))(x, mask, rotary, deterministic)
        return x


class EsmEncoder(_Module):
    """HF ``EsmEncoder``: ``layer``, then ``emb_layer_norm_after``."""

    remat: bool = False

    @nn.compact
    def __call__(self, x, mask, rotary, deterministic: bool):
        x = EsmLayerCollection(self.config, self.dtype, self.param_dtype, remat=self.remat,
                               name="layer")(x, mask, rotary, deterministic)
        return self.layer_norm("embed", "emb_layer_norm_after")(x)


class EsmModel(_Module):
    """HF ``EsmModel`` without the pooler (and without the contact head).

    ``apply({'params': params}, input_ids, attention_mask, deterministic=True)`` returns an
    :class:`EsmModelOutput` (``.last_hidden_state`` / ``[0]``: ``[batch, length, hidden_size]``).
    ``attention_mask`` is 1 at real tokens; when omitted it is ``input_ids != pad_token_id`` (fair-esm's rule;
    HF instead masks nothing). ``dtype`` is the computation dtype (parameters stay ``param_dtype``; rotary
    embeddings are computed in float32); ``remat=True`` wraps every layer in ``nn.remat``.
    """

    remat: bool = False

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 deterministic: bool = True) -> EsmModelOutput:
        c = self.config
        if attention_mask is None:
            attention_mask = (input_ids != c.pad_token_id).astype(jnp.int32)
        x = EsmEmbeddings(c, self.dtype, self.param_dtype, name="embeddings")(input_ids, attention_mask)
        rotary = None
        if c.rotary:
            positions = jnp.arange(input_ids.shape[-1])[None]
            rotary = layers.rotary_tables(positions, np.asarray(c.rotary_inv_freq, np.float32))
        x = EsmEncoder(c, self.dtype, self.param_dtype, remat=self.remat, name="encoder")(
            x, layers.padding_mask(attention_mask), rotary, deterministic)
        return EsmModelOutput(x)

    def dummy_inputs(self) -> tuple[jax.Array, ...]:
        """Positional inputs for ``init``/``eval_shape``."""
        return (jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32))
