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
from jax import lax

from smc_jax.models.lstm import LSTM

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


def _additive_energies(query: jax.Array, keys: jax.Array, hidden: int, score_bias: bool) -> jax.Array:
    """``v·tanh(W[q; k])`` for every key: query [B, D], keys [B, K, H] -> [B, K]. Called inside a compact
    method, it creates the caller's ``attn`` and ``score`` layers."""
    energy_in = jnp.concatenate([jnp.repeat(query[:, None], keys.shape[1], axis=1), keys], axis=-1)
    hidden_energy = jnp.tanh(TorchDense(hidden, name="attn")(energy_in))
    return TorchDense(1, use_bias=score_bias, name="score")(hidden_energy)[..., 0]


class TreeAttn(nn.Module):
    """Attention of a goal over the encoder outputs: softmax of ``v·tanh(W[q; h]) + b`` (masked)."""

    hidden: int

    @nn.compact
    def __call__(self, query: jax.Array, encoder_outputs: jax.Array, seq_mask: jax.Array) -> jax.Array:
        """query [B, H], encoder_outputs [B, S, H], seq_mask [B, S] (True = real token) -> weights [B, S]."""
        energies = _additive_energies(query, encoder_outputs, self.hidden, score_bias=True)
        return jax.nn.softmax(jnp.where(seq_mask, energies, NEG_INF), axis=-1)


class Score(nn.Module):
    """Number scores ``v·tanh(W[leaf; e])`` (no bias on v), masked to the example's numbers."""

    hidden: int

    @nn.compact
    def __call__(self, leaf: jax.Array, num_embeddings: jax.Array, num_mask: jax.Array) -> jax.Array:
        """leaf [B, 2H], num_embeddings [B, O, H], num_mask [B, O] (True = a real number) -> [B, O]."""
        scores = _additive_energies(leaf, num_embeddings, self.hidden, score_bias=False)
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
        if self.num_generate:
            generate_weight = self.param(
                "embedding_weight", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, "hidden")),
                (1, self.num_generate, self.hidden))
        else:  # no constants (ASDiv-A): no zero-size parameter, which checkpoints cannot hold
            generate_weight = jnp.zeros((1, 0, self.hidden), goal.dtype)
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


class DecoderStep(nn.Module):
    """One teacher-forced step of the tree decoder on a batch, driven by a host-side schedule
    (:mod:`smc_jax.models.tree_schedule`). Goal vectors and finished sub-trees live in buffers in the carry.
    """

    hidden: int
    num_ops: int
    num_generate: int
    embedding_size: int
    unk_id: int
    dropout: float = 0.5

    @nn.compact
    def __call__(self, carry, step, encoder_outputs, seq_mask, num_encodings, num_mask, targets,
                 deterministic: bool = True):
        goals, subtrees = carry  # [B, 1 + 2L, H], [B, L, H]
        t, node_slot, left_step, merge_op, merge_sub, target, candidates = step
        batch = targets.shape[0]
        rows = jnp.arange(batch)
        goal = jnp.where((node_slot >= 0)[:, None], goals[rows, jnp.maximum(node_slot, 0)], 0.0)
        left = subtrees[rows, jnp.maximum(left_step, 0)]
        predict = Prediction(self.hidden, self.num_ops, self.num_generate, self.dropout, name="predict")
        num_score, op, q, context, num_embeddings = predict(
            goal, left, left_step >= 0, encoder_outputs, seq_mask, num_encodings, num_mask, deterministic)
        logits = jnp.concatenate([op, num_score], axis=-1)
        # A target constant outside the vocabulary (UNK) becomes its best-scoring candidate number.
        best = jnp.argmax(jnp.where(candidates, num_score, -jnp.inf), axis=-1)
        target = jnp.where(target == self.unk_id, self.num_ops + best, target)

        generate = GenerateNode(self.hidden, self.num_ops, self.embedding_size, self.dropout, name="generate")
        is_op = target < self.num_ops
        left_goal, right_goal, _ = generate(q, jnp.where(is_op, target, 0), context, deterministic)
        goals = goals.at[:, 1 + 2 * t].set(left_goal).at[:, 2 + 2 * t].set(right_goal)

        merge = Merge(self.hidden, self.dropout, name="merge")
        op_table = nn.meta.unbox(generate.variables["params"]["embeddings"])
        current = num_embeddings[rows, jnp.clip(target - self.num_ops, 0, num_embeddings.shape[1] - 1)]
        for j in range(merge_op.shape[-1]):  # the cascade of sub-trees this number closes, innermost first
            active = merge_op[:, j] >= 0
            op_token = targets[rows, jnp.maximum(merge_op[:, j], 0)]
            merged = merge(op_table[op_token], subtrees[rows, jnp.maximum(merge_sub[:, j], 0)], current,
                           deterministic)
            current = jnp.where(active[:, None], merged, current)
        subtrees = subtrees.at[:, t].set(jnp.where(is_op[:, None], subtrees[:, t], current))
        return (goals, subtrees), (logits, target)


class GTS(nn.Module):
    """GTS with learned embeddings (the GTS(S) setting): embedding -> 2-layer biLSTM -> tree decoder.

    ``encode`` gives the encoder outputs (both directions summed) and the problem vector: the forward
    output at each problem's last real token plus the backward output at its first. (The original reads the
    forward output at the batch's last position, which is padding, hence 0, for every shorter problem in a
    training batch; evaluation runs one problem at a time and does not see it. Fixed here.)
    ``teacher_forced`` runs the decoder over the target prefix sequences as one ``nn.scan``; ``beam_search``
    decodes like the original's ``evaluate_tree``, batched.
    """

    vocab_size: int
    num_ops: int
    num_generate: int
    unk_id: int
    hidden: int = 512
    embedding_size: int = 768
    num_layers: int = 2
    dropout: float = 0.5

    def setup(self):
        self.embedding = nn.Embed(
            self.vocab_size, self.embedding_size,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")))
        self.encoder = LSTM(self.hidden, self.num_layers, bidirectional=True, dropout=self.dropout)
        self.em_dropout = nn.Dropout(self.dropout)
        self.decoder = nn.scan(
            DecoderStep, variable_broadcast="params", split_rngs={"params": False, "dropout": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            out_axes=1,
        )(self.hidden, self.num_ops, self.num_generate, self.embedding_size, self.unk_id, self.dropout)

    def encode(self, input_ids, lengths, deterministic: bool = True):
        """input_ids [B, S] (0 = padding), lengths [B] -> (encoder_outputs [B, S, H], problem [B, H])."""
        embedded = jnp.where((input_ids == 0)[..., None], 0.0, self.embedding(input_ids))  # padding_idx=0
        outputs = self.encoder(self.em_dropout(embedded, deterministic=deterministic), lengths, deterministic)
        forward, backward = outputs[..., : self.hidden], outputs[..., self.hidden:]
        last = jnp.maximum(lengths - 1, 0)
        problem = forward[jnp.arange(input_ids.shape[0]), last] + backward[:, 0]
        return forward + backward, problem

    def teacher_forced(self, batch: dict, deterministic: bool = True):
        """Logits [B, L, ops + G + N] and the targets they are scored against (UNK resolved) [B, L].

        ``batch``: input_ids, lengths, num_pos [B, N] (padded), num_count [B], targets [B, L], node_slot,
        left_step [B, L], merge_op, merge_sub [B, L, D] (a :class:`TreeSchedule`), unk_candidates
        [B, L, G + N] (bool: the numbers an UNK target may stand for).
        """
        encoder_outputs, problem = self.encode(batch["input_ids"], batch["lengths"], deterministic)
        batch_size, steps = batch["targets"].shape
        rows = jnp.arange(batch_size)[:, None]
        num_encodings = encoder_outputs[rows, batch["num_pos"]]
        num_slots = self.num_generate + batch["num_pos"].shape[1]
        num_mask = jnp.arange(num_slots)[None] < (self.num_generate + batch["num_count"])[:, None]
        seq_mask = jnp.arange(batch["input_ids"].shape[1])[None] < batch["lengths"][:, None]
        goals = jnp.zeros((batch_size, 1 + 2 * steps, self.hidden), problem.dtype).at[:, 0].set(problem)
        subtrees = jnp.zeros((batch_size, steps, self.hidden), problem.dtype)
        swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        xs = (jnp.arange(steps), swap(batch["node_slot"]), swap(batch["left_step"]), swap(batch["merge_op"]),
              swap(batch["merge_sub"]), swap(batch["targets"]), swap(batch["unk_candidates"]))
        _, (logits, targets) = self.decoder((goals, subtrees), xs, encoder_outputs, seq_mask, num_encodings,
                                            num_mask, batch["targets"], deterministic)
        return logits, targets

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
        dec = nn.meta.unbox(self.variables["params"]["decoder"])
        predict = Prediction(self.hidden, self.num_ops, self.num_generate, self.dropout, parent=None)
        generate = GenerateNode(self.hidden, self.num_ops, self.embedding_size, self.dropout, parent=None)
        merge = Merge(self.hidden, self.dropout, parent=None)
        op_table = dec["generate"]["embeddings"]

        batch_size = batch["input_ids"].shape[0]
        rows = jnp.arange(batch_size * k)
        num_slots = self.num_generate + batch["num_pos"].shape[1]
        vocab = self.num_ops + num_slots
        tile = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  [B, ...] -> [B·K, ...], beams of a problem adjacent
        num_encodings = tile(encoder_outputs[jnp.arange(batch_size)[:, None], batch["num_pos"]])
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
            num_score, op, q, context, num_embeddings = predict.apply(
                {"params": dec["predict"]}, goal, s["trees"][rows, top], has_left, encoder_outputs, seq_mask,
                num_encodings, num_mask)
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
            left_goal, right_goal, _ = generate.apply({"params": dec["generate"]}, q, jnp.where(is_op, token, 0),
                                                      context)
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
                merged = merge.apply({"params": dec["merge"]}, op_embedding, sub, current)
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
        logits, targets = self.teacher_forced(batch, deterministic)
        return masked_cross_entropy(logits, targets, batch["target_lengths"])


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, lengths: jax.Array) -> jax.Array:
    """Σ over real target tokens of −log p(target) / Σ lengths (``components/masked_cross_entropy.py``)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    valid = jnp.arange(targets.shape[1])[None] < lengths[:, None]
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.maximum(jnp.sum(lengths), 1)
