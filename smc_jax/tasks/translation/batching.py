"""fairseq's multilingual batching as arrays (spec translation.md §3): temperature sampling over directions with
virtual epochs, max-tokens batches of bucketed shapes, micro-batches grouped into updates, and the vectorised
assembly of the token rows of both input formats.

An example is ``(direction, index)``: row ``index`` of that direction's example table, whose source and target
are sentence ids into one :class:`~smc_jax.tasks.translation.data.TokenArrays` of every side of every bitext.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from smc_jax.models.mbart_vocab import EOS, PAD
from smc_jax.tasks.translation.data import TokenArrays

FORMATS = ("fairseq", "hf_native")


def temperature_probs(sizes: Sequence[int], temperature: float) -> np.ndarray:
    """fairseq's temperature sampling ratios: ``(n_i / sum n) ** (1 / T)``, normalised (float64)."""
    sizes = np.asarray(sizes, np.float64)
    if np.any(sizes <= 0):
        raise ValueError(f"every direction needs examples; sizes {sizes.astype(int).tolist()}")
    ratios = (sizes / sizes.sum()) ** (1.0 / float(temperature))
    return ratios / ratios.sum()


def virtual_epoch_size(sizes: Sequence[int], probs: np.ndarray) -> int:
    """Examples a virtual epoch draws: ``sum_i (p_i / p_max) * n_max``, at most ``1.5 * sum n`` (spec §3)."""
    sizes = np.asarray(sizes, np.float64)
    size = float(np.sum(probs / probs.max()) * sizes[np.argmax(probs)])
    return int(min(size, 1.5 * sizes.sum()))


def sample_epoch(sizes: Sequence[int], probs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(direction, index)`` of one virtual epoch: ``floor(size * p_i)`` per direction, the remainder by a
    multinomial draw; indices uniform, with replacement where more than ``n_i`` are drawn."""
    total = virtual_epoch_size(sizes, probs)
    counts = np.floor(total * probs).astype(np.int64)
    rest = total - int(counts.sum())
    if rest > 0:
        counts += rng.multinomial(rest, probs)
    directions, indices = [], []
    for d, (n, c) in enumerate(zip(sizes, counts)):
        indices.append(rng.choice(int(n), int(c), replace=bool(c > n)))
        directions.append(np.full(int(c), d, np.int64))
    return np.concatenate(directions), np.concatenate(indices).astype(np.int64)


def rows_for(width: int, max_tokens: int) -> int:
    """Rows of a batch of ``width`` padded positions under ``max_tokens``, rounded down to a multiple of 8 when
    >= 8 (fairseq's ``required_batch_size_multiple``)."""
    rows = int(max_tokens) // int(width)
    return rows - rows % 8 if rows >= 8 else max(rows, 1)


def bucket_of(sizes: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """Index of the smallest bucket >= each size (sizes must fit the largest)."""
    return np.searchsorted(np.asarray(buckets), sizes, side="left")


class Update(NamedTuple):
    """One optimizer update: ``accum`` micro-batches of ``rows`` rows (``direction``/``index`` -1 on pad rows),
    padded to ``width`` positions."""

    width: int
    direction: np.ndarray  # [accum * rows]
    index: np.ndarray


def plan_updates(directions: np.ndarray, indices: np.ndarray, sizes: np.ndarray, buckets: Sequence[int],
                 max_tokens: int, accum: int, rng: np.random.Generator) -> list[Update]:
    """Max-tokens batches (one bucket each: ``rows_for(bucket)`` examples) grouped ``accum`` at a time within a
    bucket into updates (a bucket's last group filled with empty micro-batches), in a shuffled order."""
    which = bucket_of(sizes, buckets)
    order = np.lexsort((rng.permutation(len(sizes)), which))
    updates: list[Update] = []
    for b in np.unique(which):
        members = order[which[order] == b]
        width = int(buckets[b])
        rows = rows_for(width, max_tokens)
        per_update = rows * accum
        for start in range(0, len(members), per_update):
            part = members[start:start + per_update]
            d = np.full(per_update, -1, np.int64)
            i = np.full(per_update, -1, np.int64)
            d[:len(part)], i[:len(part)] = directions[part], indices[part]  # micro-batch k: rows k*rows..
            updates.append(Update(width, d, i))
    return [updates[k] for k in rng.permutation(len(updates))]


def assemble(texts: TokenArrays, sentences: np.ndarray, prefix: np.ndarray, suffix: np.ndarray, width: int,
             keep: int | None = None) -> np.ndarray:
    """Rows ``prefix + pieces + suffix`` padded with ``PAD`` to ``width``: ``sentences`` ``[R]`` (−1: an empty
    pad row), ``prefix`` ``[R, p]`` and ``suffix`` ``[R, s]`` per-row special ids; pieces cut to ``keep`` (default:
    what fits). One gather, no per-row Python."""
    rows = len(sentences)
    p, s = prefix.shape[1], suffix.shape[1]
    real = sentences >= 0
    sid = np.where(real, sentences, 0)
    start = texts.offsets[sid]
    n = np.minimum(texts.offsets[sid + 1] - start, width - p - s if keep is None else keep)
    n = np.where(real, n, 0)
    col = np.arange(width)[None, :]
    k = col - p
    in_text = (k >= 0) & (k < n[:, None])
    gather = np.where(in_text, start[:, None] + np.clip(k, 0, None), 0)
    tokens = np.asarray(texts.tokens)
    out = np.where(in_text, tokens[np.minimum(gather, max(len(tokens) - 1, 0))] if len(tokens) else PAD, PAD)
    if p:
        out[:, :p] = prefix
    j = k - n[:, None]
    in_suffix = (j >= 0) & (j < s)
    if s:
        out = np.where(in_suffix, suffix[np.arange(rows)[:, None], np.clip(j, 0, s - 1)], out)
    out[~real] = PAD
    return out.astype(np.int32)


def encode_rows(fmt: str, texts: TokenArrays, src: np.ndarray, tgt: np.ndarray | None, src_tok: np.ndarray,
                tgt_tok: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """Model inputs of ``fmt`` for source/target sentence ids (``-1``: pad row) and per-row language ids.

    ``fairseq``: ``input_ids`` = ``__src__ X </s>``, ``labels`` = ``__tgt__ Y </s>``, ``decoder_input_ids`` =
    ``</s> __tgt__ Y``. ``hf_native``: ``X </s> src_code``, ``Y </s> tgt_code``, ``tgt_code Y </s>``."""
    rows = len(src)
    eos = np.full((rows, 1), EOS, np.int64)
    s_tok, t_tok = src_tok[:, None].astype(np.int64), tgt_tok[:, None].astype(np.int64)
    none = np.zeros((rows, 0), np.int64)
    if fmt == "fairseq":
        out = {"input_ids": assemble(texts, src, s_tok, eos, width)}
        if tgt is not None:
            out["labels"] = assemble(texts, tgt, t_tok, eos, width)
            keep = np.maximum(width - 2, 0)
            out["decoder_input_ids"] = assemble(texts, tgt, np.concatenate([eos, t_tok], 1), none, width, keep)
    elif fmt == "hf_native":
        out = {"input_ids": assemble(texts, src, none, np.concatenate([eos, s_tok], 1), width)}
        if tgt is not None:
            out["labels"] = assemble(texts, tgt, none, np.concatenate([eos, t_tok], 1), width)
            out["decoder_input_ids"] = assemble(texts, tgt, t_tok, eos, width, keep=width - 2)
    else:
        raise ValueError(f"INPUT_FORMAT {fmt!r} unknown; choose one of {', '.join(FORMATS)}")
    out["attention_mask"] = (out["input_ids"] != PAD).astype(np.int32)
    return out


class SampledStream:
    """The unbounded training stream: virtual epoch ``e`` is planned from ``(seed, e)`` alone, its updates
    consumed in order; the position ``{'epoch', 'update'}`` restores exactly (the plan is recomputed)."""

    def __init__(self, plan: Any, make: Any, seed: int):
        self._plan, self._make, self.seed = plan, make, int(seed)
        self.epoch, self.update = 0, 0
        self._updates: list[Update] | None = None

    def __iter__(self) -> SampledStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._updates is None:
            self._updates = self._plan(self.seed, self.epoch)
        batch = self._make(self._updates[self.update])
        self.update += 1
        if self.update == len(self._updates):
            self.epoch, self.update, self._updates = self.epoch + 1, 0, None
        return batch

    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "update": self.update}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.epoch, self.update, self._updates = int(state["epoch"]), int(state["update"]), None
