"""The tree decoder under teacher forcing: one ``lax.scan`` over the target prefix positions of a batch, driven
by a host-side schedule (:mod:`smc_jax.models.tree_schedule`, DESIGN.md "Tree decoders under jit"). It reads
only an encoder's outputs and problem vector, so every encoder (GTS's biLSTM, Graph2Tree's biLSTM + graph
module) shares it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from smc_jax.models.tree_decoder.cells import (
    StepOps,
    attention_keys,
    generate,
    merge,
    number_embeddings,
    number_keys,
    predict,
)


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


def teacher_forced(p: dict, encoder_outputs: jax.Array, problem: jax.Array, batch: dict, *, num_ops: int,
                   num_generate: int, unk_id: int, dropout: float = 0.0, rng: jax.Array | None = None,
                   drop_numbers: Callable[[jax.Array], jax.Array] = lambda x: x,
                   probes: Any = None) -> tuple[jax.Array, jax.Array, dict]:
    """Logits [B, L, ops + G + N], the targets they are scored against (UNK resolved) [B, L], and the
    tapped linear calls (``{}`` unless ``probes``; see :class:`StepOps`), stacked over steps.

    ``p``: the decoder's params (:class:`DecoderParams`); ``encoder_outputs`` [B, S, H] and ``problem`` [B, H]:
    any encoder's. ``batch``: input_ids, lengths, num_pos [B, N] (padded), num_count [B], targets [B, L],
    node_slot, left_step [B, L], merge_op, merge_sub [B, L, D] (a :class:`TreeSchedule`), unk_candidates
    [B, L, G + N] (bool: the numbers an UNK target may stand for). Dropout: ``drop_numbers`` on each step's
    number embeddings, and with ``rng`` every dropout mask of the decoder steps (rate ``dropout``) drawn in
    one call.
    """
    batch_size, steps = batch["targets"].shape
    hidden = problem.shape[-1]
    rows = jnp.arange(batch_size)[:, None]
    num_slots = num_generate + batch["num_pos"].shape[1]
    num_mask = jnp.arange(num_slots)[None] < (num_generate + batch["num_count"])[:, None]
    seq_mask = jnp.arange(batch["input_ids"].shape[1])[None] < batch["lengths"][:, None]
    goals = jnp.zeros((batch_size, 1 + 2 * steps, hidden), problem.dtype).at[:, 0].set(problem)
    subtrees = jnp.zeros((batch_size, steps, hidden), problem.dtype)
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    attn_keys = attention_keys(p["predict"], encoder_outputs)
    embeddings = number_embeddings(p["predict"], encoder_outputs[rows, batch["num_pos"]])
    per_step = jnp.broadcast_to(embeddings, (steps,) + embeddings.shape)  # each step its own dropout
    num_keys = number_keys(p["predict"], drop_numbers(per_step))
    xs = (jnp.arange(steps), swap(batch["node_slot"]), swap(batch["left_step"]), swap(batch["merge_op"]),
          swap(batch["merge_sub"]), swap(batch["targets"]), swap(batch["unk_candidates"]), num_keys)
    paths = {id(leaf): "/".join(k.key for k in path[:-1])
             for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0] if path[-1].key == "kernel"}

    def run(ops, carry, step):
        carry, out = decoder_step(ops, p, carry, step, encoder_outputs, attn_keys, seq_mask, embeddings,
                                  num_mask, batch["targets"], num_ops, unk_id)
        return carry, out + (ops.tapped,)

    keep = None
    if rng is not None and dropout > 0:  # how many values one step drops out, then one draw
        dry = StepOps(drop=lambda x: x)
        jax.eval_shape(functools.partial(run, dry), (goals, subtrees), jax.tree.map(lambda x: x[0], xs))
        keep = jax.random.bernoulli(rng, 1.0 - dropout, (steps, sum(dry.drop_sizes)))

    stacked = isinstance(probes, dict)  # zero probes stacked over steps; "record" and None apply to all

    def body(carry, inputs):
        step, step_keep, step_probes = inputs
        ops = StepOps(keep=step_keep, rate=dropout, probes=step_probes if stacked else probes, paths=paths)
        return run(ops, carry, step)

    _, (logits, targets, tapped) = lax.scan(body, (goals, subtrees), (xs, keep, probes if stacked else None))
    return swap(logits), swap(targets), tapped
