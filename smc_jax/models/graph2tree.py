"""Graph2Tree (Zhang et al. 2020, as SMC-Bench runs it: ``spec/graph2tree.md`` §2): GTS's embedding and biLSTM,
a graph module over the biLSTM outputs, and the same tree decoder (:mod:`smc_jax.models.tree_decoder`).

The graph module (the original's ``Graph_Module(H, H, H)``) runs four two-layer GCN heads, on G1, G1, G4, G4
(the batch's ``graph`` [B, 2, L, L]: greater-number and attribute-between graphs, unnormalised 0/1 with
self-loops on real tokens only), head k: ``Y_k = A_k · (dropout(relu(A_k · X W1_k + b1_k)) W2_k) + b2_k``;
concatenates them (H/4 features each), applies the original's LayerNorm (unbiased std, eps added to the std)
with a residual to the biLSTM output, then a position-wise feed-forward with its own residual. The four heads
start identical (the original deep-copies one GCN) and draw their dropout masks independently. The problem
vector is taken before the graph module, so it does not see the graphs.

Parameter names are the original's: ``gcn/graph/{0..3}/gc1`` and ``gc2`` (``weight`` [in, out] as stored,
``bias``; U(±1/√out)), ``gcn/feed_foward/w_1``, ``w_2`` (``nn.Linear``: ``kernel`` [in, out], ``bias``),
``gcn/norm/a_2``, ``b_2``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from smc_jax.models import layers
from smc_jax.models.gts import GTS
from smc_jax.models.tree_decoder import LinearParams, torch_uniform

HEAD_GRAPHS = (0, 0, 1, 1)  # head k reads graph HEAD_GRAPHS[k] of the batch's [G1, G4]: four heads


def _copy_of(value: jax.Array | None, init):
    """``init``, or (for heads 1-3) a copy of head 0's value: the original's ``clones`` deep-copies one GCN."""
    return init if value is None else (lambda key, shape, dtype=jnp.float32: jnp.asarray(value, dtype))


class GraphConvolution(nn.Module):
    """The parameters of one ``GraphConvolution(in_features, features)``: ``weight`` [in, out] and ``bias``, both
    U(±1/√features) (the original's bound uses the output size); ``like``: values to copy instead of drawing."""

    in_features: int
    features: int
    axes: tuple[str, str] = ("hidden", "mlp")

    @nn.compact
    def __call__(self, like: dict | None = None) -> dict:
        init = torch_uniform(self.features)
        like = like or {}
        weight = self.param("weight", nn.with_logical_partitioning(_copy_of(like.get("weight"), init), self.axes),
                            (self.in_features, self.features))
        bias = self.param("bias", nn.with_logical_partitioning(_copy_of(like.get("bias"), init), self.axes[1:]),
                          (self.features,))
        return {"weight": weight, "bias": bias}


class _Head(nn.Module):
    """One head's ``gc1`` and ``gc2`` under the head's own name (``graph/{k}``)."""

    hidden: int
    d_k: int

    @nn.compact
    def __call__(self, like: dict | None = None) -> dict:
        like = like or {}
        return {"gc1": GraphConvolution(self.hidden, self.hidden, ("hidden", "mlp"), name="gc1")(like.get("gc1")),
                "gc2": GraphConvolution(self.hidden, self.d_k, ("mlp", "hidden"), name="gc2")(like.get("gc2"))}


class _Graph(nn.Module):
    """``graph/{0..3}``: the heads, head 0 drawn and heads 1-3 initialised as copies of it."""

    hidden: int

    @nn.compact
    def __call__(self) -> list[dict]:
        d_k = self.hidden // len(HEAD_GRAPHS)
        first = _Head(self.hidden, d_k, name="0")()
        return [first] + [_Head(self.hidden, d_k, name=str(k))(first) for k in range(1, len(HEAD_GRAPHS))]


class _Norm(nn.Module):
    """The original's ``LayerNorm`` parameters: ``a_2`` (ones) and ``b_2`` (zeros)."""

    features: int

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        a_2 = self.param("a_2", nn.with_logical_partitioning(nn.initializers.ones, ("hidden",)), (self.features,))
        b_2 = self.param("b_2", nn.with_logical_partitioning(nn.initializers.zeros, ("hidden",)), (self.features,))
        return a_2, b_2


class _FeedForward(nn.Module):
    """``PositionwiseFeedForward(H, H, H)``'s parameters: ``w_1``, ``w_2`` (``nn.Linear``, PyTorch init)."""

    hidden: int

    @nn.compact
    def __call__(self) -> dict:
        h = self.hidden
        return {"w_1": LinearParams(h, h, axes=("hidden", "mlp"), name="w_1")(),
                "w_2": LinearParams(h, h, axes=("mlp", "hidden"), name="w_2")()}


def layer_norm(x: jax.Array, a_2: jax.Array, b_2: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``a_2 · (x − mean) / (std + eps) + b_2`` over the last axis, std unbiased (N − 1), eps on the std."""
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.sum(centred * centred, axis=-1, keepdims=True) / (x.shape[-1] - 1)
    positive = var > 0  # sqrt's gradient at 0 is infinite: take it only where the variance is positive
    std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
    return a_2 * centred / (std + eps) + b_2


class GraphModule(nn.Module):
    """The original's ``Graph_Module(H, H, H)``: ``x`` [B, L, H] (the biLSTM outputs) and ``graph`` [B, 2, L, L]
    -> [B, L, H]. ``dropout`` (0.3 in the original, not its ``-dropout``) applies inside each GCN head and in
    the feed-forward; its keep-masks are sown as ``intermediates/keep_head_{k}`` and ``keep_feed_foward`` (kept
    only when that collection is mutable)."""

    hidden: int
    dropout: float = 0.3

    def _keep(self, shape: tuple[int, ...]) -> jax.Array:
        """A fresh dropout keep-mask (its own draw, :func:`~smc_jax.models.layers.rbg_bernoulli`)."""
        return layers.rbg_bernoulli(self.make_rng("dropout"), 1.0 - self.dropout, shape)

    def _dropout(self, x: jax.Array, keep: jax.Array) -> jax.Array:
        return jnp.where(keep, x / (1.0 - self.dropout), 0.0).astype(x.dtype)

    @nn.compact
    def __call__(self, x: jax.Array, graph: jax.Array, deterministic: bool = True,
                 positions: jax.Array | None = None) -> jax.Array:
        """``positions`` [P] (optional): the flat indices ``b * L + t`` of the real tokens, padded with ``B * L``.
        With them the position-wise layers (the graph convolutions' weights, the norm, the feed-forward) run on
        those rows only and the output is 0 at padding; the real rows are the same (``x`` is 0 at padding, and
        a padded position never feeds a real one)."""
        if self.hidden % len(HEAD_GRAPHS):
            raise ValueError(f"Graph2Tree's hidden size must be a multiple of its {len(HEAD_GRAPHS)} GCN heads, "
                             f"got {self.hidden}")
        heads = _Graph(self.hidden, name="graph")()
        ffn = _FeedForward(self.hidden, name="feed_foward")()
        a_2, b_2 = _Norm(self.hidden, name="norm")()
        drop = not deterministic and self.dropout > 0
        (batch, length, hidden), n_heads = x.shape, len(heads)
        n = batch * length

        def take(v):  # [B, L, ...] -> rows [N or P, ...]
            rows = v.reshape((n,) + v.shape[2:])
            return rows if positions is None else jnp.take(rows, positions, axis=0, mode="fill", fill_value=0)

        def put(rows, *shape):  # rows -> [B, L, *shape] (0 where no row)
            if positions is not None:
                rows = jnp.zeros((n,) + rows.shape[1:], rows.dtype).at[positions].set(rows, mode="drop")
            return rows.reshape((batch, length) + shape)

        adjacency = graph.astype(x.dtype)  # [B, 2, L, L]: heads 2g and 2g + 1 read graph g
        stacked = lambda layer, leaf: jnp.stack([h[layer][leaf] for h in heads])  # noqa: E731  [4, ...]
        # the original's GCN per head (gc1, relu, dropout, gc2), the four heads in one matmul per step
        rows = take(x)
        support = put(rows @ jnp.concatenate([h["gc1"]["weight"] for h in heads], axis=1), 2, n_heads // 2, hidden)
        u = jnp.einsum("bgij,bjgkh->bigkh", adjacency, support).reshape(batch, length, n_heads, hidden)
        u = jax.nn.relu(u + stacked("gc1", "bias"))
        if drop:  # one draw for the four heads: each its own elements
            keep = self._keep((batch, length, n_heads, hidden))
            for k in range(n_heads):
                self.sow("intermediates", f"keep_head_{k}", keep[:, :, k])
            u = self._dropout(u, keep)
        support = put(jnp.einsum("pkh,khd->pkd", take(u), stacked("gc2", "weight")), 2, n_heads // 2, -1)
        heads_out = jnp.einsum("bgij,bjgkd->bigkd", adjacency, support).reshape(batch, length, n_heads, -1)
        concatenated = (heads_out + stacked("gc2", "bias")).reshape(batch, length, -1)  # head 0's features first
        g = layer_norm(take(concatenated), a_2, b_2) + rows
        inner = jax.nn.relu(g @ ffn["w_1"]["kernel"] + ffn["w_1"]["bias"])
        if drop:
            keep = self._keep((batch, length, hidden))
            self.sow("intermediates", "keep_feed_foward", keep)
            inner = self._dropout(inner, take(keep))
        return put(inner @ ffn["w_2"]["kernel"] + ffn["w_2"]["bias"] + g, hidden)


class Graph2Tree(GTS):
    """Graph2Tree: GTS's embedding (learned or pretrained) and biLSTM, :class:`GraphModule` over the biLSTM
    outputs (``gcn``, dropout ``gcn_dropout``), and the tree decoder. The decoder reads the graph module's
    outputs (attention and number embeddings) and the biLSTM's problem vector. Batches carry ``graph``
    [B, 2, L, L] (:mod:`smc_jax.tasks.arithmetic.graphs`) besides GTS's keys, and may carry ``gcn_positions``
    (the real tokens, :class:`GraphModule`; the task's evaluation chunks do)."""

    gcn_dropout: float = 0.3

    def setup(self):
        super().setup()
        self.gcn = GraphModule(self.hidden, dropout=self.gcn_dropout)

    def encode_batch(self, batch: dict, deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        """The graph module's outputs [B, S, H] and the biLSTM's problem vectors [B, H] (taken before it)."""
        outputs, problem = self.encode(batch["input_ids"], batch["lengths"], deterministic)
        return self.gcn(outputs, batch["graph"], deterministic, batch.get("gcn_positions")), problem
