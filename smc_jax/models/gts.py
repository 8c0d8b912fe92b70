"""GTS's tree-decoder cells (Xie & Sun 2019, as in the SVAMP code, SPEC §1.2) in Flax.

Parameter names follow the original modules (``concat_l``, ``concat_r``, ``concat_lg``, ``concat_rg``,
``ops``, ``attn/attn``, ``attn/score``, ``score/attn``, ``score/score``, ``embedding_weight`` in
``Prediction``; ``embeddings``, ``generate_l/r/lg/rg`` in ``GenerateNode``; ``merge``, ``merge_g`` in
``Merge``) so SPEC §2.3's masking rules apply by name. Linear layers use PyTorch's default init; kernels
are [in, out]. The cells work on a whole batch at once; the per-example ``None`` left child of the
original becomes a boolean ``has_left``.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from smc_jax.models.lstm import LSTM

NEG_INF = -1e12  # the original's masked_fill value


def _torch_uniform(fan_in: int):
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


class _Dense(nn.Module):
    """The parameters of ``nn.Linear(in_features, features)`` with PyTorch's init; kernel [in, out]."""

    features: int
    in_features: int
    use_bias: bool = True
    axes: tuple[str, str] = ("hidden", "mlp")

    @nn.compact
    def __call__(self) -> dict:
        init = _torch_uniform(self.in_features)
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
        return {name: _Dense(f, i, b, name=name)() for name, f, i, b in self.layers}


def _declare(module: nn.Module, kind: str, hidden: int, num_ops: int, num_generate: int = 0,
             embedding_size: int = 0) -> dict:
    """Declare (inside ``module``'s compact method) the parameters of a cell, named as in the original."""
    h = hidden
    if kind == "predict":
        p = {n: _Dense(f, i, name=n)() for n, f, i in (
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
        p = {n: _Dense(h, inputs, name=n)() for n in ("generate_l", "generate_lg", "generate_r", "generate_rg")}
        p["embeddings"] = module.param(
            "embeddings", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
            (num_ops, embedding_size))
        return p
    return {n: _Dense(h, inputs, name=n)() for n in ("merge", "merge_g")}


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


def decoder_step(ops: StepOps, p: dict, carry, step, encoder_outputs, attn_keys, seq_mask, num_embeddings, num_mask,
                 targets, num_ops: int, unk_id: int):
    """One teacher-forced step of the tree decoder on a batch, driven by a host-side schedule
    (:mod:`smc_jax.models.tree_schedule`). Goal vectors and finished sub-trees live in buffers in the carry:
    ``carry = (goals [B, 1 + 2L, H], subtrees [B, L, H])``; ``step`` holds this step's schedule entries and
    number keys. Returns the new carry and ``(logits [B, ops + O], target [B])`` (UNK resolved)."""
    goals, subtrees = carry
    t, node_slot, left_step, merge_op, merge_sub, target, candidates, num_keys = step
    rows = jnp.arange(targets.shape[0])
    goal = jnp.where((node_slot >= 0)[:, None], goals[rows, jnp.maximum(node_slot, 0)], 0.0)
    left = subtrees[rows, jnp.maximum(left_step, 0)]
    num_score, op, q, context = predict(ops, p["predict"], goal, left, left_step >= 0, encoder_outputs, attn_keys,
                                        seq_mask, num_keys, num_mask)
    logits = jnp.concatenate([op, num_score], axis=-1)
    # A target constant outside the vocabulary (UNK) becomes its best-scoring candidate number.
    best = jnp.argmax(jnp.where(candidates, num_score, -jnp.inf), axis=-1)
    target = jnp.where(target == unk_id, num_ops + best, target)

    is_op = target < num_ops
    left_goal, right_goal, _ = generate(ops, p["generate"], q, jnp.where(is_op, target, 0), context)
    goals = goals.at[:, 1 + 2 * t].set(left_goal).at[:, 2 + 2 * t].set(right_goal)

    op_table = p["generate"]["embeddings"]
    current = num_embeddings[rows, jnp.clip(target - num_ops, 0, num_embeddings.shape[1] - 1)]
    for j in range(merge_op.shape[-1]):  # the cascade of sub-trees this number closes, innermost first
        active = merge_op[:, j] >= 0
        op_token = targets[rows, jnp.maximum(merge_op[:, j], 0)]
        merged = merge(ops, p["merge"], op_table[op_token], subtrees[rows, jnp.maximum(merge_sub[:, j], 0)], current)
        current = jnp.where(active[:, None], merged, current)
    subtrees = subtrees.at[:, t].set(jnp.where(is_op[:, None], subtrees[:, t], current))
    return (goals, subtrees), (logits, target)


class GTS(nn.Module):
    """GTS: embedding -> 2-layer biLSTM -> tree decoder. The embedding is learned (the GTS(S) setting) or a
    pretrained BERT/RoBERTa encoder's last hidden state (``pretrained_encoder``, its params under
    ``pretrained_name``, e.g. ``roberta/encoder/layer/0/...``; SPEC §1.2, the paper's RoBERTa-base setting).

    ``encode`` gives the encoder outputs (both directions summed) and the problem vector: the forward
    output at each problem's last real token plus the backward output at its first. (The original reads the
    forward output at the batch's last position, which is padding, hence 0, for every shorter problem in a
    training batch; evaluation runs one problem at a time and does not see it. Fixed here.)
    ``teacher_forced`` runs the decoder over the target prefix sequences as one ``lax.scan``; ``beam_search``
    decodes like the original's ``evaluate_tree``, batched. Train with :func:`make_loss` (the same loss as
    ``__call__``, with the decoder's weight gradients computed outside the scan).
    """

    vocab_size: int
    num_ops: int
    num_generate: int
    unk_id: int
    hidden: int = 512
    embedding_size: int = 768
    num_layers: int = 2
    dropout: float = 0.5
    pretrained_encoder: nn.Module | None = None  # called as (input_ids, attention_mask, deterministic=...)
    pretrained_name: str = "roberta"

    def setup(self):
        if self.pretrained_encoder is None:
            self.embedding = nn.Embed(
                self.vocab_size, self.embedding_size,
                embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")))
        else:  # registered under its family's name, so masking rules read roberta/... or bert/...
            setattr(self, self.pretrained_name, self.pretrained_encoder.clone())
        self.encoder = LSTM(self.hidden, self.num_layers, bidirectional=True, dropout=self.dropout)
        self.em_dropout = nn.Dropout(self.dropout)
        self.decoder = DecoderParams(self.hidden, self.num_ops, self.num_generate, self.embedding_size)

    def encode(self, input_ids, lengths, deterministic: bool = True):
        """input_ids [B, S] (padded past ``lengths``), lengths [B] -> (encoder_outputs [B, S, H], problem [B, H])."""
        if self.pretrained_encoder is None:
            embedded = jnp.where((input_ids == 0)[..., None], 0.0, self.embedding(input_ids))  # padding_idx=0
        else:
            attention_mask = (jnp.arange(input_ids.shape[1])[None] < lengths[:, None]).astype(jnp.int32)
            embedded = getattr(self, self.pretrained_name)(input_ids, attention_mask, deterministic=deterministic)
        outputs = self.encoder(self.em_dropout(embedded, deterministic=deterministic), lengths, deterministic)
        forward, backward = outputs[..., : self.hidden], outputs[..., self.hidden:]
        last = jnp.maximum(lengths - 1, 0)
        problem = forward[jnp.arange(input_ids.shape[0]), last] + backward[:, 0]
        return forward + backward, problem

    def teacher_forced(self, batch: dict, deterministic: bool = True, probes: Any = None):
        """Logits [B, L, ops + G + N], the targets they are scored against (UNK resolved) [B, L], and the
        tapped linear calls (``{}`` unless ``probes``; see :class:`StepOps`), stacked over steps.

        ``batch``: input_ids, lengths, num_pos [B, N] (padded), num_count [B], targets [B, L], node_slot,
        left_step [B, L], merge_op, merge_sub [B, L, D] (a :class:`TreeSchedule`), unk_candidates
        [B, L, G + N] (bool: the numbers an UNK target may stand for). Every dropout mask of the decoder
        steps is drawn in one call.
        """
        p = self.decoder()
        encoder_outputs, problem = self.encode(batch["input_ids"], batch["lengths"], deterministic)
        batch_size, steps = batch["targets"].shape
        rows = jnp.arange(batch_size)[:, None]
        num_slots = self.num_generate + batch["num_pos"].shape[1]
        num_mask = jnp.arange(num_slots)[None] < (self.num_generate + batch["num_count"])[:, None]
        seq_mask = jnp.arange(batch["input_ids"].shape[1])[None] < batch["lengths"][:, None]
        goals = jnp.zeros((batch_size, 1 + 2 * steps, self.hidden), problem.dtype).at[:, 0].set(problem)
        subtrees = jnp.zeros((batch_size, steps, self.hidden), problem.dtype)
        swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        attn_keys = attention_keys(p["predict"], encoder_outputs)
        embeddings = number_embeddings(p["predict"], encoder_outputs[rows, batch["num_pos"]])
        per_step = jnp.broadcast_to(embeddings, (steps,) + embeddings.shape)  # each step its own dropout
        num_keys = number_keys(p["predict"], self.em_dropout(per_step, deterministic=deterministic))
        xs = (jnp.arange(steps), swap(batch["node_slot"]), swap(batch["left_step"]), swap(batch["merge_op"]),
              swap(batch["merge_sub"]), swap(batch["targets"]), swap(batch["unk_candidates"]), num_keys)
        paths = {id(leaf): "/".join(k.key for k in path[:-1])
                 for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0] if path[-1].key == "kernel"}

        def run(ops, carry, step):
            carry, out = decoder_step(ops, p, carry, step, encoder_outputs, attn_keys, seq_mask, embeddings,
                                      num_mask, batch["targets"], self.num_ops, self.unk_id)
            return carry, out + (ops.tapped,)

        keep = None
        if not deterministic and self.dropout > 0:  # how many values one step drops out, then one draw
            dry = StepOps(drop=lambda x: x)
            jax.eval_shape(functools.partial(run, dry), (goals, subtrees), jax.tree.map(lambda x: x[0], xs))
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout, (steps, sum(dry.drop_sizes)))

        stacked = isinstance(probes, dict)  # zero probes stacked over steps; "record" and None apply to all

        def body(carry, inputs):
            step, step_keep, step_probes = inputs
            ops = StepOps(keep=step_keep, rate=self.dropout, probes=step_probes if stacked else probes, paths=paths)
            return run(ops, carry, step)

        _, (logits, targets, tapped) = lax.scan(body, (goals, subtrees), (xs, keep, probes if stacked else None))
        return swap(logits), swap(targets), tapped

    def beam_search(self, batch: dict, beam_size: int = 5, max_length: int = 45) -> dict:
        """The original ``evaluate_tree`` beam search, batched over problems and beams (deterministic).

        ``batch``: input_ids [B, S] (0 = padding), lengths [B], num_pos [B, N] (padded), num_count [B].
        ``beam_size`` and ``max_length`` are static. Each example's (beam × token) candidates are ranked with
        one ``lax.top_k``; a finished beam is its own single candidate. Goal vectors and sub-tree embeddings
        live in per-beam stacks with depth pointers; steps run in a ``lax.while_loop`` that stops at
        ``max_length`` or once every beam is finished. Returns the best beam's ``tokens`` [B, max_length]
        (-1 after its end; ids as in ``teacher_forced``'s logits), ``length`` [B], ``score`` [B] (summed
        log-probability) and ``steps`` [B] (decoder steps the whole batch ran, the same in every row).
        """
        k, steps_max, hidden = beam_size, max_length, self.hidden
        encoder_outputs, problem = self.encode(batch["input_ids"], batch["lengths"], deterministic=True)
        p = self.decoder()
        op_table = p["generate"]["embeddings"]

        batch_size = batch["input_ids"].shape[0]
        rows = jnp.arange(batch_size * k)
        num_slots = self.num_generate + batch["num_pos"].shape[1]
        vocab = self.num_ops + num_slots
        tile = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  [B, ...] -> [B·K, ...], beams of a problem adjacent
        # what every step reads, computed once per problem
        attn_keys = tile(attention_keys(p["predict"], encoder_outputs))
        num_embeddings = number_embeddings(p["predict"], encoder_outputs[jnp.arange(batch_size)[:, None],
                                                                         batch["num_pos"]])
        num_keys = tile(number_keys(p["predict"], num_embeddings))
        num_embeddings = tile(num_embeddings)
        real = tile(self.num_generate + batch["num_count"])[:, None]
        num_mask = jnp.arange(num_slots)[None] < real
        token_ok = jnp.arange(vocab)[None] < self.num_ops + real  # padded number slots are never candidates
        seq_mask = tile(jnp.arange(batch["input_ids"].shape[1])[None] < batch["lengths"][:, None])
        encoder_outputs = tile(encoder_outputs)

        first = rows % k == 0  # at t = 0 only beam 0 exists; the others are dead (score -inf, finished)
        state = dict(
            goals=jnp.zeros((rows.size, steps_max + 1, hidden), problem.dtype).at[:, 0].set(tile(problem)),
            goal_ptr=jnp.ones(rows.size, jnp.int32),  # goal stack depth; the root goal is the problem vector
            trees=jnp.zeros((rows.size, steps_max, hidden), problem.dtype),  # embedding stack: sub-trees ...
            tree_ops=jnp.zeros((rows.size, steps_max), jnp.int32),  # ... or operator ids (non-terminal)
            terminal=jnp.zeros((rows.size, steps_max), bool),
            tree_ptr=jnp.zeros(rows.size, jnp.int32),
            tokens=jnp.full((rows.size, steps_max), -1, jnp.int32),
            length=jnp.zeros(rows.size, jnp.int32),
            finished=~first,
        )
        scores = jnp.where(first, 0.0, -jnp.inf).astype(jnp.float32)

        def top_tree(s):
            top = jnp.maximum(s["tree_ptr"] - 1, 0)
            return top, (s["tree_ptr"] > 0) & s["terminal"][rows, top]

        def step(carry):
            t, s, scores = carry
            top, has_left = top_tree(s)
            goal = s["goals"][rows, jnp.maximum(s["goal_ptr"] - 1, 0)]
            num_score, op, q, context = predict(PLAIN, p["predict"], goal, s["trees"][rows, top], has_left,
                                                encoder_outputs, attn_keys, seq_mask, num_keys, num_mask)
            log_probs = jax.nn.log_softmax(jnp.concatenate([op, num_score], axis=-1).astype(jnp.float32), axis=-1)
            candidates = jnp.where(token_ok, scores[:, None] + log_probs, -jnp.inf)
            carried = jnp.where(jnp.arange(vocab)[None] == 0, scores[:, None], -jnp.inf)
            candidates = jnp.where(s["finished"][:, None], carried, candidates)
            new_scores, best = lax.top_k(candidates.reshape(batch_size, k * vocab), k)
            parent = (best // vocab + jnp.arange(batch_size)[:, None] * k).reshape(-1)
            token = (best % vocab).reshape(-1).astype(jnp.int32)
            new_scores = new_scores.reshape(-1)
            prev = jax.tree.map(lambda x: x[parent], s)  # reorder the beams
            q, context = q[parent], context[parent]
            live = ~prev["finished"] & jnp.isfinite(new_scores)
            is_op = live & (token < self.num_ops)
            is_num = live & (token >= self.num_ops)

            # Operator: pop the goal, push its right then left child goal and the operator (non-terminal).
            goal_ptr = prev["goal_ptr"] - live
            left_goal, right_goal, _ = generate(PLAIN, p["generate"], q, jnp.where(is_op, token, 0), context)
            goals = prev["goals"]
            goals = goals.at[rows, goal_ptr].set(jnp.where(is_op[:, None], right_goal, goals[rows, goal_ptr]))
            goals = goals.at[rows, goal_ptr + 1].set(jnp.where(is_op[:, None], left_goal, goals[rows, goal_ptr + 1]))
            goal_ptr = goal_ptr + 2 * is_op

            # Number: merge with (operator, finished left sub-tree) pairs while a terminal tops the stack.
            def must_merge(ptr):
                return is_num & (ptr >= 2) & prev["terminal"][rows, jnp.maximum(ptr - 1, 0)]

            def merge_once(c):
                current, ptr = c
                active = must_merge(ptr)
                sub = prev["trees"][rows, jnp.maximum(ptr - 1, 0)]
                op_embedding = op_table[prev["tree_ops"][rows, jnp.maximum(ptr - 2, 0)]]
                merged = merge(PLAIN, p["merge"], op_embedding, sub, current)
                return jnp.where(active[:, None], merged, current), ptr - 2 * active

            current = num_embeddings[rows, jnp.clip(token - self.num_ops, 0, num_slots - 1)]
            current, tree_ptr = lax.while_loop(lambda c: jnp.any(must_merge(c[1])), merge_once,
                                               (current, prev["tree_ptr"]))
            keep = lambda x, new, mask: x.at[rows, tree_ptr].set(  # noqa: E731
                jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 2)), new, x[rows, tree_ptr]))
            s = dict(
                goals=goals, goal_ptr=goal_ptr,
                trees=keep(prev["trees"], current, is_num),
                tree_ops=keep(prev["tree_ops"], token, is_op),
                terminal=keep(prev["terminal"], is_num, live),
                tree_ptr=tree_ptr + live,
                tokens=prev["tokens"].at[:, t].set(jnp.where(live, token, prev["tokens"][:, t])),
                length=prev["length"] + live,
                finished=prev["finished"] | ~jnp.isfinite(new_scores) | (live & (goal_ptr == 0)),
            )
            return t + 1, s, new_scores

        def running(carry):
            t, s, _ = carry
            return (t < steps_max) & ~jnp.all(s["finished"])

        t, state, scores = lax.while_loop(running, step, (jnp.int32(0), state, scores))
        best = jnp.arange(batch_size) * k  # top_k sorts each example's beams by score
        return dict(tokens=state["tokens"][best], length=state["length"][best], score=scores[best],
                    steps=jnp.full(batch_size, t, jnp.int32))

    def __call__(self, batch: dict, deterministic: bool = True):
        """The masked cross-entropy of the original: summed over target tokens, divided by their total."""
        logits, targets, _ = self.teacher_forced(batch, deterministic)
        return masked_cross_entropy(logits, targets, batch["target_lengths"])


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, lengths: jax.Array) -> jax.Array:
    """Σ over real target tokens of −log p(target) / Σ lengths (``components/masked_cross_entropy.py``)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    valid = jnp.arange(targets.shape[1])[None] < lengths[:, None]
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.maximum(jnp.sum(lengths), 1)


def make_loss(model: GTS) -> Callable[..., jax.Array]:
    """``loss(params, batch, key=None)``: ``model``'s masked cross-entropy (dropout on when ``key`` is given)
    with a custom gradient that equals autodiff's: the decoder's linear layers run under ``stop_gradient``
    with a zero probe added to each call's output inside the scan, so the scan's transpose yields every
    step's output gradient instead of adding an outer product into each ``[in, out]`` kernel gradient at
    every step; each kernel's gradient is then one matmul of the stacked inputs and probe gradients."""

    def forward(params, batch, key):
        rngs = {} if key is None else {"dropout": key}
        apply = functools.partial(model.apply, method=GTS.teacher_forced, deterministic=key is None, rngs=rngs)
        shapes = jax.eval_shape(lambda p: apply({"params": p}, batch, probes="record")[2], params)
        probes = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def tapped(params, probes):
            logits, targets, inputs = apply({"params": params}, batch, probes=probes)
            return masked_cross_entropy(logits, targets, batch["target_lengths"]), inputs

        loss, vjp, inputs = jax.vjp(tapped, params, probes, has_aux=True)
        return loss, (vjp, inputs)

    @jax.custom_vjp
    def loss(params, batch, key=None):
        return forward(params, batch, key)[0]

    def backward(residuals, g):
        vjp, inputs = residuals
        grads, d_probes = vjp(g)
        decoder = grads["decoder"]
        for name, x in inputs.items():
            path, offset, _ = name.split("|")
            node = functools.reduce(lambda d, k: d[k], path.split("/"), decoder)
            d_out = d_probes[name]
            d_kernel = jnp.einsum("ni,no->io", x.reshape(-1, x.shape[-1]), d_out.reshape(-1, d_out.shape[-1]))
            start = int(offset)
            node["kernel"] = node["kernel"].at[start:start + x.shape[-1]].add(d_kernel)
        return grads, None, None

    loss.defvjp(forward, backward)
    return loss
