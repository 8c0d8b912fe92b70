"""Graph2Tree's graphs (``spec/graph2tree.md`` §1), built on the host once per example.

Of the original's five graphs the model reads two: G1, the greater-number graph (``A[P_s, P_t] = 1`` iff
``v_s >= v_t``, so equal numbers are linked both ways) and G4, the attribute-between graph (quantity-cell edges
``|i - j| < 4`` between each number position ``i`` and each quantity-cell index ``j`` that is not a number
position, plus links between quantity cells whose tokens have the same id). Both have self-loops on the
example's real tokens only and are unnormalised 0/1 matrices. ``P`` are the positions the model reads numbers
at; ``Q`` the quantity cells (``group_nums``): word indices for learned embeddings, remapped to first
sub-tokens through the original's ``index_retrieve`` for a pretrained encoder (indices past the last word
dropped, order and duplicates kept). An example's graphs are kept as an edge list; :func:`batch_graphs`
scatters a batch's edge lists into one zero-padded ``[B, 2, L, L]`` array.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from smc_jax.tasks.arithmetic.data import Encoded, Problem

NUM_GRAPHS = 2  # [G1 greater-number, G4 attribute-between]
BPE_SPACE = "\u0120"  # 'Ġ': byte-level BPE's mark of a token that starts after a space


def change_num(numbers: Sequence[str]) -> list[float]:
    """The original's ``change_num``: ``'(a/b)'`` (the text between the first ``(`` and the first ``)``) is a/b,
    ``'x%'`` is x/100, anything else ``float``. A bare ``a/b`` is an error, as in the original."""
    values = []
    for item in numbers:
        if "/" in item:
            if "(" not in item:
                raise ValueError(f"change_num reads fractions written '(a/b)', got {item!r}")
            a, b = item.split(")")[0].split("(")[1].split("/")
            values.append(float(a) / float(b))
        elif "%" in item:
            values.append(float(item[:-1]) / 100)
        else:
            values.append(float(item))
    return values


def index_retrieve(tokens: Sequence[str]) -> list[int]:
    """Each word's first sub-token in a byte-level BPE sequence ``<s> … </s>`` (``contextual_embeddings.py``):
    ``[1]`` and then every position ``j >= 2`` whose token starts with 'Ġ'."""
    return [1] + [j for j in range(2, len(tokens)) if tokens[j].startswith(BPE_SPACE)]


def word_starts(words: Sequence[str], tokenizer: Any) -> list[int]:
    """Each word's first sub-token in ``tokenizer``'s encoding of the words joined with spaces (character
    offsets; for tokenizers whose tokens carry no 'Ġ', e.g. BERT's WordPiece)."""
    encoding = tokenizer(" ".join(words), add_special_tokens=True)
    starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
    return [int(encoding.char_to_token(int(s))) for s in starts]


def remap_group(group: Sequence[int], index: Sequence[int]) -> list[int]:
    """``[index[k] for k in group if k < len(index)]``: word indices to sub-token positions (order and duplicates
    kept, indices past the last word dropped)."""
    return [int(index[k]) for k in group if k < len(index)]


def example_graphs(token_ids: Sequence[int], num_pos: Sequence[int], group: Sequence[int],
                   values: Sequence[float]) -> np.ndarray:
    """``[2, n, n]`` bool: G1 and G4 of one example of ``n = len(token_ids)`` tokens. ``num_pos`` (P) and
    ``values`` pair up in order; ``group`` (Q) entries ``>= n`` link nothing (the original's bound)."""
    n = len(token_ids)
    positions = np.asarray(num_pos, np.int64)
    if len(positions) != len(values):
        raise ValueError(f"{len(positions)} number positions for {len(values)} numbers")
    if np.any(positions >= n) or np.any(positions < 0):
        raise ValueError(f"number positions {list(num_pos)} outside the example's {n} tokens")
    graphs = np.zeros((NUM_GRAPHS, n, n), bool)
    graphs[:, np.arange(n), np.arange(n)] = True
    v = np.asarray(values, np.float64)
    graphs[0][positions[:, None], positions[None, :]] |= v[:, None] >= v[None, :]
    cells = np.asarray(group, np.int64)
    cells = cells[(cells >= 0) & (cells < n)]
    near = cells[~np.isin(cells, positions)]
    pairs = np.abs(positions[:, None] - near[None, :]) < 4
    rows, cols = np.nonzero(pairs)
    graphs[1][positions[rows], near[cols]] = True
    graphs[1][near[cols], positions[rows]] = True
    tokens = np.asarray(token_ids)[cells]
    rows, cols = np.nonzero(tokens[:, None] == tokens[None, :])
    graphs[1][cells[rows], cells[cols]] = True
    return graphs


def example_edges(problem: Problem, example: Encoded, tokenizer: Any = None) -> np.ndarray:
    """The graph edges (:func:`graph_edges`) of an encoded problem: over its words with learned embeddings (``Q``:
    ``group_nums`` as written); over its sub-tokens with a pretrained encoder's ``tokenizer`` (``Q`` remapped to
    first sub-tokens by the original's :func:`index_retrieve` for byte-level BPE, by character offsets for other
    tokenizers). ``P`` is ``example.num_pos``: the positions the model reads the numbers at."""
    group = problem.group_nums
    if tokenizer is not None:
        tokens = tokenizer.convert_ids_to_tokens(list(example.input_ids))
        starts = (index_retrieve(tokens) if any(t.startswith(BPE_SPACE) for t in tokens)
                  else word_starts(problem.tokens, tokenizer))
        group = remap_group(group, starts)
    return graph_edges(example_graphs(example.input_ids, example.num_pos, group, change_num(example.numbers)))


def graph_edges(graphs: np.ndarray) -> np.ndarray:
    """The ``(graph, row, column)`` of every 1 in ``graphs`` [2, n, n], as int16 [E, 3]."""
    return np.argwhere(graphs).astype(np.int16)


def batch_graphs(edges: Sequence[np.ndarray], length: int) -> np.ndarray:
    """``[B, 2, length, length]`` bool from each row's :func:`graph_edges`: one scatter, zeros past each row's
    own tokens (no self-loops on padding)."""
    out = np.zeros((len(edges), NUM_GRAPHS, length, length), bool)
    if not len(edges):
        return out
    rows = np.repeat(np.arange(len(edges)), [len(e) for e in edges])
    e = np.concatenate(edges).astype(np.int64)
    if len(e) and e[:, 1:].max() >= length:
        raise ValueError(f"a graph has {int(e[:, 1:].max()) + 1} nodes, more than the batch length {length}")
    out[rows, e[:, 0], e[:, 1], e[:, 2]] = True
    return out
