"""Data helpers the task families share: length buckets, seeded shuffles, padded evaluation chunks, fast
tokenizers and validation of size settings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from smc_jax.tasks.base import Batch, EvalChunk

T = TypeVar("T")


def bucket_length(n: int, buckets: Sequence[int], cap: int | None = None) -> int:
    """The smallest bucket ``>= n`` (and ``<= cap``); past them ``cap`` when given, else ``n`` rounded up to a
    multiple of the largest bucket."""
    for b in sorted(buckets):
        if n <= b and (cap is None or b <= cap):
            return int(b)
    if cap is not None:
        return int(cap)
    last = int(max(buckets))
    return -(-int(n) // last) * last


def shuffled_batches(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """A fresh permutation per ``(seed, epoch)`` cut into batches of ``batch_size`` indices (the last one short)."""
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples)
    return [order[i:i + batch_size].tolist() for i in range(0, num_examples, batch_size)]


def eval_chunks(examples: Sequence[T], rows: int, make_batch: Callable[[list[T], int], Batch],
                order: Sequence[int] | None = None) -> list[EvalChunk]:
    """``examples`` (in ``order`` when given) as chunks of at most ``rows``, each padded by ``make_batch(part,
    rows)`` to ``rows`` rows: one compiled shape per padded length."""
    picked = [examples[i] for i in order] if order is not None else list(examples)
    return [EvalChunk(len(picked[s:s + rows]), make_batch(list(picked[s:s + rows]), rows))
            for s in range(0, len(picked), rows)]


def load_fast_tokenizer(directory: str | Path, pretrained: str, why: str) -> Any:
    """The checkpoint's HF tokenizer; a one-line error when it is not a fast tokenizer (``why`` says what needs
    one, e.g. ``'number positions need character offsets'``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"PRETRAINED={pretrained!r}: its tokenizer is not a fast tokenizer ({why}); add its "
                         "tokenizer.json")
    return tokenizer


def check_settings(owner: Any, positive: Sequence[str] = (), optional_positive: Sequence[str] = (),
                   fractions: Sequence[str] = ()) -> None:
    """One-line errors for bad size settings of ``owner`` (a task dataclass): ``positive`` fields must be
    ``>= 1``; ``optional_positive`` ones ``None`` or ``>= 1`` (their macro names, ``MAX_TRAIN_EXAMPLES``, are
    what the message shows); ``fractions`` ``None`` or in ``[0, 1)``."""
    cls = type(owner).__name__
    for field in positive:
        if int(getattr(owner, field)) < 1:
            raise ValueError(f"{cls}.{field} must be >= 1, got {getattr(owner, field)}")
    for field in optional_positive:
        value = getattr(owner, field)
        if value is not None and int(value) < 1:
            raise ValueError(f"{field.upper()} must be None or >= 1, got {value}")
    for field in fractions:
        value = getattr(owner, field)
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"{cls}.{field} must be in [0, 1), got {value}")
