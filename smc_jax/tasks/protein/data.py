"""Protein datasets as ``{'train', 'valid', 'test'}`` ProteinSplits: FLIP meltome, TAPE stability, HotProtein.

Data resolve as DESIGN.md says: an explicit ``DATA_DIR`` (the dataset's folder, or for meltome also a CSV file),
else ``hub_id`` when set, else ``$SMC_DATA_DIR/<folder>`` (folders below), else the upstream source (FLIP's zip for
meltome's FLIP splits, the HF hub for TAPE). HotProtein is not public and needs ``DATA_DIR``
(:mod:`smc_jax.tasks.protein.hotprotein`).

**FLIP meltome** (regression on melting temperature, °C; Spearman). A CSV ``sequence,target,set[,validation]``:
``set`` is train/test; FLIP's final splits flag 10% of train ``validation=True``, which become ``valid``. Files:
FLIP's ``mixed_split`` / ``human`` / ``human_cell`` (``splits/meltome/splits.zip``), or the early FLIP task files
in ``../shared/data/flip_meltome_early`` (``clustered_task``: every test row appears twice, so exact duplicates are
dropped by default; ``full_task``: cell-line replicates, train only). Without a validation flag, ``valid_fraction``
of train's distinct sequences are carved into ``valid`` (seeded). The classification view bins the targets with
edges fit on train only (:func:`bin_edges`): ``'quantile'`` (``num_bins`` classes of equal train mass; 3 by
default, spec H2) or explicit ``'edges'``.

**TAPE stability** (regression; Spearman): ``stability.{train,valid,test}.csv`` with header ``seq,label`` (53,614 /
2,512 / 12,851 rows in ``../shared/data/tape_stability``), or a hub copy (:data:`TAPE_HUB_IDS`).

Knobs (task gin bindings): ``meltome_split`` (``'mixed_split'``; ``'clustered_task'`` for the shared early file),
``hub_id`` (a hub dataset id or local path in a hub's schema; ``None`` = the default source), ``dedupe`` (meltome
``'exact'``, TAPE ``'none'``; see :mod:`~smc_jax.tasks.protein.records`), ``valid_fraction`` (0.1, used only when
the data have no validation split; FLIP's own flag is 10% too), ``valid_seed`` (0), the bins' ``scheme``
(``'quantile'`` | ``'edges'``), ``num_bins`` (3), ``edges`` (explicit inner edges, increasing; ``num_bins`` is then
``len(edges) + 1``), and :mod:`~smc_jax.tasks.protein.hub`'s column names and ``cache_dir``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smc_jax.tasks.protein import hotprotein
from smc_jax.tasks.protein.hub import FLIP_MELTOME_SPLITS, flip_meltome_csv, load_table
from smc_jax.tasks.protein.records import ProteinSplit, finish_splits, split_name

DATASETS = ("hp_s", "hp_s2c2", "hp_s2c5", "meltome", "tape_stability")
FOLDERS = {"meltome": ("flip_meltome", "flip_meltome_early"), "tape_stability": ("tape_stability",)}
MELTOME_EARLY_SPLITS = ("clustered_task", "full_task")
MELTOME_SPLITS = FLIP_MELTOME_SPLITS + MELTOME_EARLY_SPLITS
MELTOME_HUB_IDS = ("SaProtHub/Dataset-Thermostability-FLIP",)
TAPE_HUB_IDS = ("AI4Protein/TAPE_Stability", "SaProtHub/Dataset-Stability-TAPE", "katarinayuan/ProtST-Stability")
TAPE_SPLITS = ("train", "valid", "test")
BIN_SCHEMES = ("quantile", "edges")
# HotProtein's growth-temperature classes (cryo < 5, psychro 5-25, meso 25-45, thermo 45-75, hyperthermo >= 75 °C);
# recalled from the paper, not verified against its pickles (spec H3).
HOTPROTEIN_EDGES = (5.0, 25.0, 45.0, 75.0)


# ------------------------------------------------------------------------------------------------- files


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _floats(values: Sequence[str], path: Path, column: str) -> np.ndarray:
    try:
        return np.asarray([float(v) for v in values], np.float64)
    except (TypeError, ValueError):
        i = next(i for i, v in enumerate(values) if not _is_float(v))
        raise ValueError(f"{path}: row {i + 1} has {column}={values[i]!r}, not a number") from None


def _is_float(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def read_meltome_csv(path: str | os.PathLike) -> dict[str, ProteinSplit]:
    """A FLIP meltome CSV (``sequence,target[,set][,validation]``) as its splits, file order, names
    ``<stem>:<row>`` (0-based data row). No ``set`` column: every row is train. Train rows with a true
    ``validation`` flag form ``valid``."""
    path = Path(path)
    columns, rows = _read_csv(path)
    for needed in ("sequence", "target"):
        if needed not in columns:
            raise ValueError(f"{path}: no {needed!r} column (it has: {', '.join(columns) or 'no header'}); a FLIP "
                             "meltome CSV has sequence,target,set[,validation]")
    where = f"{path} column 'set'"
    sets = [split_name(r["set"], where) if "set" in columns else "train" for r in rows]
    if "validation" in columns:
        sets = ["valid" if s == "train" and str(r["validation"]).strip().lower() == "true" else s
                for s, r in zip(sets, rows, strict=True)]
    targets = _floats([r["target"] for r in rows], path, "target")
    names = np.asarray([f"{path.stem}:{i}" for i in range(len(rows))], dtype=object)
    sequences = np.asarray([r["sequence"] for r in rows], dtype=object)
    sets_arr = np.asarray(sets)
    full = ProteinSplit(names, sequences, targets)
    return {s: full.take(np.flatnonzero(sets_arr == s)) for s in ("train", "valid", "test") if (sets_arr == s).any()}


def read_tape_csv(path: str | os.PathLike) -> ProteinSplit:
    """A TAPE stability CSV (``seq,label``) in file order, names ``<file stem>:<row>``."""
    path = Path(path)
    columns, rows = _read_csv(path)
    for needed in ("seq", "label"):
        if needed not in columns:
            raise ValueError(f"{path}: no {needed!r} column (it has: {', '.join(columns) or 'no header'}); a TAPE "
                             "stability CSV has seq,label")
    names = [f"{path.stem}:{i}" for i in range(len(rows))]
    return ProteinSplit(names, [r["seq"] for r in rows], _floats([r["label"] for r in rows], path, "label"))


# -------------------------------------------------------------------------------------------- resolution


def _explicit(data_dir: str | os.PathLike | None) -> Path | None:
    if data_dir is None or str(data_dir) == "":
        return None
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise ValueError(f"DATA_DIR {str(data_dir)!r} does not exist")
    return path


def _env_folders(dataset: str) -> list[Path]:
    root = os.environ.get("SMC_DATA_DIR")
    if not root:
        return []
    return [Path(root).expanduser() / f for f in FOLDERS[dataset] if (Path(root).expanduser() / f).is_dir()]


def _csv_stems(folder: Path) -> str:
    return ", ".join(sorted(p.stem for p in folder.glob("*.csv"))) or "no .csv files"


def meltome_csv(data_dir: str | os.PathLike | None, meltome_split: str,
                cache_dir: str | os.PathLike | None = None) -> Path:
    """The meltome CSV to read: ``data_dir`` itself when it is a file, else ``<data_dir>/<meltome_split>.csv``,
    else the first ``$SMC_DATA_DIR`` folder (flip_meltome, flip_meltome_early) holding it, else FLIP's download."""
    if meltome_split not in MELTOME_SPLITS:
        raise ValueError(f"unknown meltome_split {meltome_split!r} (valid: {', '.join(MELTOME_SPLITS)})")
    explicit = _explicit(data_dir)
    folders = [explicit] if explicit is not None else _env_folders("meltome")
    if explicit is not None and explicit.is_file():
        return explicit
    for folder in folders:
        if (folder / f"{meltome_split}.csv").is_file():
            return folder / f"{meltome_split}.csv"
    if folders:
        has = "; ".join(f"{f} has {_csv_stems(f)}" for f in folders)
        raise ValueError(f"meltome_split {meltome_split!r}: no {meltome_split}.csv ({has}); set meltome_split to "
                         "one of those, or DATA_DIR to a folder holding it")
    if meltome_split not in FLIP_MELTOME_SPLITS:
        raise ValueError(f"meltome_split {meltome_split!r} is an early FLIP file with no download; set DATA_DIR to "
                         "../shared/data/flip_meltome_early or pick one of " + ", ".join(FLIP_MELTOME_SPLITS))
    return flip_meltome_csv(meltome_split, cache_dir)


def load_meltome(data_dir: str | os.PathLike | None = None, *, meltome_split: str = "mixed_split",
                 hub_id: str | None = None, dedupe: str = "exact", valid_fraction: float = 0.1, valid_seed: int = 0,
                 sequence_column: str | None = None, label_column: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> dict[str, ProteinSplit]:
    """Meltome's splits (Tm targets, float64): from the CSV :func:`meltome_csv` resolves, or from ``hub_id``
    (e.g. ``SaProtHub/Dataset-Thermostability-FLIP``) when ``data_dir`` is unset; deduped, valid carved when
    missing."""
    if _explicit(data_dir) is None and hub_id is not None:
        splits = load_table(hub_id, sequence_column=sequence_column, label_column=label_column, cache_dir=cache_dir)
    else:
        splits = read_meltome_csv(meltome_csv(data_dir, meltome_split, cache_dir))
    return finish_splits(splits, dedupe_mode=dedupe, valid_fraction=valid_fraction, valid_seed=valid_seed)


def load_tape_stability(data_dir: str | os.PathLike | None = None, *, hub_id: str | None = None,
                        dedupe: str = "none", valid_fraction: float = 0.1, valid_seed: int = 0,
                        sequence_column: str | None = None, label_column: str | None = None,
                        cache_dir: str | os.PathLike | None = None) -> dict[str, ProteinSplit]:
    """TAPE stability's train/valid/test: ``stability.{split}.csv`` in ``data_dir`` (else ``hub_id``, else
    ``$SMC_DATA_DIR/tape_stability``, else the hub's :data:`TAPE_HUB_IDS[0] <TAPE_HUB_IDS>`)."""
    explicit = _explicit(data_dir)
    folders = [explicit] if explicit is not None else ([] if hub_id is not None else _env_folders("tape_stability"))
    if folders:
        folder = folders[0]
        missing = [s for s in TAPE_SPLITS if not (folder / f"stability.{s}.csv").is_file()]
        if missing:
            raise ValueError(f"{folder}: no stability.{missing[0]}.csv (it has: {_csv_stems(folder)}); set DATA_DIR "
                             "to a folder holding stability.{train,valid,test}.csv")
        splits = {s: read_tape_csv(folder / f"stability.{s}.csv") for s in TAPE_SPLITS}
    else:
        splits = load_table(hub_id or TAPE_HUB_IDS[0], sequence_column=sequence_column, label_column=label_column,
                            cache_dir=cache_dir)
    return finish_splits(splits, dedupe_mode=dedupe, valid_fraction=valid_fraction, valid_seed=valid_seed)


def load_splits(dataset: str, data_dir: str | os.PathLike | None = None, **options: Any) -> dict[str, ProteinSplit]:
    """The splits of ``dataset`` (one of :data:`DATASETS`) with its loader's keyword options."""
    if dataset == "meltome":
        return load_meltome(data_dir, **options)
    if dataset == "tape_stability":
        return load_tape_stability(data_dir, **options)
    if dataset in hotprotein.LAYOUTS:
        return hotprotein.load_hotprotein(dataset, data_dir, **options)
    raise ValueError(f"unknown protein dataset {dataset!r} (valid: {', '.join(DATASETS)})")


# ------------------------------------------------------------------------------------------------ binning


def bin_edges(train_targets: Sequence[float] | np.ndarray, scheme: str = "quantile", num_bins: int = 3,
              edges: Sequence[float] | None = None) -> np.ndarray:
    """The inner class edges (float64, increasing, ``num_bins - 1`` of them) for binning regression targets:
    ``'quantile'`` fits the ``k/num_bins`` quantiles of ``train_targets`` (pass train only); ``'edges'`` takes
    ``edges`` as given (``num_bins`` unused)."""
    if scheme not in BIN_SCHEMES:
        raise ValueError(f"unknown bin scheme {scheme!r} (valid: {', '.join(BIN_SCHEMES)})")
    if scheme == "edges":
        if edges is None or len(edges) == 0:
            raise ValueError("scheme='edges' needs edges, e.g. (49.1, 53.2)")
        out = np.asarray(edges, np.float64)
    else:
        if int(num_bins) < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        targets = np.asarray(train_targets, np.float64)
        if targets.size == 0:
            raise ValueError("cannot fit quantile bins on an empty train split")
        out = np.quantile(targets, np.arange(1, int(num_bins)) / int(num_bins))
    if out.ndim != 1 or not np.all(np.diff(out) > 0):
        raise ValueError(f"bin edges must increase strictly, got {out.tolist()} (too many bins for the distinct "
                         "train targets?)")
    return out


def apply_bins(targets: Sequence[float] | np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Class ``k`` (int64) for ``edges[k-1] <= target < edges[k]``: ``len(edges) + 1`` classes."""
    return np.searchsorted(np.asarray(edges, np.float64), np.asarray(targets, np.float64), side="right").astype(
        np.int64)


def class_priors(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """The fraction of ``labels`` in each of ``num_classes`` classes (float64; zeros for no labels)."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=int(num_classes)).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def binned(splits: dict[str, ProteinSplit], scheme: str = "quantile", num_bins: int = 3,
           edges: Sequence[float] | None = None) -> tuple[dict[str, ProteinSplit], np.ndarray]:
    """Every split with its targets replaced by classes, the edges fit on ``splits['train']``; and the edges."""
    fitted = bin_edges(splits["train"].labels, scheme, num_bins, edges)
    return {s: split.with_labels(apply_bins(split.labels, fitted)) for s, split in splits.items()}, fitted
