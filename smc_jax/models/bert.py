"""BERT and RoBERTa encoders (and their HF heads) in Flax linen, with HuggingFace-Flax parameter names.

One family: RoBERTa is BERT with position ids counted from the padding, its own classification and
masked-LM heads, no pooler under its heads and the prefix ``roberta/`` instead of ``bert/``. The family
follows ``EncoderConfig.model_type``; :mod:`smc_jax.models.roberta` re-exports the RoBERTa names.

Parameter paths are those of the old ``FlaxBertModel``/``FlaxRobertaModel`` (kernels are the transposes of
PyTorch's ``Linear.weight``; every layer has its own path ``encoder/layer/<i>``, no ``nn.scan``)::

    [bert|roberta/]embeddings/{word,position,token_type}_embeddings/embedding
    [bert|roberta/]embeddings/LayerNorm/{scale,bias}
    [bert|roberta/]encoder/layer/<i>/attention/self/{query,key,value}/{kernel,bias}
    [bert|roberta/]encoder/layer/<i>/attention/output/{dense,LayerNorm}/...
    [bert|roberta/]encoder/layer/<i>/intermediate/dense/...
    [bert|roberta/]encoder/layer/<i>/output/{dense,LayerNorm}/...
    [bert|roberta/]pooler/dense/...                              (when the model has a pooler)
    classifier/{dense,out_proj}/...                              RoBERTa sequence classification / ranking
    classifier/{kernel,bias}                                     BERT sequence classification / multiple choice
    lm_head/{dense,layer_norm}/..., lm_head/bias                 RoBERTa masked LM (decoder tied to embeddings)
    cls/predictions/transform/{dense,LayerNorm}/..., cls/predictions/bias    BERT masked LM (tied decoder)

Logical axis names (``nn.with_logical_partitioning``; the ``partitioning`` rules map them to mesh axes):

    word embeddings ('vocab', 'embed'); position and token-type embeddings (None, 'embed')
    query/key/value kernel ('embed', 'heads'), bias ('heads',)  -- 'heads' is the joined heads x head_dim axis
    attention output kernel ('heads', 'embed'); intermediate ('embed', 'mlp'); output ('mlp', 'embed')
    every LayerNorm and every bias on the model width ('embed',); intermediate bias ('mlp',)
    pooler / classifier dense / LM-head transform kernel ('embed', 'hidden'), bias and LayerNorm ('hidden',)
    label projections ('hidden', None); MLM output bias ('vocab',); an untied MLM decoder ('hidden', 'vocab')

Self-attention and the layer factories come from :mod:`smc_jax.models.layers`: attention runs through
``jax.nn.dot_product_attention`` (padding as a boolean mask), or explicitly (float32 softmax, dropout on the
probabilities, as HF does) when attention dropout is active (``deterministic=False`` and
``attention_probs_dropout_prob > 0``). ``dtype`` is the computation dtype; parameters stay ``param_dtype``
(float32). ``remat=True`` wraps every layer in ``nn.remat``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from smc_jax.models import layers

Dtype = Any

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
SUPPORTED_MODEL_TYPES = ("bert", "roberta")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The architecture fields of a HF ``BertConfig``/``RobertaConfig`` (hashable, a Flax module attribute)."""

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    classifier_dropout: float | None = None
    num_labels: int = 2
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not a BERT-family type {SUPPORTED_MODEL_TYPES}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} unsupported; supported: {sorted(_ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")

    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | Any, **overrides: Any) -> EncoderConfig:
        """Read the fields from a HF config object or its ``config.json`` dict (unknown keys are ignored)."""
        raw = dict(config if isinstance(config, Mapping) else config.to_dict())
        kind = raw.get("position_embedding_type") or "absolute"
        if kind != "absolute":
            raise ValueError(f"position_embedding_type {kind!r} unsupported (only 'absolute')")
        if raw.get("num_labels") is None and raw.get("id2label"):
            raw["num_labels"] = len(raw["id2label"])
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: raw[k] for k in fields if k in raw and (raw[k] is not None or k == "classifier_dropout")}
        return cls(**{**values, **overrides})

    @property
    def prefix(self) -> str:
        """Name of the base encoder inside head models (HF's ``base_model_prefix``)."""
        return self.model_type

    @property
    def head_dropout(self) -> float:
        return self.hidden_dropout_prob if self.classifier_dropout is None else self.classifier_dropout


def _normal(config: EncoderConfig, axes: tuple[str | None, ...]):
    return layers.normal_init(config.initializer_range, axes)


roberta_position_ids = layers.position_ids_from_padding


class _Module(layers.ConfiguredModule):
    """Shared fields and the layer factories (every kernel, bias, scale and embedding gets logical axes)."""

    config: EncoderConfig

    def dropout(self, x: jax.Array, rate: float, deterministic: bool) -> jax.Array:
        return nn.Dropout(rate)(x, deterministic=deterministic)


class Embeddings(_Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        c = self.config
        if c.model_type == "roberta":
            positions = roberta_position_ids(input_ids, c.pad_token_id)
        else:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        x = (self.embed(c.vocab_size, ("vocab", "embed"), "word_embeddings")(input_ids)
             + self.embed(c.type_vocab_size, (None, "embed"), "token_type_embeddings")(token_type_ids)
             + self.embed(c.max_position_embeddings, (None, "embed"), "position_embeddings")(positions))
        x = self.layer_norm("embed", "LayerNorm")(x)
        return self.dropout(x, c.hidden_dropout_prob, deterministic)


class AddNorm(_Module):
    """HF ``BertSelfOutput``/``BertOutput``: dense, dropout, LayerNorm(x + residual)."""

    in_axis: str = "heads"

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        c = self.config
        x = self.dense(c.hidden_size, (self.in_axis, "embed"), "dense")(x)
        x = self.dropout(x, c.hidden_dropout_prob, deterministic)
        return self.layer_norm("embed", "LayerNorm")(x + residual)


class Attention(_Module):
    """HF ``BertAttention``: ``self`` (:class:`~smc_jax.models.layers.MultiHeadAttention`), ``output``."""

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        c = self.config
        kw = dict(config=c, dtype=self.dtype, param_dtype=self.param_dtype)
        heads = layers.MultiHeadAttention(c.num_attention_heads, c.hidden_size, c.attention_probs_dropout_prob,
                                          init_std=c.initializer_range, dtype=self.dtype,
                                          param_dtype=self.param_dtype, name="self")(
            x, layers.padding_mask(mask), deterministic)
        return AddNorm(**kw, in_axis="heads", name="output")(heads, x, deterministic)


class Intermediate(_Module):
    @nn.compact
    def __call__(self, x):
        c = self.config
        return _ACTIVATIONS[c.hidden_act](self.dense(c.intermediate_size, ("embed", "mlp"), "dense")(x))


class Layer(_Module):
    """One transformer layer: ``attention``, ``intermediate``, ``output`` (post-LayerNorm, as BERT)."""

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        x = Attention(**kw, name="attention")(x, mask, deterministic)
        h = Intermediate(**kw, name="intermediate")(x)
        return AddNorm(**kw, in_axis="mlp", name="output")(h, x, deterministic)


class LayerCollection(_Module):
    """``layer/<i>`` for every layer; ``remat`` checkpoints each layer (recomputed in the backward pass)."""

    remat: bool = False

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        layer_cls = nn.remat(Layer, static_argnums=(3,)) if self.remat else Layer
        for i in range(self.config.num_hidden_layers):
            x = layer_cls(self.config, self.dtype, self.param_dtype, name=str(i))(x, mask, deterministic)
        return x


class Encoder(_Module):
    remat: bool = False

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        return LayerCollection(self.config, self.dtype, self.param_dtype, remat=self.remat,
                               name="layer")(x, mask, deterministic)


class Pooler(_Module):
    """Dense + tanh on the first token."""

    @nn.compact
    def __call__(self, hidden):
        return jnp.tanh(self.dense(self.config.hidden_size, ("embed", "hidden"), "dense")(hidden[:, 0]))


class BertModel(_Module):
    """The base encoder (HF ``BertModel``/``RobertaModel``, family by ``config.model_type``).

    ``apply(variables, input_ids, attention_mask, deterministic=True)`` returns the final hidden states
    [batch, length, hidden] (plus the pooled output with ``return_pooled=True``). ``attention_mask`` is 1 at
    real tokens (default: all real); ``token_type_ids`` default to zeros. With ``add_pooling_layer`` the pooler
    parameters exist (and are computed) even when the pooled output is not returned.
    """

    remat: bool = False
    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, *, token_type_ids=None, deterministic: bool = True,
                 return_pooled: bool = False):
        kw = dict(config=self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if token_type_ids is None:
            token_type_ids = jnp.zeros(input_ids.shape, jnp.int32)
        x = Embeddings(**kw, name="embeddings")(input_ids, token_type_ids, deterministic)
        x = Encoder(**kw, remat=self.remat, name="encoder")(x, attention_mask, deterministic)
        pooled = Pooler(**kw, name="pooler")(x) if self.add_pooling_layer else None
        if return_pooled:
            if pooled is None:
                raise ValueError("return_pooled=True needs add_pooling_layer=True")
            return x, pooled
        return x

    def dummy_inputs(self) -> tuple[jax.Array, ...]:
        """Positional inputs for ``init``/``eval_shape``."""
        return (jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32))


class RobertaModel(BertModel):
    """:class:`BertModel` with a RoBERTa config (positions from the padding)."""


class _HeadModel(_Module):
    """A head over the base encoder stored under ``config.prefix`` (``bert``/``roberta``)."""

    remat: bool = False
    add_pooling_layer: bool = False

    def encode(self, input_ids, attention_mask, token_type_ids, deterministic):
        """``(encoder, hidden states, pooled output or None)``."""
        encoder = BertModel(self.config, self.dtype, self.param_dtype, remat=self.remat,
                            add_pooling_layer=self.add_pooling_layer, name=self.config.prefix)
        out = encoder(input_ids, attention_mask, token_type_ids=token_type_ids, deterministic=deterministic,
                      return_pooled=self.add_pooling_layer)
        return (encoder, *out) if self.add_pooling_layer else (encoder, out, None)

    def pooled(self, pooled):
        if pooled is None:
            raise ValueError(f"{type(self).__name__} needs add_pooling_layer=True")
        return pooled

    def dummy_inputs(self) -> tuple[jax.Array, ...]:
        return (jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32))


class RobertaClassificationHead(_Module):
    """HF ``RobertaClassificationHead`` (= fairseq's classification head): on the ``<s>`` features, dropout,
    ``dense``, tanh, dropout, ``out_proj``."""

    num_labels: int = 1

    @nn.compact
    def __call__(self, hidden, deterministic: bool):
        rate = self.config.head_dropout
        x = self.dropout(hidden[:, 0], rate, deterministic)
        x = jnp.tanh(self.dense(self.config.hidden_size, ("embed", "hidden"), "dense")(x))
        x = self.dropout(x, rate, deterministic)
        return self.dense(self.num_labels, ("hidden", None), "out_proj")(x)


def _flatten_choices(*arrays):
    return tuple(None if a is None else a.reshape(-1, a.shape[-1]) for a in arrays)


class RobertaForSequenceClassification(_HeadModel):
    """HF ``RobertaForSequenceClassification``: ``[batch, length]`` -> logits ``[batch, num_labels]``."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, *, token_type_ids=None, deterministic: bool = True):
        _, hidden, _ = self.encode(input_ids, attention_mask, token_type_ids, deterministic)
        return RobertaClassificationHead(self.config, self.dtype, self.param_dtype, self.config.num_labels,
                                         name="classifier")(hidden, deterministic)


class RobertaForMultipleChoice(_HeadModel):
    """fairseq's sentence-ranking model: the classification head with one output scores every choice
    (= HF ``RobertaForSequenceClassification(num_labels=1)`` per choice; not HF's ``RobertaForMultipleChoice``,
    which adds a pooler). ``[batch, choices, length]`` -> logits ``[batch, choices]``."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, *, token_type_ids=None, deterministic: bool = True):
        flat = _flatten_choices(input_ids, attention_mask, token_type_ids)
        _, hidden, _ = self.encode(*flat, deterministic)
        scores = RobertaClassificationHead(self.config, self.dtype, self.param_dtype, 1,
                                           name="classifier")(hidden, deterministic)
        return scores.reshape(input_ids.shape[:-1])

    def dummy_inputs(self) -> tuple[jax.Array, ...]:
        return (jnp.zeros((1, 1, 2), jnp.int32), jnp.ones((1, 1, 2), jnp.int32))


class BertForSequenceClassification(_HeadModel):
    """HF ``BertForSequenceClassification``: pooler, dropout, ``classifier`` -> ``[batch, num_labels]``."""

    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, *, token_type_ids=None, deterministic: bool = True):
        _, _, pooled = self.encode(input_ids, attention_mask, token_type_ids, deterministic)
        pooled = self.dropout(self.pooled(pooled), self.config.head_dropout, deterministic)
        return self.dense(self.config.num_labels, ("hidden", None), "classifier")(pooled)


class BertForMultipleChoice(_HeadModel):
    """HF ``BertForMultipleChoice``: ``[batch, choices, length]`` -> logits ``[batch, choices]``."""

    add_pooling_layer: bool = True

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, *, token_type_ids=None, deterministic: bool = True):
        flat = _flatten_choices(input_ids, attention_mask, token_type_ids)
        _, _, pooled = self.encode(*flat, deterministic)
        pooled = self.dropout(self.pooled(pooled), self.config.head_dropout, deterministic)
        return self.dense(1, ("hidden", None), "classifier")(pooled).reshape(input_ids.shape[:-1])

    def dummy_inputs(self) -> tuple[jax.Array, ...]:
        return (jnp.zeros((1, 1, 2), jnp.int32), jnp.ones((1, 1, 2), jnp.int32))


class _MaskedLM(_HeadModel):
    """Masked-LM plumbing: the word-embedding table the decoder is tied to (None when untied)."""

    def tied_table(self, encoder: nn.Module) -> jax.Array | None:
        if not self.config.tie_word_embeddings:
            return None
        return nn.meta.unbox(encoder.variables["params"]["embeddings"]["word_embeddings"]["embedding"])


class _Decoder(_Module):
    """Vocabulary projection: the tied embedding table (or an own ``decoder`` kernel) plus ``bias``."""

    def decode(self, x, table):
        c = self.config
        if table is None:
            logits = nn.Dense(c.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                              kernel_init=_normal(c, ("hidden", "vocab")), name="decoder")(x)
        else:
            logits = x @ jnp.asarray(table, self.dtype).T
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                          (c.vocab_size,), self.param_dtype)
        return logits + jnp.asarray(bias, self.dtype)


class RobertaLMHead(_Decoder):
    """HF ``RobertaLMHead``: ``dense``, gelu, ``layer_norm``, decoder + ``bias``."""

    @nn.compact
    def __call__(self, x, table):
        x = jax.nn.gelu(self.dense(self.config.hidden_size, ("embed", "hidden"), "dense")(x), approximate=False)
        return self.decode(self.layer_norm("hidden", "layer_norm")(x), table)


class BertPredictionHeadTransform(_Module):
    """HF ``BertPredictionHeadTransform``: ``dense``, ``hidden_act``, ``LayerNorm``."""

    @nn.compact
    def __call__(self, x):
        x = self.dense(self.config.hidden_size, ("embed", "hidden"), "dense")(x)
        return self.layer_norm("hidden", "LayerNorm")(_ACTIVATIONS[self.config.hidden_act](x))


class BertLMPredictionHead(_Decoder):
    """HF ``BertLMPredictionHead``: ``transform``, decoder + ``bias``."""

    @nn.compact
    def __call__(self, x, table):
        x = BertPredictionHeadTransform(self.config, self.dtype, self.param_dtype, name="transform")(x)
        return self.decode(x, table)


class BertOnlyMLMHead(_Module):
    """HF ``BertOnlyMLMHead`` (the ``cls`` module): ``predictions``."""

    @nn.compact
    def __call__(self, x, table):
        return BertLMPredictionHead(self.config, self.dtype, self.param_dtype, name="predictions")(x, table)


class RobertaForMaskedLM(_MaskedLM):
    """HF ``RobertaForMaskedLM``: ``[batch, length]`` -> logits ``[batch, length, vocab]``."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, *, token_type_ids=None, deterministic: bool = True):
        encoder, hidden, _ = self.encode(input_ids, attention_mask, token_type_ids, deterministic)
        return RobertaLMHead(self.config, self.dtype, self.param_dtype, name="lm_head")(
            hidden, self.tied_table(encoder))


class BertForMaskedLM(_MaskedLM):
    """HF ``BertForMaskedLM``: ``[batch, length]`` -> logits ``[batch, length, vocab]``."""

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, *, token_type_ids=None, deterministic: bool = True):
        encoder, hidden, _ = self.encode(input_ids, attention_mask, token_type_ids, deterministic)
        return BertOnlyMLMHead(self.config, self.dtype, self.param_dtype, name="cls")(
            hidden, self.tied_table(encoder))


HEADS = (None, "multiple_choice", "sequence_classification", "masked_lm")
_CLASSES: dict[tuple[str, str | None], type[_Module]] = {
    ("bert", None): BertModel,
    ("bert", "multiple_choice"): BertForMultipleChoice,
    ("bert", "sequence_classification"): BertForSequenceClassification,
    ("bert", "masked_lm"): BertForMaskedLM,
    ("roberta", None): RobertaModel,
    ("roberta", "multiple_choice"): RobertaForMultipleChoice,
    ("roberta", "sequence_classification"): RobertaForSequenceClassification,
    ("roberta", "masked_lm"): RobertaForMaskedLM,
}


def build(config: EncoderConfig, head: str | None = None, dtype: Dtype = jnp.float32, **module_kwargs: Any
          ) -> nn.Module:
    """The module for ``config.model_type`` and ``head`` (one of :data:`HEADS`)."""
    if head not in HEADS:
        raise ValueError(f"head {head!r} unknown; choose one of {HEADS}")
    return _CLASSES[config.model_type, head](config=config, dtype=dtype, **module_kwargs)
