"""The tree decoder's cells (GTS, Xie & Sun 2019, as in the SVAMP code, SPEC §1.2) in Flax.

Parameter names follow the original modules (``concat_l``, ``concat_r``, ``concat_lg``, ``concat_rg``,
``ops``, ``attn/attn``, ``attn/score``, ``score/attn``, ``score/score``, ``embedding_weight`` in
``Prediction``; ``embeddings``, ``generate_l/r/lg/rg`` in ``GenerateNode``; ``merge``, ``merge_g`` in
``Merge``) so SPEC §2.3's masking rules apply by name. Linear layers use PyTorch's default init; kernels
are [in, out]. The cells work on a whole batch at once; the per-example ``None`` left child of the
original becomes a boolean ``has_left``.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = -1e12  # the original's masked_fill value


def torch_uniform(fan_in: int) -> Callable:
    """PyTorch's default ``nn.Linear`` init: U(±1/√fan_in) (``fan_in`` 0: zeros)."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# ---------------------------------------------------------------------------------------------- the cells
# The decoder cells are pure functions of a parameter dict and a `StepOps`, which decides how a linear layer
# and dropout are applied: plainly (Flax modules, beam search), with dropout masks drawn for a whole batch
# at once, or "tapped" for the deferred weight gradients of the teacher-forced scan (see `make_loss`).


class StepOps:
    """How the cells apply linear layers and dropout.

    - ``drop``: a dropout function (e.g. a Flax ``nn.Dropout``); ``None`` with ``keep=None``: no dropout.
    - ``keep``, ``rate``: a flat boolean keep-mask for all dropout calls of one decoder step, consumed in call
      order (one Bernoulli draw per batch instead of one per call).
    - ``probes``, ``paths``: tap the linear layers whose kernel is in ``paths`` (``id(kernel) -> path``):
      ``"record"`` records each call's output (for its shape); a dict of zero arrays adds ``probes[key]`` to the
      output of call ``key`` and uses the kernel under ``stop_gradient``, recording the call's input, so the
      kernel's gradient over all steps is one matmul of the stacked inputs and probe gradients afterwards.
    """

    def __init__(self, drop: Callable[[jax.Array], jax.Array] | None = None, keep: jax.Array | None = None,
                 rate: float = 0.0, probes: Any = None, paths: dict[int, str] | None = None):
        self._drop, self.keep, self.rate = drop, keep, rate
        self.probes, self.paths = probes, paths or {}
        self.drop_sizes: list[int] = []
        self.tapped: dict[str, jax.Array] = {}
        self._counts: collections.Counter = collections.Counter()

    def drop(self, x: jax.Array) -> jax.Array:
        used = sum(self.drop_sizes)
        self.drop_sizes.append(x.size)
        if self.keep is not None:
            keep = self.keep[used:used + x.size].reshape(x.shape)
            return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)
        return x if self._drop is None else self._drop(x)

    def linear(self, p: dict, x: jax.Array, offset: int = 0, add_bias: bool = True) -> jax.Array:
        """``x @ kernel[offset : offset + in] (+ bias)``: part of a layer over a concatenation, or all of it."""
        kernel = p["kernel"]
        path = self.paths.get(id(kernel))
        if offset or x.shape[-1] != kernel.shape[0]:
            kernel = kernel[offset:offset + x.shape[-1]]
        if self.probes is not None and path is not None:
            key = f"{path}|{offset}|{self._counts[path, offset]}"
            self._counts[path, offset] += 1
            if isinstance(self.probes, str):  # "record"
                y = x @ kernel
                self.tapped[key] = y
            else:
                y = x @ lax.stop_gradient(kernel) + self.probes[key]
                self.tapped[key] = x
        else:
            y = x @ kernel
        bias = p.get("bias")
        return y + bias if bias is not None and add_bias else y


PLAIN = StepOps()


def _hidden(p_predict: dict) -> int:
    return p_predict["concat_l"]["kernel"].shape[1]


def attention_keys(p_predict: dict, encoder_outputs: jax.Array) -> jax.Array:
    """The encoder half of the attention layer, ``W_h h + b`` [B, S, H]: the same at every decoder step."""
    return PLAIN.linear(p_predict["attn"]["attn"], encoder_outputs, offset=_hidden(p_predict))


def number_embeddings(p_predict: dict, num_encodings: jax.Array) -> jax.Array:
    """The generate-number embeddings, then the encoder outputs at the number positions: [B, G + N, H]."""
    if "embedding_weight" not in p_predict:  # no constants (ASDiv-A)
        return num_encodings
    weight = p_predict["embedding_weight"]
    generate = jnp.broadcast_to(weight, (num_encodings.shape[0],) + weight.shape[1:]).astype(num_encodings.dtype)
    return jnp.concatenate([generate, num_encodings], axis=1)


def number_keys(p_predict: dict, num_embeddings: jax.Array) -> jax.Array:
    """The number half of the score layer, ``W_e e + b`` [..., O, H], of (dropped-out) number embeddings."""
    return PLAIN.linear(p_predict["score"]["attn"], num_embeddings, offset=2 * _hidden(p_predict))


def predict(ops: StepOps, p: dict, goal, left, has_left, encoder_outputs, attn_keys, seq_mask, num_keys, num_mask):
    """``Prediction.forward``: goal, left [B, H]; has_left [B]; encoder_outputs, attn_keys [B, S, H];
    seq_mask [B, S]; num_keys [B, O, H]; num_mask [B, O] -> ``(num_score [B, O], op [B, ops], q, context)``."""
    c, l_ = ops.drop(goal), ops.drop(left)
    no_left = jnp.tanh(ops.linear(p["concat_l"], c)) * jax.nn.sigmoid(ops.linear(p["concat_lg"], c))
    both = jnp.concatenate([l_, c], axis=-1)
    with_left = jnp.tanh(ops.linear(p["concat_r"], both)) * jax.nn.sigmoid(ops.linear(p["concat_rg"], both))
    q = jnp.where(has_left[:, None], with_left, no_left)
    # TreeAttn: softmax of v·tanh(W[q; h] + b) + b_v over the real tokens
    query = ops.linear(p["attn"]["attn"], ops.drop(q), add_bias=False)
    energies = ops.linear(p["attn"]["score"], jnp.tanh(query[:, None] + attn_keys))[..., 0]
    weights = jax.nn.softmax(jnp.where(seq_mask, energies, NEG_INF), axis=-1)
    context = jnp.einsum("bs,bsh->bh", weights, encoder_outputs)
    leaf = ops.drop(jnp.concatenate([q, context], axis=-1))
    # Score: v·tanh(W[leaf; e] + b) (no bias on v), masked to the example's numbers
    leaf_part = ops.linear(p["score"]["attn"], leaf, add_bias=False)
    num_score = ops.linear(p["score"]["score"], jnp.tanh(leaf_part[:, None] + num_keys))[..., 0]
    num_score = jnp.where(num_mask, num_score, NEG_INF)
    return num_score, ops.linear(p["ops"], leaf), q, context


def generate(ops: StepOps, p: dict, q, op_ids, context):
    """``GenerateNode.forward``: q, context [B, H]; op_ids [B] -> ``(left goal, right goal [B, H], op
    embedding [B, E])``."""
    label = p["embeddings"][op_ids]
    x = jnp.concatenate([ops.drop(q), ops.drop(context), ops.drop(label)], axis=-1)

    def gated(name):
        return jnp.tanh(ops.linear(p[name], x)) * jax.nn.sigmoid(ops.linear(p[name + "g"], x))

    return gated("generate_l"), gated("generate_r"), label


def merge(ops: StepOps, p: dict, op_embedding, left_tree, right_tree):
    """``Merge.forward``: the embedding of a finished sub-tree, ``tanh(W[op; t1; t2]) ⊙ σ(W_g[op; t1; t2])``."""
    x = jnp.concatenate([ops.drop(op_embedding), ops.drop(left_tree), ops.drop(right_tree)], axis=-1)
    return jnp.tanh(ops.linear(p["merge"], x)) * jax.nn.sigmoid(ops.linear(p["merge_g"], x))


# ---------------------------------------------------------------------------------------------- parameters


class LinearParams(nn.Module):
    """The parameters of ``nn.Linear(in_features, features)`` with PyTorch's init; kernel [in, out], logical
    axes ``axes``; returned as ``{"kernel", "bias"}`` when called."""

    features: int
    in_features: int
    use_bias: bool = True
    axes: tuple[str, str] = ("hidden", "mlp")

    @nn.compact
    def __call__(self) -> dict:
        init = torch_uniform(self.in_features)
        p = {"kernel": self.param("kernel", nn.with_logical_partitioning(init, self.axes),
                                  (self.in_features, self.features))}
        if self.use_bias:
            p["bias"] = self.param("bias", nn.with_logical_partitioning(init, self.axes[1:]), (self.features,))
        return p


class _Layers(nn.Module):
    """A group of linear layers: ``layers`` = ((name, features, in_features, use_bias), ...)."""

    layers: tuple[tuple[str, int, int, bool], ...]

    @nn.compact
    def __call__(self) -> dict:
        return {name: LinearParams(f, i, b, name=name)() for name, f, i, b in self.layers}


def _declare(module: nn.Module, kind: str, hidden: int, num_ops: int, num_generate: int = 0,
             embedding_size: int = 0) -> dict:
    """Declare (inside ``module``'s compact method) the parameters of a cell, named as in the original."""
    h = hidden
    if kind == "predict":
        p = {n: LinearParams(f, i, name=n)() for n, f, i in (
            ("concat_l", h, h), ("concat_lg", h, h), ("concat_r", h, 2 * h), ("concat_rg", h, 2 * h),
            ("ops", num_ops, 2 * h))}
        p["attn"] = _Layers((("attn", h, 2 * h, True), ("score", 1, h, True)), name="attn")()
        p["score"] = _Layers((("attn", h, 3 * h, True), ("score", 1, h, False)), name="score")()
        if num_generate:  # none (ASDiv-A): no zero-size parameter, which checkpoints cannot hold
            p["embedding_weight"] = module.param(
                "embedding_weight", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, "hidden")),
                (1, num_generate, h))
        return p
    inputs = 2 * h + embedding_size
    if kind == "generate":
        p = {n: LinearParams(h, inputs, name=n)() for n in ("generate_l", "generate_lg", "generate_r", "generate_rg")}
        p["embeddings"] = module.param(
            "embeddings", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
            (num_ops, embedding_size))
        return p
    return {n: LinearParams(h, inputs, name=n)() for n in ("merge", "merge_g")}


class DecoderParams(nn.Module):
    """The decoder's parameters, returned when called (declared at init): ``kind='decoder'`` gives the
    ``predict``, ``generate`` and ``merge`` groups (the original's ``Prediction``, ``GenerateNode`` and
    ``Merge``), each declared by a ``DecoderParams`` of that ``kind``."""

    hidden: int
    num_ops: int
    num_generate: int
    embedding_size: int
    kind: str = "decoder"

    @nn.compact
    def __call__(self) -> dict:
        if self.kind == "decoder":
            return {kind: DecoderParams(self.hidden, self.num_ops, self.num_generate, self.embedding_size, kind,
                                        name=kind)() for kind in ("predict", "generate", "merge")}
        return _declare(self, self.kind, self.hidden, self.num_ops, self.num_generate, self.embedding_size)


# The cells as Flax modules (one call = one decoder step on a batch), for tests and standalone use.


class Prediction(nn.Module):
    """Goal vector, context, operator logits and number scores for the goal being expanded."""

    hidden: int
    num_ops: int
    num_generate: int  # constants that are "generate numbers"
    dropout: float = 0.5

    @nn.compact
    def __call__(self, goal, left, has_left, encoder_outputs, seq_mask, num_encodings, num_mask,
                 deterministic: bool = True):
        """goal, left [B, H]; has_left [B]; encoder_outputs [B, S, H]; seq_mask [B, S]; num_encodings
        [B, N, H] (encoder outputs at the number positions); num_mask [B, G + N].

        Returns ``(num_score [B, G+N], op [B, num_ops], q [B, H], context [B, H], num_embeddings [B, G+N, H])``.
        """
        p = _declare(self, "predict", self.hidden, self.num_ops, self.num_generate)
        drop = nn.Dropout(self.dropout, deterministic=deterministic)
        ops = StepOps(drop=drop)
        embeddings = number_embeddings(p, num_encodings)
        num_keys = number_keys(p, drop(embeddings))
        num_score, op, q, context = predict(ops, p, goal, left, has_left, encoder_outputs,
                                            attention_keys(p, encoder_outputs), seq_mask, num_keys, num_mask)
        return num_score, op, q, context, embeddings


class GenerateNode(nn.Module):
    """Left and right child goals of an operator node, and the operator's embedding."""

    hidden: int
    num_ops: int
    embedding_size: int
    dropout: float = 0.5

    @nn.compact
    def __call__(self, q, op_ids, context, deterministic: bool = True):
        """q, context [B, H]; op_ids [B] -> ``(left goal [B, H], right goal [B, H], op embedding [B, E])``."""
        p = _declare(self, "generate", self.hidden, self.num_ops, embedding_size=self.embedding_size)
        return generate(StepOps(drop=nn.Dropout(self.dropout, deterministic=deterministic)), p, q, op_ids, context)


class Merge(nn.Module):
    """The embedding of a finished sub-tree: ``tanh(W[op; t1; t2]) ⊙ σ(W_g[op; t1; t2])``."""

    hidden: int
    dropout: float = 0.5

    @nn.compact
    def __call__(self, op_embedding, left_tree, right_tree, deterministic: bool = True):
        p = _declare(self, "merge", self.hidden, 0, embedding_size=op_embedding.shape[-1])
        return merge(StepOps(drop=nn.Dropout(self.dropout, deterministic=deterministic)), p, op_embedding,
                     left_tree, right_tree)
