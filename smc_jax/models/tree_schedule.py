"""Host-side schedules of the GTS/Graph2Tree tree decoder under teacher forcing (DESIGN.md "Tree decoders
under jit").

With the target prefix sequence known, every stack operation of the original's ``train_tree`` loop is
fixed: which goal node is expanded at each step, whether it has a left sibling sub-tree, and which
sub-trees a number closes by merging. This module computes those as index arrays once per example, so the
network runs as one ``lax.scan`` over prefix positions on a whole batch with embeddings held in buffers:

- goal slots: 0 is the root (the problem vector); an operator at step s creates slot ``1 + 2s`` (its left
  child's goal) and ``2 + 2s`` (its right child's);
- terminal steps: a number at step t produces the embedding of the sub-tree it completes, stored at t.

At step t the decoder expands goal ``node_slot[t]`` (-1: the stack is empty, padding) with the left-sibling
sub-tree stored at step ``left_step[t]`` (-1: none). A number at step t starts from its own embedding and
merges, innermost first, with ``(op of step merge_op[t, j], sub-tree of step merge_sub[t, j])`` for each
``j`` where ``merge_op[t, j] >= 0``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TreeSchedule:
    """Index arrays of a batch: ``[B, L]`` and ``[B, L, D]`` (D: the deepest merge cascade, at least 1)."""

    node_slot: np.ndarray
    left_step: np.ndarray
    merge_op: np.ndarray
    merge_sub: np.ndarray
    is_op: np.ndarray  # bool [B, L]: the target token at step t is an operator


def example_schedule(target: Sequence[int], num_start: int) -> tuple[list[int], list[int], list[list[tuple[int, int]]]]:
    """``(node_slot, left_step, merges)`` of one target prefix sequence, by replaying the original's
    stacks with slot and step ids in place of tensors."""
    node_stack = [0]
    subtrees: list[tuple[bool, int]] = []  # (terminal, step): operators and finished sub-trees
    node_slot, left_step, merges = [], [], []
    left = -1
    for t, token in enumerate(target):
        if not node_stack:  # the tree is complete: the rest is padding
            node_slot.append(-1)
            left_step.append(-1)
            merges.append([])
            left = -1
            continue
        node_slot.append(node_stack.pop())
        left_step.append(left)
        cascade = []
        if token < num_start:
            node_stack.extend([2 + 2 * t, 1 + 2 * t])  # right child below, left child on top
            subtrees.append((False, t))
        else:
            while subtrees and subtrees[-1][0]:
                sub = subtrees.pop()[1]
                op = subtrees.pop()[1]
                cascade.append((op, sub))
            subtrees.append((True, t))
        merges.append(cascade)
        left = t if subtrees and subtrees[-1][0] else -1
    return node_slot, left_step, merges


def batch_schedule(targets: Sequence[Sequence[int]], num_start: int, length: int) -> TreeSchedule:
    """Schedules of a batch padded to ``length`` steps (steps past a target's end are padding)."""
    batch = len(targets)
    per_example = [example_schedule(list(t)[:length], num_start) for t in targets]
    depth = max([1] + [len(c) for _, _, merges in per_example for c in merges])
    node_slot = np.full((batch, length), -1, np.int32)
    left_step = np.full((batch, length), -1, np.int32)
    merge_op = np.full((batch, length, depth), -1, np.int32)
    merge_sub = np.full((batch, length, depth), -1, np.int32)
    is_op = np.zeros((batch, length), bool)
    for b, (target, (slots, lefts, merges)) in enumerate(zip(targets, per_example)):
        n = len(slots)
        node_slot[b, :n] = slots
        left_step[b, :n] = lefts
        is_op[b, :n] = np.asarray(list(target)[:n]) < num_start
        for t, cascade in enumerate(merges):
            for j, (op, sub) in enumerate(cascade):
                merge_op[b, t, j], merge_sub[b, t, j] = op, sub
    return TreeSchedule(node_slot, left_step, merge_op, merge_sub, is_op)
