"""The ESM tokenizer as fast numpy code: residues to int32 token ids with ``<cls> … <eos>``, both truncation modes.

The vocabulary is fair-esm's "ESM-1b" alphabet (``spec/protein.md`` §2), shared by ESM-1b and ESM-2::

    0 <cls>  1 <pad>  2 <eos>  3 <unk>  4 L  5 A  6 G  7 V  8 S  9 E  10 R  11 T  12 I  13 D  14 P  15 K
    16 Q  17 N  18 F  19 Y  20 M  21 H  22 W  23 C  24 X  25 B  26 U  27 Z  28 O  29 .  30 -  31 <null_1>  32 <mask>

A sequence is normalised before lookup: whitespace is dropped, letters are upper-cased, and every character
outside the vocabulary becomes ``X`` (``J``, ``*``, digits, ...), one ``X`` per character. HF's ``EsmTokenizer``
instead merges a run of unknown characters (and any lower-case run) into one ``<unk>``, which changes the length;
fair-esm raises. On in-vocabulary strings the ids equal ``EsmTokenizer``'s. Sequences are residues only: ``<mask>``
written inside a sequence string is not parsed as a token.

Truncation (``max_length`` counts every token, cls and eos included):

- ``'smc'`` (faithful default, ``max_length`` 1022): SMC-Bench's ``--truncate`` cuts the padded batch to
  ``toks[:, :1022]``, so a long sequence keeps cls + ``max_length - 1`` residues and loses its eos.
- ``'esm'`` (``max_length`` 1024): ``cls + residues[:max_length - 2] + eos``, as HF's ``truncation=True`` and
  fair-esm's 1024-token limit; eos is always kept.

Knobs (task gin bindings): ``truncation`` (``'smc'`` | ``'esm'``), ``max_length`` (``None`` = 1022 for smc, 1024
for esm), ``unknown`` (the residue unknown characters become, ``'X'``; ``None`` maps each to ``<unk>``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ESM_VOCAB: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
)
CLS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 32
TRUNCATIONS = ("smc", "esm")
DEFAULT_MAX_LENGTH = {"smc": 1022, "esm": 1024}
MODEL_MAX_LENGTH = 1024  # ESM-1b's positions: cls + 1022 residues + eos
CACHE_DIR = Path.home() / ".cache" / "smc_jax"  # $SMC_CACHE_DIR overrides it

_UNK_CHAR = "\x00"  # what a normalised string holds for a character mapped to <unk> (unknown=None)


def resolve_truncation(truncation: str, max_length: int | None) -> int:
    """The token cap ``max_length`` resolves to for ``truncation`` (``None``: 1022 for smc, 1024 for esm); a
    one-line ValueError for an unknown mode or a cap below 3 tokens."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"unknown truncation {truncation!r} (valid: {', '.join(TRUNCATIONS)})")
    cap = DEFAULT_MAX_LENGTH[truncation] if max_length is None else int(max_length)
    if cap < 3:
        raise ValueError(f"max_length must be >= 3 tokens (cls, a residue, eos), got {max_length}")
    return cap


class _Normaliser(dict):
    """A ``str.translate`` table: whitespace dropped, vocabulary residues upper-cased, anything else ``unknown``
    (one character each); entries are computed on first sight and cached."""

    def __init__(self, residues: frozenset[str], unknown: str):
        super().__init__()
        self.residues = residues
        self.unknown = unknown

    def __missing__(self, code: int) -> str | None:
        char = chr(code)
        if char.isspace():
            out = None
        else:
            upper = char.upper()
            out = upper if upper in self.residues else self.unknown
        self[code] = out
        return out


class ProteinTokenizer:
    """ESM-style tokenizer over a vocabulary of ``<cls> <pad> <eos> <unk>``, single-character residues and other
    special tokens (``ESM_VOCAB`` by default). Token ids are the positions in ``tokens``."""

    def __init__(self, tokens: Sequence[str] = ESM_VOCAB, unknown: str | None = "X"):
        self.tokens = tuple(tokens)
        index = {t: i for i, t in enumerate(self.tokens)}
        if len(index) != len(self.tokens):
            raise ValueError("the tokenizer vocabulary has duplicate tokens")
        missing = [t for t in ("<cls>", "<pad>", "<eos>", "<unk>") if t not in index]
        if missing:
            raise ValueError(f"the tokenizer vocabulary lacks {', '.join(missing)} (an ESM vocabulary has them)")
        self.cls_id, self.pad_id, self.eos_id, self.unk_id = (index[t] for t in ("<cls>", "<pad>", "<eos>", "<unk>"))
        self.mask_id = index.get("<mask>")
        residues = [t for t in self.tokens if len(t) == 1 and not t.isspace()]
        bad = [t for t in residues if not t.isascii() or t != t.upper()]
        if bad:
            raise ValueError(f"residue tokens must be upper-case ASCII characters, got {bad}")
        if unknown is not None and unknown not in residues:
            raise ValueError(f"unknown={unknown!r} is not a residue of the vocabulary; use one of "
                             f"{''.join(residues)} or None (<unk>)")
        self.unknown = unknown
        self._table = _Normaliser(frozenset(residues), _UNK_CHAR if unknown is None else unknown)
        self._lut = np.full(128, -1, np.int32)
        for t in residues:
            self._lut[ord(t)] = index[t]
        self._lut[ord(_UNK_CHAR)] = self.unk_id

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_pretrained(cls, pretrained: str | os.PathLike, unknown: str | None = "X") -> ProteinTokenizer:
        """The vocabulary of a checkpoint's HF tokenizer (a local directory or a hub id, loaded with
        ``AutoTokenizer``); a one-line ValueError when it cannot be loaded or is not an ESM-style vocabulary."""
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(pretrained))
        except Exception as e:  # noqa: BLE001 - offline, missing files, unknown id: one message for all
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise ValueError(f"cannot load the tokenizer of {str(pretrained)!r} ({reason}); pass a checkpoint "
                             "directory with vocab.txt, or leave the tokenizer unset for the built-in ESM "
                             "vocabulary") from None
        vocab = hf.get_vocab()
        ids = sorted(vocab.values())
        if ids != list(range(len(ids))):
            raise ValueError(f"the tokenizer of {str(pretrained)!r} has non-contiguous token ids")
        by_id = {i: t for t, i in vocab.items()}
        return cls([by_id[i] for i in ids], unknown=unknown)

    # ------------------------------------------------------------------------------------------ encoding

    def normalize(self, sequence: str) -> str:
        """The sequence as the tokenizer reads it: whitespace dropped, upper-cased, unknown characters replaced
        (by ``unknown``; ``'\\x00'`` stands for ``<unk>`` when ``unknown`` is None)."""
        return sequence.translate(self._table)

    def encode(self, sequence: str, name: str | None = None, *, truncation: str = "smc",
               max_length: int | None = None) -> np.ndarray:
        """One sequence as int32 token ids ``<cls> residues <eos>``, truncated (see the module docstring)."""
        return self.encode_batch([sequence], None if name is None else [name], truncation=truncation,
                                 max_length=max_length)[0]

    def encode_batch(self, sequences: Sequence[str], names: Sequence[str] | None = None, *,
                     truncation: str = "smc", max_length: int | None = None) -> list[np.ndarray]:
        """Every sequence as int32 token ids (views of one buffer): ``<cls> residues <eos>`` truncated by
        ``truncation`` to ``max_length`` tokens. An empty sequence (no residues after dropping whitespace) is a
        one-line ValueError naming it (``names[i]``, else its index)."""
        cap = resolve_truncation(truncation, max_length)
        normalised = [str(s).translate(self._table) for s in sequences]
        if not normalised:
            return []
        lengths = np.fromiter(map(len, normalised), np.int64, len(normalised))
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            i = int(empty[0])
            which = repr(str(names[i])) if names is not None else f"at index {i}"
            raise ValueError(f"protein sequence {which} is empty (no residues after removing whitespace); drop "
                             "it from the data or fix its source file")
        residues = self._lut[np.frombuffer("".join(normalised).encode("ascii"), np.uint8)]
        if truncation == "esm":
            kept = np.minimum(lengths, cap - 2)
            has_eos = np.ones(len(lengths), bool)
        else:  # the first cap tokens of cls + residues + eos: a cut row keeps cap - 1 residues and no eos
            kept = np.minimum(lengths, cap - 1)
            has_eos = lengths + 2 <= cap
        if (kept < lengths).any():
            row_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
            within = np.arange(residues.size) - row_start
            residues = residues[within < np.repeat(kept, lengths)]
        starts = np.cumsum(kept) - kept
        # cls before each row's residues, eos after them (where kept), interleaved so that at a shared position a
        # row's eos precedes the next row's cls (np.insert keeps the given order of equal positions)
        at = np.stack([starts, starts + kept], 1).ravel()
        values = np.tile(np.array([self.cls_id, self.eos_id], np.int32), len(kept))
        used = np.stack([np.ones(len(kept), bool), has_eos], 1).ravel()
        out = np.insert(residues, at[used], values[used])
        sizes = kept + 1 + has_eos
        return np.split(out, np.cumsum(sizes)[:-1])

    def pad(self, encoded: Sequence[np.ndarray], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, attention_mask)``, both int32 ``[len(encoded), length]``: rows right-padded with ``pad_id``
        (mask 0 on pads). ``length`` defaults to the longest row; a longer row is a ValueError."""
        longest = max((len(e) for e in encoded), default=0)
        length = longest if length is None else int(length)
        if longest > length:
            raise ValueError(f"a row has {longest} tokens, more than the padded length {length}")
        ids = np.full((len(encoded), length), self.pad_id, np.int32)
        mask = np.zeros((len(encoded), length), np.int32)
        for i, e in enumerate(encoded):
            ids[i, :len(e)] = e
            mask[i, :len(e)] = 1
        return ids, mask

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Token ids back to text: residues as letters, special tokens by name, padding dropped."""
        return "".join(self.tokens[int(i)] for i in np.asarray(ids).ravel() if int(i) != self.pad_id)

    # --------------------------------------------------------------------------------- HF tokenizer

    def hf_tokenizer(self, cache_dir: str | os.PathLike | None = None) -> Any:
        """This vocabulary as a ``transformers.EsmTokenizer`` (a slow tokenizer; no network): ``vocab.txt`` is
        written once under ``cache_dir`` (default ``$SMC_CACHE_DIR`` or ``~/.cache/smc_jax``, in
        ``protein/esm_vocab-<hash>/``; a temporary folder when that is not writable)."""
        from transformers import EsmTokenizer

        return EsmTokenizer(vocab_file=str(write_vocab(self.tokens, cache_dir)), model_max_length=MODEL_MAX_LENGTH)


def write_vocab(tokens: Sequence[str] = ESM_VOCAB, cache_dir: str | os.PathLike | None = None) -> Path:
    """``vocab.txt`` (one token a line) for ``tokens`` in ``<cache>/protein/esm_vocab-<sha256[:16]>/``, written
    atomically once; under a fresh temporary folder when the cache is not writable."""
    text = "\n".join(tokens) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    root = Path(cache_dir if cache_dir is not None else os.environ.get("SMC_CACHE_DIR") or CACHE_DIR).expanduser()
    folder = root / "protein" / f"esm_vocab-{digest}"
    path = folder / "vocab.txt"
    if path.is_file() and path.read_text() == text:
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".vocab-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        path = Path(tempfile.mkdtemp(prefix="smc_jax_esm_vocab-")) / "vocab.txt"
        path.write_text(text)
    return path


def esm_hf_tokenizer(cache_dir: str | os.PathLike | None = None) -> Any:
    """The ESM-1b / ESM-2 ``EsmTokenizer`` built offline from :data:`ESM_VOCAB` (``model_max_length`` 1024)."""
    return ProteinTokenizer().hf_tokenizer(cache_dir)
