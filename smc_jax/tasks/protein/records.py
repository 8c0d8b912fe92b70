"""Protein examples as numpy columns, and what every protein dataset does to its splits: dedupe, carve a seeded
validation split from train.

Knobs (task gin bindings): ``dedupe`` (``'none'`` | ``'exact'``: drop a row whose sequence and label repeat an
earlier row of the same split | ``'mean'``: one row per sequence, labelled by the mean of its rows),
``valid_fraction`` (the fraction of train's distinct sequences moved to a validation split when the data have none;
0 = no validation split) and ``valid_seed`` (the carve's seed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "dev": "valid",
                 "test": "test"}
SPLIT_ORDER = ("train", "valid", "test")
DEDUPE_MODES = ("none", "exact", "mean")


def _strings(values: Iterable[Any]) -> np.ndarray:
    items = [str(v) for v in values]
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class ProteinSplit:
    """One split as parallel columns; row ``i`` is one example.

    ``names``: object array of str (the HotProtein name, or ``<file>:<row>`` for table rows); ``sequences``:
    object array of str, as read (not normalised); ``labels``: float64 (regression targets) or int64 (classes).
    """

    names: np.ndarray
    sequences: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        names, sequences = _strings(self.names), _strings(self.sequences)
        labels = np.asarray(self.labels)
        if labels.dtype.kind in "iub":
            labels = labels.astype(np.int64)
        elif labels.dtype.kind == "f":
            labels = labels.astype(np.float64)
        else:
            raise ValueError(f"labels must be numbers, got dtype {labels.dtype}")
        if not len(names) == len(sequences) == len(labels) or labels.ndim != 1:
            raise ValueError(f"names, sequences and labels differ in length: {len(names)}, {len(sequences)}, "
                             f"{labels.shape}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "sequences", sequences)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_classification(self) -> bool:
        return self.labels.dtype.kind == "i"

    @property
    def lengths(self) -> np.ndarray:
        """Characters per sequence (int64), as read: residues for clean data."""
        return np.fromiter(map(len, self.sequences), np.int64, len(self.sequences))

    def take(self, index: Any) -> ProteinSplit:
        """The rows ``index`` selects (integer array, slice or boolean mask), in that order."""
        return ProteinSplit(self.names[index], self.sequences[index], self.labels[index])

    def head(self, n: int | None) -> ProteinSplit:
        """The first ``n`` rows (all for ``None``)."""
        return self if n is None else self.take(slice(0, int(n)))

    def with_labels(self, labels: Sequence[float] | np.ndarray) -> ProteinSplit:
        """The same rows with other labels (e.g. binned classes)."""
        return ProteinSplit(self.names, self.sequences, np.asarray(labels))


def split_name(value: Any, where: str) -> str:
    """Our split name (``train`` | ``valid`` | ``test``) for a file's split value (``validation``, ``dev``, ...);
    a one-line ValueError for anything else."""
    key = str(value).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ValueError(f"{where}: unknown split {value!r} (expected one of {', '.join(SPLIT_ALIASES)})")
    return SPLIT_ALIASES[key]


def dedupe(split: ProteinSplit, mode: str) -> ProteinSplit:
    """``split`` without repeated rows: ``'exact'`` keeps the first of the rows with the same sequence and label,
    ``'mean'`` keeps one row per sequence (the first's name and place) labelled by the mean of its rows, ``'none'``
    keeps all. Rows keep their order."""
    if mode not in DEDUPE_MODES:
        raise ValueError(f"unknown dedupe {mode!r} (valid: {', '.join(DEDUPE_MODES)})")
    if mode == "none" or len(split) == 0:
        return split
    if mode == "mean" and split.is_classification:
        raise ValueError("dedupe='mean' averages regression targets; these labels are classes (use 'exact')")
    first: dict[Any, int] = {}
    keys = zip(split.sequences, split.labels.tolist()) if mode == "exact" else split.sequences
    group = np.fromiter((first.setdefault(k, i) for i, k in enumerate(keys)), np.int64, len(split))
    keep = np.flatnonzero(group == np.arange(len(split)))
    if mode == "exact":
        return split.take(keep)
    _, inverse = np.unique(group, return_inverse=True)
    means = np.bincount(inverse, weights=split.labels) / np.bincount(inverse)
    return ProteinSplit(split.names[keep], split.sequences[keep], means)


def carve_validation(train: ProteinSplit, fraction: float, seed: int) -> tuple[ProteinSplit, ProteinSplit]:
    """``(train, valid)``: ``round(fraction · D)`` of train's ``D`` distinct sequences, drawn by
    ``np.random.default_rng(seed)``, move to valid with all their rows (replicates never straddle the two);
    both keep file order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {fraction}")
    first: dict[str, int] = {}
    group = np.fromiter((first.setdefault(s, len(first)) for s in train.sequences), np.int64, len(train))
    n_valid = int(round(fraction * len(first)))
    chosen = np.zeros(len(first), bool)
    chosen[np.random.default_rng(int(seed)).permutation(len(first))[:n_valid]] = True
    in_valid = chosen[group]
    return train.take(~in_valid), train.take(in_valid)


def finish_splits(splits: Mapping[str, ProteinSplit], *, dedupe_mode: str = "none", valid_fraction: float = 0.0,
                  valid_seed: int = 0) -> dict[str, ProteinSplit]:
    """Each split deduped, then a validation split carved from train when there is none and ``valid_fraction``
    > 0; ordered train, valid, test (others after)."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    out = {name: dedupe(split, dedupe_mode) for name, split in splits.items()}
    if "valid" not in out and valid_fraction and "train" in out:
        out["train"], out["valid"] = carve_validation(out["train"], valid_fraction, valid_seed)
    order = [s for s in SPLIT_ORDER if s in out] + [s for s in out if s not in SPLIT_ORDER]
    return {s: out[s] for s in order}
