"""GTS's tree-decoder cells (Xie & Sun 2019, as in the SVAMP code, SPEC §1.2) in Flax.

Parameter names follow the original modules (``concat_l``, ``concat_r``, ``concat_lg``, ``concat_rg``,
``ops``, ``attn/attn``, ``attn/score``, ``score/attn``, ``score/score``, ``embedding_weight`` in
``Prediction``; ``embeddings``, ``generate_l/r/lg/rg`` in ``GenerateNode``; ``merge``, ``merge_g`` in
``Merge``) so SPEC §2.3's masking rules apply by name. Linear layers use PyTorch's default init; kernels
are [in, out]. The cells work on a whole batch at once; the per-example ``None`` left child of the
original becomes a boolean ``has_left``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

NEG_INF = -1e12  # the original's masked_fill value


def _torch_uniform(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchDense(nn.Module):
    """``nn.Linear`` with PyTorch's default init (U(±1/√fan_in) for kernel and bias), kernel [in, out]."""

    features: int
    use_bias: bool = True
    axes: tuple[str, str] = ("hidden", "mlp")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = _torch_uniform(x.shape[-1])
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), (x.shape[-1], self.features))
        y = x @ kernel
        if self.use_bias:
            y = y + self.param("bias", nn.with_logical_partitioning(init, self.axes[1:]), (self.features,))
        return y


class TreeAttn(nn.Module):
    """Attention of a goal over the encoder outputs: softmax of ``v·tanh(W[q; h]) + b`` (masked)."""

    hidden: int

    @nn.compact
    def __call__(self, query: jax.Array, encoder_outputs: jax.Array, seq_mask: jax.Array) -> jax.Array:
        """query [B, H], encoder_outputs [B, S, H], seq_mask [B, S] (True = real token) -> weights [B, S]."""
        steps = encoder_outputs.shape[1]
        energy_in = jnp.concatenate([jnp.repeat(query[:, None], steps, axis=1), encoder_outputs], axis=-1)
        energies = TorchDense(1, name="score")(jnp.tanh(TorchDense(self.hidden, name="attn")(energy_in)))[..., 0]
        return jax.nn.softmax(jnp.where(seq_mask, energies, NEG_INF), axis=-1)


class Score(nn.Module):
    """Number scores ``v·tanh(W[leaf; e])`` (no bias on v), masked to the example's numbers."""

    hidden: int

    @nn.compact
    def __call__(self, leaf: jax.Array, num_embeddings: jax.Array, num_mask: jax.Array) -> jax.Array:
        """leaf [B, 2H], num_embeddings [B, O, H], num_mask [B, O] (True = a real number) -> [B, O]."""
        count = num_embeddings.shape[1]
        energy_in = jnp.concatenate([jnp.repeat(leaf[:, None], count, axis=1), num_embeddings], axis=-1)
        hidden = jnp.tanh(TorchDense(self.hidden, name="attn")(energy_in))
        scores = TorchDense(1, use_bias=False, name="score")(hidden)[..., 0]
        return jnp.where(num_mask, scores, NEG_INF)


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
        drop = nn.Dropout(self.dropout, deterministic=deterministic)
        generate_weight = self.param(
            "embedding_weight", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, "hidden")),
            (1, self.num_generate, self.hidden))
        c, l_ = drop(goal), drop(left)
        no_left = jnp.tanh(TorchDense(self.hidden, name="concat_l")(c)) * jax.nn.sigmoid(
            TorchDense(self.hidden, name="concat_lg")(c))
        both = jnp.concatenate([l_, c], axis=-1)
        with_left = jnp.tanh(TorchDense(self.hidden, name="concat_r")(both)) * jax.nn.sigmoid(
            TorchDense(self.hidden, name="concat_rg")(both))
        q = jnp.where(has_left[:, None], with_left, no_left)
        q_dropped = drop(q)
        weights = TreeAttn(self.hidden, name="attn")(q_dropped, encoder_outputs, seq_mask)
        context = jnp.einsum("bs,bsh->bh", weights, encoder_outputs)
        batch = goal.shape[0]
        num_embeddings = jnp.concatenate(
            [jnp.broadcast_to(generate_weight, (batch,) + generate_weight.shape[1:]), num_encodings], axis=1)
        leaf = drop(jnp.concatenate([q, context], axis=-1))
        num_score = Score(self.hidden, name="score")(leaf, drop(num_embeddings), num_mask)
        op = TorchDense(self.num_ops, name="ops")(leaf)
        return num_score, op, q, context, num_embeddings


class GenerateNode(nn.Module):
    """Left and right child goals of an operator node, and the operator's embedding."""

    hidden: int
    num_ops: int
    embedding_size: int
    dropout: float = 0.5

    @nn.compact
    def __call__(self, q, op_ids, context, deterministic: bool = True):
        """q, context [B, H]; op_ids [B] -> ``(left goal [B, H], right goal [B, H], op embedding [B, E])``."""
        drop = nn.Dropout(self.dropout, deterministic=deterministic)
        table = self.param("embeddings", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
                           (self.num_ops, self.embedding_size))
        label = table[op_ids]
        x = jnp.concatenate([drop(q), drop(context), drop(label)], axis=-1)

        def gated(name):
            return jnp.tanh(TorchDense(self.hidden, name=name)(x)) * jax.nn.sigmoid(
                TorchDense(self.hidden, name=name + "g")(x))

        return gated("generate_l"), gated("generate_r"), label


class Merge(nn.Module):
    """The embedding of a finished sub-tree: ``tanh(W[op; t1; t2]) ⊙ σ(W_g[op; t1; t2])``."""

    hidden: int
    dropout: float = 0.5

    @nn.compact
    def __call__(self, op_embedding, left_tree, right_tree, deterministic: bool = True):
        drop = nn.Dropout(self.dropout, deterministic=deterministic)
        x = jnp.concatenate([drop(op_embedding), drop(left_tree), drop(right_tree)], axis=-1)
        return jnp.tanh(TorchDense(self.hidden, name="merge")(x)) * jax.nn.sigmoid(
            TorchDense(self.hidden, name="merge_g")(x))
