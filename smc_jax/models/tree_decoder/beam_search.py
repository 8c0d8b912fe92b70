"""The tree decoder's beam search: the original's ``evaluate_tree``, batched over problems and beams under jit
(DESIGN.md "Tree decoders under jit"). Like teacher forcing it reads only an encoder's outputs and problem
vector."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from smc_jax.models.tree_decoder.cells import (
    PLAIN,
    attention_keys,
    generate,
    merge,
    number_embeddings,
    number_keys,
    predict,
)


def beam_search(p: dict, encoder_outputs: jax.Array, problem: jax.Array, batch: dict, *, num_ops: int,
                num_generate: int, beam_size: int = 5, max_length: int = 45) -> dict:
    """The original ``evaluate_tree`` beam search on a batch of problems (deterministic).

    ``p``: the decoder's params; ``encoder_outputs`` [B, S, H], ``problem`` [B, H]: any encoder's. ``batch``:
    input_ids [B, S], lengths [B], num_pos [B, N] (padded), num_count [B]. ``beam_size`` and ``max_length``
    are static. Each example's (beam × token) candidates are ranked with one ``lax.top_k``; a finished beam is
    its own single candidate. Goal vectors and sub-tree embeddings live in per-beam stacks with depth
    pointers; steps run in a ``lax.while_loop`` that stops at ``max_length`` or once every beam is finished.
    Returns the best beam's ``tokens`` [B, max_length] (-1 after its end; ids as in teacher forcing's
    logits), ``length`` [B], ``score`` [B] (summed log-probability) and ``steps`` [B] (decoder steps the
    whole batch ran, the same in every row).
    """
    k, steps_max, hidden = beam_size, max_length, problem.shape[-1]
    op_table = p["generate"]["embeddings"]

    batch_size = batch["input_ids"].shape[0]
    rows = jnp.arange(batch_size * k)
    num_slots = num_generate + batch["num_pos"].shape[1]
    vocab = num_ops + num_slots
    tile = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  [B, ...] -> [B·K, ...], beams of a problem adjacent
    # what every step reads, computed once per problem
    attn_keys = tile(attention_keys(p["predict"], encoder_outputs))
    num_embeddings = number_embeddings(p["predict"], encoder_outputs[jnp.arange(batch_size)[:, None], batch["num_pos"]])
    num_keys = tile(number_keys(p["predict"], num_embeddings))
    num_embeddings = tile(num_embeddings)
    real = tile(num_generate + batch["num_count"])[:, None]
    num_mask = jnp.arange(num_slots)[None] < real
    token_ok = jnp.arange(vocab)[None] < num_ops + real  # padded number slots are never candidates
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
        is_op = live & (token < num_ops)
        is_num = live & (token >= num_ops)

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

        current = num_embeddings[rows, jnp.clip(token - num_ops, 0, num_slots - 1)]
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
