"""HotProtein (Chen et al., ICLR 2023) as SMC-Bench reads it: a split pickle plus one FASTA file per name.

The data are published only on Google Drive (linked from the VITA-Group/HotProtein README): download them and point
``DATA_DIR`` (or ``$SMC_DATA_DIR/hotprotein``) at the folder holding ``S/``, ``d1/``, ``d2/``. The split pickle is a
dict ``{train_names, train_labels, test_names, test_labels}`` (lists; it is unpickled, so load only files you
trust). Each name's sequence is ``<fasta_dir>/<name>.fasta`` read as SMC-Bench's ``PickleBatchedDataset`` does:
the first line dropped, the rest joined with newlines removed (a multi-record file would concatenate its records,
headers included). Labels are floats cast as torch's ``.long()`` does (truncation toward zero) minus
``label_offset``; every class must land in ``[0, num_classes)``.

Layouts (``spec/protein.md`` §4; class counts from SMC-Bench's runs):

- ``hp_s``: ``S/S_target/`` + ``S/S_target_classification.pkl``, 5 classes, no folds;
- ``hp_s2c2``: ``d1/d1_fasta_clean/`` + ``d1/d1_{fold}_classification.pkl``, 2 classes, folds 0..9 (HotProtein's
  scripts use 1);
- ``hp_s2c5``: ``d2/d2_fasta_clean/`` + ``d2/d2_{fold}_classification.pkl``, 5 classes, any fold whose pickle
  exists (IF1 reads structures instead; the sequences serve sequence models).

Knobs (task gin bindings): ``fold``, ``split_file`` / ``fasta_dir`` (override the layout; relative to the data
folder or absolute), ``num_classes`` (``None`` = the dataset's), ``label_offset`` (SMC-Bench's ``--label-offset``,
default 0), ``regression`` (False; True keeps float targets, for the regression pickles such as ``S_target.pkl``),
``fasta_mode`` (``'smc'`` faithful | ``'first_record'``: only the first record's sequence lines), ``valid_fraction``
/ ``valid_seed`` (SMC-Bench has no validation split: default 0).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from smc_jax.tasks.protein.records import ProteinSplit, finish_splits

FOLDER = "hotprotein"  # under $SMC_DATA_DIR
FASTA_MODES = ("smc", "first_record")
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one HotProtein dataset's files are, relative to the data folder."""

    fasta_dir: str
    split_file: str  # ``{fold}`` is replaced by the fold; a file without it has no folds
    num_classes: int
    folds: tuple[int, ...] | None = None  # the known folds (None: any fold >= 0 whose file exists)

    @property
    def folded(self) -> bool:
        return "{fold}" in self.split_file


LAYOUTS = {
    "hp_s": Layout("S/S_target", "S/S_target_classification.pkl", 5),
    "hp_s2c2": Layout("d1/d1_fasta_clean", "d1/d1_{fold}_classification.pkl", 2, tuple(range(10))),
    "hp_s2c5": Layout("d2/d2_fasta_clean", "d2/d2_{fold}_classification.pkl", 5),
}


def read_fasta(path: str | os.PathLike, mode: str = "smc") -> str:
    """The sequence of a ``.fasta`` file: ``'smc'`` drops the first line and joins the rest without newlines
    (SMC-Bench); ``'first_record'`` joins the stripped lines after the first header up to the next ``>``."""
    if mode not in FASTA_MODES:
        raise ValueError(f"unknown fasta_mode {mode!r} (valid: {', '.join(FASTA_MODES)})")
    with open(path) as f:
        lines = f.readlines()[1:]
    if mode == "smc":
        return "".join(lines).replace("\n", "")
    out = []
    for line in lines:
        if line.startswith(">"):
            break
        out.append(line.strip())
    return "".join(out)


def class_labels(raw: np.ndarray, names: np.ndarray, num_classes: int, label_offset: int, what: str) -> np.ndarray:
    """``trunc(raw) - label_offset`` as int64 (torch's ``.long()`` on floats); a one-line ValueError naming the
    first example whose label is missing or falls outside ``[0, num_classes)``."""
    bad = ~np.isfinite(raw)
    classes = np.where(bad, 0, np.trunc(np.where(bad, 0, raw))).astype(np.int64) - int(label_offset)
    bad |= (classes < 0) | (classes >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what}: {names[i]!r} has label {float(raw[i])!r}, which is class {int(classes[i])} after "
                         f"label_offset={label_offset}, outside [0, {num_classes}); set label_offset or num_classes")
    return classes


def load_split_pickle(split_file: str | os.PathLike, fasta_dir: str | os.PathLike, split: str, *,
                      num_classes: int | None = None, label_offset: int = 0, fasta_mode: str = "smc",
                      limit: int | None = None) -> ProteinSplit:
    """One split (``train`` | ``test``) of a HotProtein-format pickle, its first ``limit`` names only (only their
    FASTA files are read). ``num_classes=None``: float targets (regression pickles); else int classes."""
    if split not in SPLITS:
        raise ValueError(f"unknown HotProtein split {split!r} (valid: {', '.join(SPLITS)})")
    with open(split_file, "rb") as f:
        table = pickle.load(f)  # noqa: S301 - the dataset's own format
    keys = (f"{split}_names", f"{split}_labels")
    if not isinstance(table, Mapping) or any(k not in table for k in keys):
        has = ", ".join(map(str, table)) if isinstance(table, Mapping) else type(table).__name__
        raise ValueError(f"{split_file}: expected keys {', '.join(keys)} (it has: {has})")
    names, raw = list(table[keys[0]]), list(table[keys[1]])
    if len(names) != len(raw):
        raise ValueError(f"{split_file}: {len(names)} {split}_names but {len(raw)} {split}_labels")
    names, raw = names[:limit], raw[:limit]
    fasta_dir = Path(fasta_dir)
    sequences = []
    for name in names:
        path = fasta_dir / f"{name}.fasta"
        if not path.is_file():
            raise ValueError(f"{split_file} ({split}): no FASTA file for {str(name)!r} (expected {path}); check "
                             "fasta_dir or the data download")
        sequences.append(read_fasta(path, fasta_mode))
    values = np.asarray([float(v) for v in raw], np.float64)
    names_arr = np.asarray([str(n) for n in names], dtype=object)
    if num_classes is None:
        return ProteinSplit(names_arr, sequences, values)
    labels = class_labels(values, names_arr, int(num_classes), label_offset, f"{split_file} ({split})")
    return ProteinSplit(names_arr, sequences, labels)


def resolve_root(data_dir: str | os.PathLike | None) -> Path:
    """The HotProtein folder: ``data_dir``, else ``$SMC_DATA_DIR/hotprotein``; a one-line ValueError saying where
    to get the data when neither exists."""
    if data_dir is not None and str(data_dir) != "":
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise ValueError(f"DATA_DIR {str(data_dir)!r} for HotProtein is not an existing directory")
        return root
    env = os.environ.get("SMC_DATA_DIR")
    if env and (Path(env).expanduser() / FOLDER).is_dir():
        return Path(env).expanduser() / FOLDER
    raise ValueError("HotProtein is not public on the HF hub: download it from the Google Drive links in the "
                     "VITA-Group/HotProtein README and set DATA_DIR to the folder holding S/, d1/, d2/ (or "
                     "$SMC_DATA_DIR to a folder holding hotprotein/)")


def _within(root: Path | None, path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute() or root is None:
        return p
    return root / p


def load_hotprotein(dataset: str = "hp_s", data_dir: str | os.PathLike | None = None, *, fold: int | None = None,
                    split_file: str | None = None, fasta_dir: str | None = None, num_classes: int | None = None,
                    label_offset: int = 0, regression: bool = False, fasta_mode: str = "smc",
                    valid_fraction: float = 0.0, valid_seed: int = 0,
                    limits: Mapping[str, int | None] | None = None) -> dict[str, ProteinSplit]:
    """``{'train', ['valid',] 'test'}`` of a HotProtein dataset (``hp_s`` | ``hp_s2c2`` | ``hp_s2c5``); ``limits``
    maps a split to how many of its first names to read (the validation carve works on the train rows read)."""
    if dataset not in LAYOUTS:
        raise ValueError(f"unknown HotProtein dataset {dataset!r} (valid: {', '.join(LAYOUTS)})")
    layout = LAYOUTS[dataset]
    if split_file is None and not layout.folded and fold is not None:
        raise ValueError(f"{dataset} has no folds; leave fold unset (got {fold})")
    if split_file is None and layout.folded:
        known = layout.folds
        if not isinstance(fold, (int, np.integer)) or fold < 0 or (known is not None and fold not in known):
            valid = f"{known[0]}..{known[-1]}" if known else "an integer >= 0"
            raise ValueError(f"{dataset} needs fold {valid} (HotProtein's scripts use 1), got {fold!r}")
    split_path = split_file if split_file is not None else layout.split_file.format(fold=fold)
    fasta_path = fasta_dir if fasta_dir is not None else layout.fasta_dir
    needs_root = not (Path(split_path).expanduser().is_absolute() and Path(fasta_path).expanduser().is_absolute())
    root = resolve_root(data_dir) if needs_root else None
    split_path, fasta_path = _within(root, split_path), _within(root, fasta_path)
    if not split_path.is_file():
        near = sorted(p.name for p in split_path.parent.glob("*.pkl")) if split_path.parent.is_dir() else []
        raise ValueError(f"{dataset}: split file {split_path} not found ({split_path.parent} has: "
                         f"{', '.join(near) or 'no .pkl files'}); set fold or split_file")
    if not fasta_path.is_dir():
        raise ValueError(f"{dataset}: FASTA folder {fasta_path} not found; set fasta_dir")
    classes = None if regression else (layout.num_classes if num_classes is None else int(num_classes))
    limits = dict(limits or {})
    splits = {s: load_split_pickle(split_path, fasta_path, s, num_classes=classes, label_offset=label_offset,
                                   fasta_mode=fasta_mode, limit=limits.get(s)) for s in SPLITS}
    return finish_splits(splits, valid_fraction=valid_fraction, valid_seed=valid_seed)
