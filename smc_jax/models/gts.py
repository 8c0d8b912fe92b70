"""GTS's tree-decoder cells (Xie & Sun 2019, as in the SVAMP code, SPEC §1.2) in Flax.

Parameter names follow the original modules (``concat_l``, ``concat_r``, ``concat_lg``, ``concat_rg``,
``ops``, ``attn/attn``, ``attn/score``, ``score/attn``, ``score/score``, ``embedding_weight`` in
``Prediction``; ``embeddings``, ``generate_l/r/lg/rg`` in ``GenerateNode``; ``merge``, ``merge_g`` in
``Merge``) so SPEC §2.3's masking rules apply by name. Linear layers use PyTorch's default init; kernels
are [in, out]. The cells work on a whole batch at once; the per-example ``None`` left child of the
original becomes a boolean ``has_left``.
"""

from __future__ import annotations

import functools
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
    """``nn.Linear`` with PyTorch's default init (U(±1/√fan_in) for kernel and bias), kernel [in, out].

    ``in_features`` fixes the kernel's input size up front, so a layer over a concatenation ``[a; b]`` can be
    applied part by part: ``layer(b, offset=len(a))`` multiplies ``b`` by its rows of the kernel (``add_bias``
    decides whether this part carries the bias), and ``layer(a, add_bias=False) + layer(b, offset=len(a))``
    equals ``layer([a; b])``. The attention layers use this to project the encoder side once per sequence.
    """

    features: int
    use_bias: bool = True
    axes: tuple[str, str] = ("hidden", "mlp")
    in_features: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, offset: int = 0, add_bias: bool = True) -> jax.Array:
        fan_in = self.in_features or x.shape[-1]
        init = _torch_uniform(fan_in)
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), (fan_in, self.features))
        bias = self.param("bias", nn.with_logical_partitioning(init, self.axes[1:]), (self.features,)) \
            if self.use_bias else None
        if offset or x.shape[-1] != fan_in:
            kernel = kernel[offset:offset + x.shape[-1]]
        y = x @ kernel
        return y + bias if bias is not None and add_bias else y


class TreeAttn(nn.Module):
    """Attention of a goal over the encoder outputs: softmax of ``v·tanh(W[q; h]) + b`` (masked).

    ``keys(encoder_outputs)`` is the ``W_h h + b`` half, the same for every decoder step; ``__call__`` adds the
    query's half."""

    hidden: int

    def setup(self):
        self.attn = TorchDense(self.hidden, in_features=2 * self.hidden)
        self.score = TorchDense(1, in_features=self.hidden)

    def keys(self, encoder_outputs: jax.Array) -> jax.Array:
        """encoder_outputs [B, S, H] -> [B, S, H]."""
        return self.attn(encoder_outputs, offset=self.hidden)

    def __call__(self, query: jax.Array, keys: jax.Array, seq_mask: jax.Array) -> jax.Array:
        """query [B, H], keys from :meth:`keys` [B, S, H], seq_mask [B, S] (True = real token) -> weights [B, S]."""
        energies = self.score(jnp.tanh(self.attn(query, add_bias=False)[:, None] + keys))[..., 0]
        return jax.nn.softmax(jnp.where(seq_mask, energies, NEG_INF), axis=-1)


class Score(nn.Module):
    """Number scores ``v·tanh(W[leaf; e])`` (no bias on v), masked to the example's numbers; ``keys(e)`` is the
    ``W_e e + b`` half."""

    hidden: int

    def setup(self):
        self.attn = TorchDense(self.hidden, in_features=3 * self.hidden)
        self.score = TorchDense(1, use_bias=False, in_features=self.hidden)

    def keys(self, num_embeddings: jax.Array) -> jax.Array:
        """num_embeddings [..., O, H] -> [..., O, H]."""
        return self.attn(num_embeddings, offset=2 * self.hidden)

    def __call__(self, leaf: jax.Array, keys: jax.Array, num_mask: jax.Array) -> jax.Array:
        """leaf [B, 2H], keys from :meth:`keys` [B, O, H], num_mask [B, O] (True = a real number) -> [B, O]."""
        scores = self.score(jnp.tanh(self.attn(leaf, add_bias=False)[:, None] + keys))[..., 0]
        return jnp.where(num_mask, scores, NEG_INF)


class Prediction(nn.Module):
    """Goal vector, context, operator logits and number scores for the goal being expanded.

    What does not change from one decoder step to the next can be computed once and passed in:
    ``attention_keys`` (of the encoder outputs), ``number_embeddings`` (generate-number embeddings, then the
    encoder outputs at the number positions) and ``number_keys`` (of the number embeddings after this step's
    dropout).
    """

    hidden: int
    num_ops: int
    num_generate: int  # constants that are "generate numbers"
    dropout: float = 0.5

    def setup(self):
        h = self.hidden
        if self.num_generate:  # none (ASDiv-A): no zero-size parameter, which checkpoints cannot hold
            self.embedding_weight = self.param(
                "embedding_weight", nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, None, "hidden")),
                (1, self.num_generate, h))
        self.concat_l = TorchDense(h, in_features=h)
        self.concat_lg = TorchDense(h, in_features=h)
        self.concat_r = TorchDense(h, in_features=2 * h)
        self.concat_rg = TorchDense(h, in_features=2 * h)
        self.attn = TreeAttn(h)
        self.score = Score(h)
        self.ops = TorchDense(self.num_ops, in_features=2 * h)
        self.drop = nn.Dropout(self.dropout)

    def number_embeddings(self, num_encodings: jax.Array) -> jax.Array:
        """num_encodings [B, N, H] -> [B, G + N, H]."""
        if not self.num_generate:
            return num_encodings
        generate = jnp.broadcast_to(self.embedding_weight, (num_encodings.shape[0],) + self.embedding_weight.shape[1:])
        return jnp.concatenate([generate.astype(num_encodings.dtype), num_encodings], axis=1)

    def attention_keys(self, encoder_outputs: jax.Array) -> jax.Array:
        return self.attn.keys(encoder_outputs)

    def number_keys(self, num_embeddings: jax.Array, deterministic: bool = True) -> jax.Array:
        """Keys of ``num_embeddings`` [..., O, H] after dropout (one fresh mask over the whole array)."""
        return self.score.keys(self.drop(num_embeddings, deterministic=deterministic))

    def __call__(self, goal, left, has_left, encoder_outputs, seq_mask, num_encodings, num_mask,
                 deterministic: bool = True, attention_keys=None, number_embeddings=None, number_keys=None):
        """goal, left [B, H]; has_left [B]; encoder_outputs [B, S, H]; seq_mask [B, S]; num_encodings
        [B, N, H] (encoder outputs at the number positions; unused when ``number_embeddings`` is given);
        num_mask [B, G + N].

        Returns ``(num_score [B, G+N], op [B, num_ops], q [B, H], context [B, H], num_embeddings [B, G+N, H])``.
        """
        drop = functools.partial(self.drop, deterministic=deterministic)
        if attention_keys is None:
            attention_keys = self.attention_keys(encoder_outputs)
        if number_embeddings is None:
            number_embeddings = self.number_embeddings(num_encodings)
        if number_keys is None:
            number_keys = self.number_keys(number_embeddings, deterministic)
        c, l_ = drop(goal), drop(left)
        no_left = jnp.tanh(self.concat_l(c)) * jax.nn.sigmoid(self.concat_lg(c))
        both = jnp.concatenate([l_, c], axis=-1)
        with_left = jnp.tanh(self.concat_r(both)) * jax.nn.sigmoid(self.concat_rg(both))
        q = jnp.where(has_left[:, None], with_left, no_left)
        weights = self.attn(drop(q), attention_keys, seq_mask)
        context = jnp.einsum("bs,bsh->bh", weights, encoder_outputs)
        leaf = drop(jnp.concatenate([q, context], axis=-1))
        num_score = self.score(leaf, number_keys, num_mask)
        op = self.ops(leaf)
        return num_score, op, q, context, number_embeddings


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
    :meth:`prepare` computes, once per batch, what every step reads: the attention keys, the number
    embeddings and the number keys of every step (each step's own dropout mask, drawn for all steps at once).
    """

    hidden: int
    num_ops: int
    num_generate: int
    embedding_size: int
    unk_id: int
    dropout: float = 0.5

    def setup(self):
        self.predict = Prediction(self.hidden, self.num_ops, self.num_generate, self.dropout)
        self.generate = GenerateNode(self.hidden, self.num_ops, self.embedding_size, self.dropout)
        self.merge = Merge(self.hidden, self.dropout)

    def prepare(self, encoder_outputs, num_encodings, steps: int, deterministic: bool = True):
        """-> ``(attention_keys [B, S, H], number_embeddings [B, G+N, H], number_keys [steps, B, G+N, H])``."""
        attention_keys = self.predict.attention_keys(encoder_outputs)
        number_embeddings = self.predict.number_embeddings(num_encodings)
        per_step = jnp.broadcast_to(number_embeddings, (steps,) + number_embeddings.shape)
        return attention_keys, number_embeddings, self.predict.number_keys(per_step, deterministic)

    def __call__(self, carry, step, encoder_outputs, attention_keys, seq_mask, number_embeddings, num_mask, targets,
                 deterministic: bool = True):
        goals, subtrees = carry  # [B, 1 + 2L, H], [B, L, H]
        t, node_slot, left_step, merge_op, merge_sub, target, candidates, number_keys = step
        batch = targets.shape[0]
        rows = jnp.arange(batch)
        goal = jnp.where((node_slot >= 0)[:, None], goals[rows, jnp.maximum(node_slot, 0)], 0.0)
        left = subtrees[rows, jnp.maximum(left_step, 0)]
        num_score, op, q, context, num_embeddings = self.predict(
            goal, left, left_step >= 0, encoder_outputs, seq_mask, None, num_mask, deterministic,
            attention_keys=attention_keys, number_embeddings=number_embeddings, number_keys=number_keys)
        logits = jnp.concatenate([op, num_score], axis=-1)
        # A target constant outside the vocabulary (UNK) becomes its best-scoring candidate number.
        best = jnp.argmax(jnp.where(candidates, num_score, -jnp.inf), axis=-1)
        target = jnp.where(target == self.unk_id, self.num_ops + best, target)

        is_op = target < self.num_ops
        left_goal, right_goal, _ = self.generate(q, jnp.where(is_op, target, 0), context, deterministic)
        goals = goals.at[:, 1 + 2 * t].set(left_goal).at[:, 2 + 2 * t].set(right_goal)

        op_table = nn.meta.unbox(self.generate.variables["params"]["embeddings"])
        current = num_embeddings[rows, jnp.clip(target - self.num_ops, 0, num_embeddings.shape[1] - 1)]
        for j in range(merge_op.shape[-1]):  # the cascade of sub-trees this number closes, innermost first
            active = merge_op[:, j] >= 0
            op_token = targets[rows, jnp.maximum(merge_op[:, j], 0)]
            merged = self.merge(op_table[op_token], subtrees[rows, jnp.maximum(merge_sub[:, j], 0)], current,
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
        self.decoder = DecoderStep(self.hidden, self.num_ops, self.num_generate, self.embedding_size, self.unk_id,
                                   self.dropout)

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
        attention_keys, number_embeddings, number_keys = self.decoder.prepare(
            encoder_outputs, num_encodings, steps, deterministic)
        xs = (jnp.arange(steps), swap(batch["node_slot"]), swap(batch["left_step"]), swap(batch["merge_op"]),
              swap(batch["merge_sub"]), swap(batch["targets"]), swap(batch["unk_candidates"]), number_keys)
        context = (encoder_outputs, attention_keys, seq_mask, number_embeddings, num_mask, batch["targets"])
        if self.is_initializing():  # one step creates the decoder's parameters
            _, (logits, targets) = self.decoder((goals, subtrees), jax.tree.map(lambda x: x[0], xs), *context,
                                                deterministic)
            return logits[:, None], targets[:, None]
        step_module = DecoderStep(self.hidden, self.num_ops, self.num_generate, self.embedding_size, self.unk_id,
                                  self.dropout, parent=None)
        variables = {"params": nn.meta.unbox(self.variables["params"]["decoder"])}
        key = None if deterministic else self.make_rng("dropout")

        def body(carry, step):
            rngs = {} if key is None else {"dropout": jax.random.fold_in(key, step[0])}
            return step_module.apply(variables, carry, step, *context, deterministic, rngs=rngs)

        _, (logits, targets) = lax.scan(body, (goals, subtrees), xs)
        logits, targets = swap(logits), swap(targets)
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
        # what every step reads, computed once per problem
        apply = functools.partial(predict.apply, {"params": dec["predict"]})
        attention_keys = tile(apply(encoder_outputs, method=Prediction.attention_keys))
        num_embeddings = apply(encoder_outputs[jnp.arange(batch_size)[:, None], batch["num_pos"]],
                               method=Prediction.number_embeddings)
        number_keys = tile(apply(num_embeddings, method=Prediction.number_keys))
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
            num_score, op, q, context, _ = predict.apply(
                {"params": dec["predict"]}, goal, s["trees"][rows, top], has_left, encoder_outputs, seq_mask, None,
                num_mask, attention_keys=attention_keys, number_embeddings=num_embeddings, number_keys=number_keys)
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
