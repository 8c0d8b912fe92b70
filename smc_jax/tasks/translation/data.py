"""Parallel text for the translation family: languages, settings, directions, the corpus readers (OPUS-100 on the
hub or as parquet/text files, FLORES-200, Tatoeba) and the on-disk token cache (spec translation.md §2, §6).

Every reader returns one bitext per English-centric language pair: ``(english lines, other lines)``, line ``i``
translating line ``i``. ``en-fr`` and ``fr-en`` are two directions of the same bitext.

The token cache stores each tokenised side as two ``.npy`` arrays (``tokens`` int32, all sentences concatenated;
``offsets`` int64, ``n + 1`` boundaries) under ``<cache>/<key>/``, the key a hash of the tokenizer's files and of
the data (file bytes, or the hub dataset's fingerprint), so a second run memory-maps them and tokenises nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

LANGS = ("fr", "cs", "de", "gu", "ja", "my", "ro", "ru", "vi", "zh")  # SPEC §1.4, the 10-to-10 order
SETTINGS = {"2to2": LANGS[:2], "5to5": LANGS[:5], "10to10": LANGS}
EVAL_DIRECTIONS = tuple(d for x in LANGS for d in (f"en-{x}", f"{x}-en"))  # the paper's 20
SOURCES = ("opus100", "flores200", "tatoeba", "local")
MBART_CODES = {"en": "en_XX", "fr": "fr_XX", "cs": "cs_CZ", "de": "de_DE", "gu": "gu_IN", "ja": "ja_XX",
               "my": "my_MM", "ro": "ro_RO", "ru": "ru_RU", "vi": "vi_VN", "zh": "zh_CN"}
FLORES_CODES = {"en": "eng_Latn", "fr": "fra_Latn", "cs": "ces_Latn", "de": "deu_Latn", "gu": "guj_Gujr",
                "ja": "jpn_Jpan", "my": "mya_Mymr", "ro": "ron_Latn", "ru": "rus_Cyrl", "vi": "vie_Latn",
                "zh": "zho_Hans"}
TATOEBA_CODES = {"fr": "fra", "cs": "ces", "de": "deu", "ja": "jpn", "ro": "ron", "ru": "rus", "vi": "vie",
                 "zh": "cmn"}
OPUS100_ID = "Helsinki-NLP/opus-100"
OPUS100_TRAIN_SIZES = {"fr": 1_000_000, "cs": 1_000_000, "de": 1_000_000, "gu": 318_306, "ja": 1_000_000,
                       "my": 24_594, "ro": 1_000_000, "ru": 1_000_000, "vi": 1_000_000, "zh": 1_000_000}
SPLITS = {"opus100": ("train", "validation", "test"), "flores200": ("dev", "devtest"), "tatoeba": ("test",),
          "local": ("train", "dev", "test")}
DATA_FOLDERS = {"flores200": "flores200", "tatoeba": "tatoeba_laser", "local": "opus100", "opus100": "opus100"}


class Direction(NamedTuple):
    src: str
    tgt: str

    @property
    def name(self) -> str:
        return f"{self.src}-{self.tgt}"

    @property
    def other(self) -> str:
        """The non-English language of the direction."""
        return self.tgt if self.src == "en" else self.src


def parse_direction(text: str) -> Direction:
    """``'en-fr'`` -> ``Direction('en', 'fr')``; one-line error unless English-centric over :data:`LANGS`."""
    parts = str(text).split("-")
    if len(parts) != 2 or "en" not in parts or parts[0] == parts[1]:
        raise ValueError(f"direction {text!r} is not 'en-xx' or 'xx-en'")
    other = parts[1] if parts[0] == "en" else parts[0]
    if other not in LANGS:
        raise ValueError(f"direction {text!r}: unknown language {other!r}; known: {', '.join(LANGS)}")
    return Direction(parts[0], parts[1])


def setting_directions(setting: str) -> tuple[Direction, ...]:
    """The training directions of ``2to2`` / ``5to5`` / ``10to10``: en->x and x->en for each x."""
    if setting not in SETTINGS:
        raise ValueError(f"TranslationTask.setting {setting!r} unknown; choose one of {', '.join(SETTINGS)}")
    return tuple(d for x in SETTINGS[setting] for d in (Direction("en", x), Direction(x, "en")))


def resolve_data_dir(source: str, data_dir: str | None) -> Path | None:
    """``data_dir``, else ``$SMC_DATA_DIR/<folder>`` when it exists; ``None`` means the hub (OPUS-100 only)."""
    if data_dir is not None:
        return Path(data_dir)
    root = os.environ.get("SMC_DATA_DIR")
    if root and (Path(root) / DATA_FOLDERS[source]).is_dir():
        return Path(root) / DATA_FOLDERS[source]
    if source == "opus100":
        return None
    raise ValueError(f"TranslationTask.source={source!r} needs DATA_DIR (a folder laid out like "
                     f"../shared/data/{DATA_FOLDERS[source]}) or $SMC_DATA_DIR")


def _missing(folder: Path, direction: str, split: str, path: Path, binding: str) -> ValueError:
    return ValueError(f"{folder} has no {split} data for direction {direction} (looked for {path.name}); "
                      f"narrow the directions with {binding} or add the files")


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1] if path.stat().st_size else []


def text_files(source: str, folder: Path, lang: str, split: str, binding: str) -> tuple[Path, Path]:
    """``(english file, other file)`` of a local layout: FLORES-200 ``<split>/<code>.<split>``, Tatoeba
    ``tatoeba.<xxx>-eng.{xxx,eng}``, or the OPUS-100 release ``opus.en-<x>-<split>.{en,<x>}``."""
    if source == "flores200":
        files = tuple(folder / split / f"{FLORES_CODES[k]}.{split}" for k in ("en", lang))
    elif source == "tatoeba":
        code = TATOEBA_CODES.get(lang, lang)
        files = (folder / f"tatoeba.{code}-eng.eng", folder / f"tatoeba.{code}-eng.{code}")
    elif source == "local":
        files = tuple(folder / f"opus.en-{lang}-{split}.{k}" for k in ("en", lang))
    else:
        raise ValueError(f"{source!r} has no local text layout")
    for f in files:
        if not f.is_file():
            raise _missing(folder, f"en-{lang}", split, f, binding)
    return files  # type: ignore[return-value]


def read_text_bitext(source: str, folder: Path, lang: str, split: str, binding: str) -> tuple[list[str], list[str]]:
    en_file, x_file = text_files(source, folder, lang, split, binding)
    en, x = _read_lines(en_file), _read_lines(x_file)
    if len(en) != len(x):
        raise ValueError(f"{en_file} and {x_file} have {len(en)} and {len(x)} lines")
    return en, x


def opus100_config(lang: str) -> str:
    """The hub config of the pair: the two codes sorted (``cs-en``, ``en-fr``)."""
    return "-".join(sorted(("en", lang)))


def load_opus100(lang: str, split: str, folder: Path | None, binding: str) -> Any:
    """The OPUS-100 split of ``en-<lang>`` as a ``datasets.Dataset`` (``translation`` column): from the hub, or
    from ``folder/<config>/<split>-*.parquet`` files in the hub's schema."""
    import datasets

    config = opus100_config(lang)
    if folder is None:
        return datasets.load_dataset(OPUS100_ID, config, split=split)
    files = sorted((folder / config).glob(f"{split}-*.parquet"))
    if not files:
        raise _missing(folder, f"en-{lang}", split, folder / config / f"{split}-*.parquet", binding)
    return datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)


def opus100_columns(dataset: Any, lang: str, limit: int | None = None) -> tuple[Sequence[str], Sequence[str]]:
    """The English and ``lang`` sides of an OPUS-100 dataset, read from the Arrow struct by code."""
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    column = table.column("translation").combine_chunks()
    if limit is not None:
        column = column.slice(0, limit)
    return column.field("en").to_pylist(), column.field(lang).to_pylist()


# --------------------------------------------------------------------------------------------- token cache


class TokenArrays(NamedTuple):
    """Tokenised sentences: ``tokens[offsets[i]:offsets[i + 1]]`` are sentence ``i``'s piece ids."""

    tokens: np.ndarray  # int32
    offsets: np.ndarray  # int64, n + 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def concat_arrays(parts: Sequence[TokenArrays]) -> tuple[TokenArrays, np.ndarray]:
    """One array of all ``parts`` and the index of each part's first sentence in it."""
    tokens = np.concatenate([p.tokens for p in parts]) if parts else np.zeros(0, np.int32)
    starts, offsets, base = [0], [np.zeros(1, np.int64)], 0
    for p in parts:
        offsets.append(p.offsets[1:] - p.offsets[0] + base)
        base += int(p.offsets[-1] - p.offsets[0])
        starts.append(starts[-1] + len(p))
    return TokenArrays(tokens.astype(np.int32), np.concatenate(offsets)), np.asarray(starts, np.int64)


def tokenizer_hash(directory: str | Path) -> str:
    """A hash of the tokenizer's files in a checkpoint directory."""
    h = hashlib.sha256()
    for name in ("sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        f = Path(directory) / name
        if f.is_file():
            h.update(name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def file_hash(paths: Sequence[Path], limit: int | None = None) -> str:
    h = hashlib.sha256(repr(limit).encode())
    for p in paths:
        h.update(str(Path(p).name).encode() + Path(p).read_bytes())
    return h.hexdigest()[:16]


class TokenCache:
    """Token arrays on disk under ``root/<tokenizer hash>-<data hash>/``; :attr:`hits` / :attr:`misses` count
    lookups (a second run over the same data and tokenizer only hits)."""

    def __init__(self, root: str | Path, tokenizer_key: str):
        self.root, self.tokenizer_key = Path(root), tokenizer_key
        self.hits = self.misses = 0

    def get(self, data_key: str, texts: Callable[[], Sequence[str]], encode: Callable[[list[str]], list[list[int]]],
            chunk: int = 20_000) -> TokenArrays:
        """The token arrays of ``texts()`` under ``data_key``: read from disk, or encoded in chunks and written."""
        folder = self.root / f"{self.tokenizer_key}-{data_key}"
        if (folder / "done.json").is_file():
            self.hits += 1
            return TokenArrays(np.load(folder / "tokens.npy", mmap_mode="r"), np.load(folder / "offsets.npy"))
        self.misses += 1
        lines = texts()
        pieces, lengths = [], []
        for start in range(0, len(lines), chunk):
            ids = encode(list(lines[start:start + chunk]))
            lengths.append(np.fromiter((len(s) for s in ids), np.int64, len(ids)))
            pieces.append(np.fromiter((t for s in ids for t in s), np.int32, int(lengths[-1].sum())))
        tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths) if lengths else [])]).astype(np.int64)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tmp{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        np.save(tmp / "tokens.npy", tokens)
        np.save(tmp / "offsets.npy", offsets)
        for name in ("tokens.npy", "offsets.npy"):
            os.replace(tmp / name, folder / name)
        tmp.rmdir()
        (folder / "done.json").write_text(json.dumps({"sentences": len(lines), "tokens": int(len(tokens))}))
        return TokenArrays(tokens, offsets)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SMC_CACHE_DIR", Path.home() / ".cache" / "smc_jax")) / "translation_tokens"


class Bitext(NamedTuple):
    """One language pair's split: raw lines (for references) and token arrays of both sides."""

    lang: str
    en_text: Sequence[str]
    x_text: Sequence[str]
    en: TokenArrays
    x: TokenArrays


def load_bitext(source: str, folder: Path | None, lang: str, split: str, cache: TokenCache,
                encode: Callable[[list[str]], list[list[int]]], limit: int | None, binding: str,
                keep_text: bool = True) -> Bitext:
    """The tokenised ``en-<lang>`` bitext of ``split`` (first ``limit`` pairs), through the token cache."""
    if source not in SOURCES:
        raise ValueError(f"TranslationTask.source {source!r} unknown; choose one of {', '.join(SOURCES)}")
    if split not in SPLITS[source]:
        raise ValueError(f"{source} has splits {', '.join(SPLITS[source])}, not {split!r} ({binding})")
    if source == "opus100":
        dataset = load_opus100(lang, split, folder, binding)
        key = hashlib.sha256(f"{getattr(dataset, '_fingerprint', '')}{limit}".encode()).hexdigest()[:16]
        got: dict[str, Sequence[str]] = {}

        def side(k: int) -> Sequence[str]:
            if "cols" not in got:
                got["cols"] = opus100_columns(dataset, lang, limit)  # type: ignore[assignment]
            return got["cols"][k]  # type: ignore[index]
        en = cache.get(f"{key}-en", lambda: side(0), encode)
        x = cache.get(f"{key}-{lang}", lambda: side(1), encode)
        if keep_text:
            en_text, x_text = side(0), side(1)
        else:
            en_text, x_text = (), ()
        return Bitext(lang, en_text, x_text, en, x)
    en_lines, x_lines = read_text_bitext(source, folder, lang, split, binding)  # type: ignore[arg-type]
    en_lines, x_lines = en_lines[:limit], x_lines[:limit]
    files = text_files(source, folder, lang, split, binding)  # type: ignore[arg-type]
    key = file_hash(files, limit)
    en = cache.get(f"{key}-en", lambda: en_lines, encode)
    x = cache.get(f"{key}-{lang}", lambda: x_lines, encode)
    return Bitext(lang, en_lines if keep_text else (), x_lines if keep_text else (), en, x)
