"""The protein datasets as the task trains on them: which loader and label view each dataset name means, and the
encoded examples as one flat token buffer per split with vectorised batch assembly.

Dataset names (the gin task files, ``summary.json["task"]``):

- ``hps``: HotProtein HP-S, 5 classes (accuracy); ``hps2c2``: HP-S²C2, 2 classes, folds 0..9;
- ``meltome``: FLIP meltome as classes: the Tm targets binned with edges fit on train (quantile, 3 bins by
  default; spec §4 H2), accuracy, with Spearman of the expected class against Tm and the class priors logged;
- ``meltome_regression``: FLIP meltome's Tm (Spearman); ``stability``: TAPE stability (Spearman).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from smc_jax.tasks.batching import bucket_length
from smc_jax.tasks.protein import data, hotprotein
from smc_jax.tasks.protein.records import ProteinSplit
from smc_jax.tasks.protein.tokenizer import ProteinTokenizer


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """``source``: the data layer's dataset (:func:`smc_jax.tasks.protein.data.load_splits`); ``classes``: labels
    are classes (else regression targets); ``binned``: the classes are binned regression targets; ``folds``: how
    many folds ``FOLD='all'`` runs (``None``: a single split)."""

    source: str
    classes: bool
    binned: bool = False
    folds: int | None = None


DATASETS: dict[str, DatasetSpec] = {
    "hps": DatasetSpec("hp_s", classes=True),
    "hps2c2": DatasetSpec("hp_s2c2", classes=True, folds=10),
    "meltome": DatasetSpec("meltome", classes=True, binned=True),
    "meltome_regression": DatasetSpec("meltome", classes=False),
    "stability": DatasetSpec("tape_stability", classes=False),
}
DEFAULT_DEDUPE = {"meltome": "exact", "tape_stability": "none"}
DEFAULT_VALID_FRACTION = {"hp_s": 0.0, "hp_s2c2": 0.0, "meltome": 0.1, "tape_stability": 0.1}


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A dataset's splits (labels: classes or regression targets), its class count (``None``: regression), the
    raw regression targets of a binned view and the fitted bin edges."""

    splits: dict[str, ProteinSplit]
    num_classes: int | None
    targets: dict[str, np.ndarray]
    edges: np.ndarray | None = None


def load(dataset: str, data_dir: str | os.PathLike | None, *, fold: int | None, num_classes: int | None,
         label_offset: int, split_file: str | None, fasta_dir: str | None, fasta_mode: str, meltome_split: str,
         hub_id: str | None, dedupe: str | None, valid_fraction: float | None, valid_seed: int, bins: str,
         num_bins: int, bin_edges: Sequence[float] | None, limits: Mapping[str, int | None]) -> Loaded:
    """The splits of ``dataset`` (a key of :data:`DATASETS`) with the task's data settings; ``limits`` caps the
    HotProtein names read per split (only their FASTA files are opened)."""
    spec = DATASETS[dataset]
    fraction = DEFAULT_VALID_FRACTION[spec.source] if valid_fraction is None else float(valid_fraction)
    if spec.source in ("hp_s", "hp_s2c2"):
        splits = data.load_splits(spec.source, data_dir, fold=fold, split_file=split_file, fasta_dir=fasta_dir,
                                  num_classes=num_classes, label_offset=label_offset, fasta_mode=fasta_mode,
                                  valid_fraction=fraction, valid_seed=valid_seed, limits=limits)
        classes = int(num_classes) if num_classes is not None else hotprotein.LAYOUTS[spec.source].num_classes
        return Loaded(splits, classes, {s: split.labels.astype(np.float64) for s, split in splits.items()})
    options: dict[str, Any] = dict(hub_id=hub_id, dedupe=dedupe or DEFAULT_DEDUPE[spec.source],
                                   valid_fraction=fraction, valid_seed=valid_seed)
    if spec.source == "meltome":
        options["meltome_split"] = meltome_split
    splits = data.load_splits(spec.source, data_dir, **options)
    targets = {s: split.labels for s, split in splits.items()}
    if not spec.binned:
        if num_classes is not None:
            raise ValueError(f"{dataset} is a regression dataset; leave ProteinTask.num_classes unset (got "
                             f"{num_classes})")
        return Loaded(splits, None, targets)
    classed, edges = data.binned(splits, bins, num_bins, bin_edges)
    if num_classes is not None and int(num_classes) != len(edges) + 1:
        raise ValueError(f"{dataset}: ProteinTask.num_classes={num_classes} but the bins give {len(edges) + 1} "
                         "classes; set num_bins (or bin_edges) instead, and leave num_classes unset")
    return Loaded(classed, len(edges) + 1, targets, edges)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenStore:
    """The token ids of one split in one flat int32 buffer: row ``i`` is ``tokens[offsets[i]:offsets[i] +
    lengths[i]]`` (``<cls>`` residues [``<eos>``])."""

    tokens: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def encode(cls, tokenizer: ProteinTokenizer, split: ProteinSplit, *, truncation: str, max_length: int | None,
               crop_length: int | None) -> TokenStore:
        """``split``'s sequences tokenized (``crop_length``: only the first residues of each, before truncation)."""
        sequences = split.sequences
        if crop_length is not None:
            sequences = [tokenizer.normalize(s)[: int(crop_length)] for s in sequences]
        rows = tokenizer.encode_batch(sequences, split.names, truncation=truncation, max_length=max_length)
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        tokens = np.concatenate(rows) if rows else np.zeros(0, np.int32)
        return cls(tokens.astype(np.int32), np.cumsum(lengths) - lengths, lengths)

    def take(self, n: int | None) -> TokenStore:
        """The first ``n`` rows (all for ``None``)."""
        if n is None or n >= len(self):
            return self
        return TokenStore(self.tokens[: int(self.offsets[n])], self.offsets[:n], self.lengths[:n])

    def batch(self, indices: Sequence[int] | np.ndarray, rows: int, buckets: Sequence[int], pad_id: int,
              filler: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` int32 ``[rows, length]`` of the rows ``indices``, right-padded with
        ``pad_id`` to the bucket of the longest; rows past ``len(indices)`` hold ``filler`` (e.g. ``<cls> <eos>``:
        a row without tokens would make ESM's token-dropout scale 0/0)."""
        idx = np.asarray(indices, np.int64)
        n = len(idx)
        if not 0 < n <= rows:
            raise ValueError(f"a batch holds 1..{rows} examples, got {n}")
        lengths = np.full(rows, len(filler), np.int64)
        lengths[:n] = self.lengths[idx]
        length = bucket_length(int(lengths.max()), buckets)
        positions = np.arange(length)
        mask = positions[None, :] < lengths[:, None]
        gather = np.minimum(self.offsets[idx][:, None] + positions[None, :], len(self.tokens) - 1)
        ids = np.full((rows, length), pad_id, np.int32)
        ids[:n] = np.where(mask[:n], self.tokens[gather], pad_id)
        ids[n:, : len(filler)] = np.asarray(filler, np.int32)
        return ids, mask.astype(np.int32)
