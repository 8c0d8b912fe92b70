"""Padded numpy batches of the arithmetic task: training batches in the layout of the tree decoder's teacher
forcing (inputs, numbers, targets, the host schedule, UNK candidates) and evaluation batches (inputs and
numbers), each with Graph2Tree's graphs when the examples' edge lists are given (and, for evaluation, the
positions of the real tokens)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smc_jax.models.tree_schedule import batch_schedule
from smc_jax.tasks.arithmetic import data
from smc_jax.tasks.arithmetic.graphs import batch_graphs


def unk_candidates(example: data.Encoded, unk_id: int, num_generate: int, length: int, slots: int) -> np.ndarray:
    """``[length, slots]`` bool: for each UNK target step, the number slots (``G + i``) it may stand for,
    taken from ``num_stack`` in target order (the original pops the reversed stack)."""
    out = np.zeros((length, slots), bool)
    pending = list(example.num_stack)
    for t, token in enumerate(example.target_ids[:length]):
        if token == unk_id and pending:
            out[t, [num_generate + i for i in pending.pop()]] = True
    return out


def _pad_rows(items: Sequence, size: int) -> list:
    """``items`` and then copies of its first item, ``size`` in all."""
    if not items or len(items) > size:
        raise ValueError(f"a batch holds 1..{size} examples, got {len(items)}")
    return list(items) + [items[0]] * (size - len(items))


def real_positions(lengths: Sequence[int], input_length: int, size: int) -> np.ndarray:
    """The flat indices ``b * input_length + t`` of the real tokens of rows of ``lengths``, padded to ``size``
    with ``len(lengths) * input_length`` (one past the last)."""
    flat = np.concatenate([b * input_length + np.arange(n) for b, n in enumerate(lengths)])
    if len(flat) > size:
        raise ValueError(f"{len(flat)} real tokens, more than the {size} positions of the batch layout")
    return np.pad(flat, (0, size - len(flat)), constant_values=len(lengths) * input_length).astype(np.int32)


def packed_size(chunks: Sequence[Sequence[data.Encoded]], size: int, input_length: int, multiple: int = 128) -> int:
    """The most real tokens of any of ``chunks`` padded to ``size`` rows (the first row repeated), rounded up to
    a ``multiple`` (at most ``size * input_length``): one ``gcn_positions`` length for every chunk of a set."""
    most = max(sum(len(e.input_ids) for e in chunk) + (size - len(chunk)) * len(chunk[0].input_ids)
               for chunk in chunks)
    return min(-(-most // multiple) * multiple, size * input_length)


def input_batch(examples: Sequence[data.Encoded], size: int, input_length: int, slots: int, pad_id: int = 0,
                graphs: Sequence[np.ndarray] | None = None, packed: int | None = None) -> dict[str, np.ndarray]:
    """The inputs of a batch (``input_ids`` padded with ``pad_id``, ``lengths``, ``num_pos`` [B, slots],
    ``num_count``), rows past ``len(examples)`` repeating the first; with ``graphs`` (each example's edge list,
    :func:`smc_jax.tasks.arithmetic.graphs.graph_edges`) also ``graph`` [B, 2, input_length, input_length], and
    with ``packed`` also ``gcn_positions`` [packed] (:func:`real_positions`: Graph2Tree's graph module then runs
    its position-wise layers on the real tokens only)."""
    rows = _pad_rows(examples, size)
    input_ids = np.full((size, input_length), pad_id, np.int32)
    num_pos = np.zeros((size, slots), np.int32)
    for b, e in enumerate(rows):
        input_ids[b, : len(e.input_ids)] = e.input_ids
        num_pos[b, : len(e.num_pos)] = e.num_pos
    out = {"input_ids": input_ids, "lengths": np.array([len(e.input_ids) for e in rows], np.int32),
           "num_pos": num_pos, "num_count": np.array([len(e.num_pos) for e in rows], np.int32)}
    if graphs is not None:
        out["graph"] = batch_graphs(_pad_rows(graphs, size), input_length)
    if packed is not None:
        out["gcn_positions"] = real_positions(out["lengths"], input_length, packed)
    return out


def make_batch(examples: Sequence[data.Encoded], vocab: data.Vocab, batch_size: int, input_length: int,
               target_length: int, merge_depth: int, pad_id: int = 0,
               graphs: Sequence[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """One padded training batch (numpy) in the layout of the tree decoder's teacher forcing (inputs padded with
    ``pad_id``, :func:`input_batch`); rows past ``len(examples)`` repeat the first example with target length 0
    (no loss)."""
    batch = input_batch(examples, batch_size, input_length, vocab.copy_nums, pad_id, graphs)
    rows = _pad_rows(examples, batch_size)
    real = np.arange(batch_size) < len(examples)
    num_generate = len(vocab.generate_nums)
    unk = vocab.output_index["UNK"]
    targets = np.zeros((batch_size, target_length), np.int32)
    candidates = np.zeros((batch_size, target_length, num_generate + vocab.copy_nums), bool)
    for b, e in enumerate(rows):
        targets[b, : len(e.target_ids)] = e.target_ids
        candidates[b] = unk_candidates(e, unk, num_generate, target_length, num_generate + vocab.copy_nums)
    schedule = batch_schedule([e.target_ids for e in rows], vocab.num_start, target_length)
    pad = merge_depth - schedule.merge_op.shape[-1]
    if pad < 0:
        raise ValueError(f"merge depth {schedule.merge_op.shape[-1]} exceeds the batch layout's {merge_depth}")
    widen = lambda x: np.pad(x, ((0, 0), (0, 0), (0, pad)), constant_values=-1)  # noqa: E731
    return {
        **batch,
        "targets": targets,
        "target_lengths": np.where(real, [len(e.target_ids) for e in rows], 0).astype(np.int32),
        "node_slot": schedule.node_slot, "left_step": schedule.left_step,
        "merge_op": widen(schedule.merge_op), "merge_sub": widen(schedule.merge_sub),
        "unk_candidates": candidates,
    }
