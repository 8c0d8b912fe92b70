"""Protein tables from the HF hub (or a local copy in a hub's schema) and FLIP's published meltome splits.

:func:`load_table` reads any sequence/label table through ``datasets.load_dataset``: a hub id, a local folder of
data files (splits from the file names, as the hub names them) or one local csv/tsv/json/jsonl/parquet file. Columns
are found by name (:data:`SEQUENCE_COLUMNS`, :data:`LABEL_COLUMNS`, :data:`SPLIT_COLUMNS`, :data:`NAME_COLUMNS`,
first match) unless given. Splits come from a split column when the table has one (SaProtHub's ``stage``, FLIP's
``set``), else from the dataset's own splits; FLIP's ``validation`` flag moves flagged train rows to ``valid``.
SaProtHub's structure-aware sequences (each residue followed by a lower-case Foldseek letter or ``#``) are reduced to
their residues when every sequence of the table has that form.

:func:`flip_meltome_csv` downloads FLIP's ``splits/meltome/splits.zip`` once into the cache and extracts one split
(``mixed_split``, ``human``, ``human_cell``). No checksum is published for it, so the archive is only checked to be
a zip holding that file. Nothing here is reached from the tests' network-free runs: tests load local files.

Knobs (task gin bindings): ``hub_id`` (the dataset id or local path), ``sequence_column``, ``label_column``,
``split_column`` (``None`` = found by name), ``cache_dir`` (``datasets``' cache; ``None`` = its default).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smc_jax.tasks.protein.records import SPLIT_ALIASES, SPLIT_ORDER, ProteinSplit, split_name

SEQUENCE_COLUMNS = ("sequence", "seq", "aa_seq", "protein", "primary", "prot_seq", "protein_sequence")
LABEL_COLUMNS = ("target", "label", "labels", "tm", "stability_score", "score", "fitness")
SPLIT_COLUMNS = ("set", "stage", "split")
NAME_COLUMNS = ("name", "id", "protein_id", "seq_id", "uniprot_id", "accession")
FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}

FLIP_MELTOME_URL = "https://github.com/J-SNACKKB/FLIP/raw/main/splits/meltome/splits.zip"
FLIP_MELTOME_SPLITS = ("mixed_split", "human", "human_cell")
CACHE_DIR = Path.home() / ".cache" / "smc_jax"  # $SMC_CACHE_DIR overrides it

_STRUCTURE_AWARE = re.compile(r"(?:[A-Z][a-z#])+")
_TRUE = {"true", "1", "yes"}


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:200]


def _open(source: str, cache_dir: str | os.PathLike | None) -> Any:
    """``datasets.load_dataset`` on a hub id, a local folder or a local data file, as a DatasetDict."""
    import datasets

    path = Path(source).expanduser()
    cache = None if cache_dir is None else str(cache_dir)
    suffix = path.suffix.lower()
    if path.is_file() and suffix not in FILE_BUILDERS:
        raise ValueError(f"{source}: not a data file (expected {', '.join(FILE_BUILDERS)})")
    try:
        if path.is_file():
            extra = {"delimiter": "\t"} if suffix == ".tsv" else {}
            return datasets.load_dataset(FILE_BUILDERS[suffix], data_files={"train": str(path)}, cache_dir=cache,
                                         **extra)
        return datasets.load_dataset(str(path) if path.is_dir() else source, cache_dir=cache)
    except Exception as e:  # noqa: BLE001 - offline, missing package, unknown id: all mean "use a local copy"
        raise ValueError(f"could not load protein data {source!r} ({_one_line(e)}); set DATA_DIR to a local copy "
                         "or hub_id to another dataset") from e


def _column(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str, source: str,
            required: bool = True) -> str | None:
    if given is not None:
        if given not in columns:
            raise ValueError(f"{source}: no {what} column {given!r} (it has: {', '.join(columns)})")
        return given
    lower = {c.lower(): c for c in columns}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise ValueError(f"{source}: no {what} column (looked for {', '.join(candidates)}; it has: "
                         f"{', '.join(columns)}); set {what}_column")
    return None


def structure_aware(sequences: Sequence[str]) -> bool:
    """Whether every sequence is SaProt's structure-aware form: residue, Foldseek letter (lower case) or ``#``,
    alternating (``M#AdKv...``)."""
    return len(sequences) > 0 and all(_STRUCTURE_AWARE.fullmatch(s) for s in sequences)


def _labels(values: list[Any], source: str, column: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    try:
        out = np.asarray([np.nan if v is None else float(v) for v in values], np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: column {column!r} holds non-numeric labels ({_one_line(e)})") from None
    if np.isnan(out).any():
        raise ValueError(f"{source}: column {column!r} has {int(np.isnan(out).sum())} missing labels")
    return out


def load_table(source: str, *, sequence_column: str | None = None, label_column: str | None = None,
               split_column: str | None = None, cache_dir: str | os.PathLike | None = None
               ) -> dict[str, ProteinSplit]:
    """Every split of the table ``source`` (hub id, local folder or local data file) as ProteinSplits keyed
    ``train`` / ``valid`` / ``test`` (other split names kept as they are), rows in the dataset's order."""
    tables = _open(source, cache_dir)
    first = next(iter(tables.values()))
    columns = list(first.column_names)
    seq_col = _column(columns, sequence_column, SEQUENCE_COLUMNS, "sequence", source)
    label_col = _column(columns, label_column, LABEL_COLUMNS, "label", source)
    set_col = _column(columns, split_column, SPLIT_COLUMNS, "split", source, required=False)
    name_col = _column(columns, None, NAME_COLUMNS, "name", source, required=False)
    flag_col = "validation" if "validation" in columns and set_col is not None else None
    rows: dict[str, dict[str, list[Any]]] = {}
    for hub_split, table in tables.items():
        seqs = [str(s) for s in table[seq_col]]
        labels = table[label_col]
        names = ([str(n) for n in table[name_col]] if name_col else
                 [f"{source}:{hub_split}:{i}" for i in range(len(seqs))])
        if set_col is not None:
            where = f"{source} column {set_col!r}"
            targets = [split_name(v, where) for v in table[set_col]]
            if flag_col is not None:
                flags = [str(v).strip().lower() in _TRUE for v in table[flag_col]]
                targets = ["valid" if t == "train" and f else t for t, f in zip(targets, flags, strict=True)]
        else:
            key = str(hub_split).lower()
            targets = [SPLIT_ALIASES.get(key, str(hub_split))] * len(seqs)
        for t, n, s, y in zip(targets, names, seqs, labels, strict=True):
            bucket = rows.setdefault(t, {"names": [], "sequences": [], "labels": []})
            bucket["names"].append(n)
            bucket["sequences"].append(s)
            bucket["labels"].append(y)
    if structure_aware([s for b in rows.values() for s in b["sequences"]]):
        for b in rows.values():
            b["sequences"] = [s[0::2] for s in b["sequences"]]
    order = [s for s in SPLIT_ORDER if s in rows] + sorted(s for s in rows if s not in SPLIT_ORDER)
    return {s: ProteinSplit(rows[s]["names"], rows[s]["sequences"], _labels(rows[s]["labels"], source, label_col))
            for s in order}


# ------------------------------------------------------------------------------------------- FLIP meltome


def _cache_root(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir if cache_dir is not None else os.environ.get("SMC_CACHE_DIR") or CACHE_DIR).expanduser()


def extract_flip_csv(archive: str | os.PathLike, split: str, target: str | os.PathLike) -> Path:
    """Extract ``<split>.csv`` (in any folder of the zip ``archive``) to ``target``, atomically."""
    target = Path(target)
    try:
        with zipfile.ZipFile(archive) as z:
            members = [m for m in z.namelist()
                       if Path(m).name == f"{split}.csv" and not m.startswith("__MACOSX")]
            if not members:
                has = sorted(Path(m).stem for m in z.namelist() if m.endswith(".csv") and "__MACOSX" not in m)
                raise ValueError(f"{archive} holds no {split}.csv (it has: {', '.join(has) or 'no csv'})")
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{split}-")
            with os.fdopen(fd, "wb") as out, z.open(members[0]) as src:
                shutil.copyfileobj(src, out)
            os.replace(tmp, target)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{archive} is not a valid zip ({e}); delete it to download it again") from None
    return target


def flip_meltome_csv(split: str, cache_dir: str | os.PathLike | None = None, url: str = FLIP_MELTOME_URL) -> Path:
    """FLIP's meltome ``<split>.csv`` in ``<cache>/protein/flip_meltome/`` (cache: ``cache_dir``, else
    ``$SMC_CACHE_DIR``, else ``~/.cache/smc_jax``), downloading ``splits.zip`` from ``url`` the first time.
    Refused offline (``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` set)."""
    if split not in FLIP_MELTOME_SPLITS:
        raise ValueError(f"unknown FLIP meltome split {split!r} (valid: {', '.join(FLIP_MELTOME_SPLITS)})")
    folder = _cache_root(cache_dir) / "protein" / "flip_meltome"
    target = folder / f"{split}.csv"
    if target.is_file():
        return target
    archive = folder / "splits.zip"
    if not archive.is_file():
        offline = [v for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE") if os.environ.get(v, "") not in ("", "0")]
        if offline:
            raise ValueError(f"FLIP meltome {split} is not cached in {folder} and {offline[0]} is set; set DATA_DIR "
                             f"to a folder holding {split}.csv")
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".splits-")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=120) as src:  # noqa: S310
                shutil.copyfileobj(src, out)
            os.replace(tmp, archive)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise ValueError(f"could not download FLIP meltome splits from {url} ({_one_line(e)}); set DATA_DIR to "
                             f"a folder holding {split}.csv") from None
    return extract_flip_csv(archive, split, target)
