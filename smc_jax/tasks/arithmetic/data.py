"""Arithmetic reasoning (MAWPS, ASDiv-A, SVAMP in the SVAMP format): data, vocabularies, batches, metrics.

Faithful to SPEC §1.2: whitespace tokenisation with ``number{i}`` → ``NUM`` (positions kept), prefix
equations with ``number{i}`` → ``N{i}``, constants seen ≥ 5 times (train + dev) as generate numbers, the
output vocabulary ``operators (train order) + generate numbers + N0..N{copy_nums-1} + UNK``, ``num_stack``
for copy resolution, and the prefix evaluator with its value/equation accuracy rules. The GTS model, its
loss and decoding live with the model; this module is task data and scoring only.

The MAWPS / ASDiv-A / SVAMP CSVs ship inside the package (``svamp_data.tar.xz``: the SVAMP repository's
``data/`` files, MIT licence in ``SVAMP_LICENSE``, origin in ``SVAMP_README.md``), so training works offline on a
fresh machine; :func:`resolve_data_dir` says where the files are read from.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import functools
import hashlib
import lzma
import operator
import os
import re
import shutil
import tarfile
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

OPERATORS = ("+", "-", "*", "/", "^")
GENERATE_MIN_COUNT = 5

# dataset name -> (folder under the data root, cross-validated)
DATASETS = {"mawps": ("cv_mawps", True), "asdiv": ("cv_asdiv-a", True), "svamp": ("mawps-asdiv-a_svamp", False)}
NUM_FOLDS = 5

PACKAGED_ARCHIVE = Path(__file__).with_name("svamp_data.tar.xz")  # the 22 files of SHA256, packed sorted
CACHE_DIR = Path.home() / ".cache" / "smc_jax"  # $SMC_CACHE_DIR overrides it
LAYOUT = ("cv_mawps/fold{0..4}/{train,dev}.csv, cv_asdiv-a/fold{0..4}/{train,dev}.csv, "
          "mawps-asdiv-a_svamp/{train,dev}.csv")  # what a data root holds (error messages)
SHA256 = {  # ../shared/data/arithmetic/SOURCE.md: byte-for-byte copies of the SVAMP repository's files
    "cv_asdiv-a/fold0/dev.csv": "0813a90f336147b1229a6d1d133c29f7e585cb27cafd651976bb94449a4b81c0",
    "cv_asdiv-a/fold0/train.csv": "5c711c9150712141bfde68abf5ee4aecb610563325901320aef41e1e5ecf6c84",
    "cv_asdiv-a/fold1/dev.csv": "2432c24452fceb43c76f081342ebcd0e7b0f5776cb2908e621eeb4e2fad3cd17",
    "cv_asdiv-a/fold1/train.csv": "77046a465a3e693b4b241dcbce2fe2cba7c9d3d253201e5e125273f6f95ade8a",
    "cv_asdiv-a/fold2/dev.csv": "63da38010296031a123c0bd9cb80701870f1e31fdf06a88442b3ab6500b36b84",
    "cv_asdiv-a/fold2/train.csv": "25a7e1b542fb6c39181ab6005ec9e1eb68d049f0ca4367c87837d299feef3cd8",
    "cv_asdiv-a/fold3/dev.csv": "7a45f3d18353e4ea8ffa2d1cb238e80068ad3bb5dbed4303231b3af0836d78e2",
    "cv_asdiv-a/fold3/train.csv": "618e38871a3b82b184f47c301cae011b16ba1d0d2062017e51899490d071d846",
    "cv_asdiv-a/fold4/dev.csv": "b9fe1aacddc34ec2caed5e0c35faff2681198431b021d13e16dc2e7c61ec6ecb",
    "cv_asdiv-a/fold4/train.csv": "caf82cc29dafe77dda0aac8bf8af5c363c666e0e1480fbaedc47c504384b76fa",
    "cv_mawps/fold0/dev.csv": "bad59cff796b01a87363ea970f1fa80c15f56ff5f4388143aadbdc3feaf5f990",
    "cv_mawps/fold0/train.csv": "0674253e6099813cefbb1d6eae3d2dc784ab6ebfdaf8755f6ebb4b99fc1f6ebe",
    "cv_mawps/fold1/dev.csv": "31362cb8741f9fc11b470b224478902ae27ab762bdd82bcb08a9c945d5947422",
    "cv_mawps/fold1/train.csv": "ad8846861202060f2dfcb8423d23218cbf6a4a67010d4d4d939b9df61b2d34b0",
    "cv_mawps/fold2/dev.csv": "fae4f08a24a23123612ca5bb960e4f9aa7202c856344a59ab7adea424dfc670d",
    "cv_mawps/fold2/train.csv": "b137a07367e1b3cd9556fae7b9e17fb5e23836e1e6dc9357719049ebc8860c62",
    "cv_mawps/fold3/dev.csv": "5ac76e5559cdde0aa8bcac77eb9af46b9b0230f00661ad0257dbd58a1567a323",
    "cv_mawps/fold3/train.csv": "fb1e286a94feed24a41c5560095e21a33d61888c7c27a355e6ccef725deaf084",
    "cv_mawps/fold4/dev.csv": "1bb9164e6ba93fdc1bffddd8544c20cddc3c195a299b0b6c6893c2a760c3434b",
    "cv_mawps/fold4/train.csv": "9194364265a42e0f146cc73f514c806c5d322827cd025a474ded33af076837bb",
    "mawps-asdiv-a_svamp/dev.csv": "978425fa0820a147a20d3cb305a571d77b8ba0d1ccec4a96dd1470bf0079c338",
    "mawps-asdiv-a_svamp/train.csv": "c761cdc6390a67a285c6c346a2931f61bc8f47430eceaeb123cc3d0263efa821",
}

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_NUMBER_TOKEN = re.compile(r"number(\d+)")
_COPY_TOKEN = re.compile(r"N(\d+)")
_HAS_DIGIT_OR_NUM = re.compile(r"N\d+|NUM|\d+")  # the original's Lang.add_sen_to_vocab skip rule


@dataclasses.dataclass(frozen=True)
class Problem:
    """One preprocessed problem (SPEC §1.2 steps 1–2)."""

    tokens: tuple[str, ...]  # question tokens with every number replaced by "NUM"
    num_pos: tuple[int, ...]  # token positions of the numbers, in order of appearance
    numbers: tuple[str, ...]  # the `Numbers` column, as written (e.g. "56.0")
    equation: tuple[str, ...]  # prefix tokens with number{i} -> N{i}; constants kept as written
    group_nums: tuple[int, ...] = ()  # quantity-cell token indices (Graph2Tree)


# ------------------------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _corrupt_file(root: Path) -> str | None:
    """The first of the SHA256 files missing under ``root`` or not matching its checksum, else ``None``."""
    for relative, digest in sorted(SHA256.items()):
        path = root / relative
        if not path.is_file() or _sha256(path) != digest:
            return relative
    return None


def _extract(archive: Path, target: Path) -> None:
    """Extract the archive's SHA256 files into ``target`` (must not exist) via a temporary sibling folder and
    one rename, so a reader never sees a partial folder; a concurrent extraction that renamed first wins."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        seen = set()
        with tarfile.open(archive, "r:xz") as tar:
            for member in tar:
                if not member.isfile() or member.name not in SHA256 or member.name in seen:
                    raise ValueError(f"unexpected member {member.name!r}")
                payload = tar.extractfile(member).read()
                if hashlib.sha256(payload).hexdigest() != SHA256[member.name]:
                    raise ValueError(f"{member.name} does not match its sha256")
                seen.add(member.name)
                (partial / member.name).parent.mkdir(parents=True, exist_ok=True)
                (partial / member.name).write_bytes(payload)
        if seen != set(SHA256):
            raise ValueError(f"{min(set(SHA256) - seen)} is missing")
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    except (ValueError, tarfile.TarError, EOFError, lzma.LZMAError) as err:
        raise ValueError(f"the packaged archive {archive} is damaged ({err}); reinstall smc_jax") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def packaged_data_dir() -> Path:
    """The packaged data, extracted once into ``$SMC_CACHE_DIR`` (default ``~/.cache/smc_jax``) under
    ``arithmetic/svamp_data-<archive sha256[:16]>`` (a new archive never mixes with an old extraction) and
    every file checked against :data:`SHA256` on each call (~10 ms)."""
    if not PACKAGED_ARCHIVE.is_file():
        raise ValueError(
            f"the packaged arithmetic data {PACKAGED_ARCHIVE} is missing (installed without package data?); "
            "reinstall smc_jax, or set DATA_DIR or $SMC_DATA_DIR to a copy of the data"
        )
    digest = _sha256(PACKAGED_ARCHIVE)
    cache = Path(os.environ.get("SMC_CACHE_DIR") or CACHE_DIR).expanduser()
    root = cache / "arithmetic" / f"svamp_data-{digest[:16]}"
    if not root.is_dir():
        try:
            _extract(PACKAGED_ARCHIVE, root)
        except OSError as err:
            raise ValueError(
                f"cannot extract the packaged arithmetic data into {root} ({err}); set $SMC_CACHE_DIR to a writable "
                "folder or DATA_DIR to a copy of the data"
            ) from None
    bad = _corrupt_file(root)
    if bad is not None:
        raise ValueError(
            f"the extracted arithmetic data in {root} is corrupted ({bad} is missing or does not match its sha256); "
            "delete that folder to extract it again from the package"
        )
    return root


def resolve_data_dir(data_dir: str | os.PathLike | None, dataset: str) -> Path:
    """The arithmetic data root (laid out like ``../shared/data/arithmetic``): ``data_dir``, else
    ``$SMC_DATA_DIR/arithmetic``, else the data shipped in the package (:func:`packaged_data_dir`). The
    packaged files are extracted rather than read out of the archive so that every source is a plain folder
    and :func:`split_path` / :func:`load_problems` need not know where the files came from. A user's own
    folder is not checksummed (it may hold other data in the same format); the packaged copy always is."""
    folder, _ = _dataset(dataset)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not (root / folder).is_dir():
            raise ValueError(
                f"DATA_DIR {str(root)!r} has no {folder}/ folder for {dataset}; point DATA_DIR at a folder laid out "
                f"like ../shared/data/arithmetic ({LAYOUT}), or unset it to use $SMC_DATA_DIR or the packaged data"
            )
        return root
    if os.environ.get("SMC_DATA_DIR"):
        root = Path(os.environ["SMC_DATA_DIR"]).expanduser() / "arithmetic"
        if not (root / folder).is_dir():
            raise ValueError(
                f"$SMC_DATA_DIR/arithmetic ({root}) has no {folder}/ folder for {dataset}; lay it out like "
                f"../shared/data/arithmetic ({LAYOUT}), or unset $SMC_DATA_DIR to use the packaged data"
            )
        return root
    return packaged_data_dir()


def _dataset(name: str) -> tuple[str, bool]:
    if name not in DATASETS:
        raise ValueError(f"unknown arithmetic dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def split_path(root: Path, dataset: str, fold: int | None, split: str) -> Path:
    """``root/<folder>[/fold{k}]/{train,dev}.csv``, checking the fold and split."""
    folder, cross_validated = _dataset(dataset)
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    if cross_validated:
        if fold is None or not 0 <= int(fold) < NUM_FOLDS:
            raise ValueError(f"{dataset} is cross-validated: FOLD must be 0..{NUM_FOLDS - 1} or 'all', got {fold!r}")
        path = root / folder / f"fold{int(fold)}" / f"{split}.csv"
    else:
        if fold is not None:
            raise ValueError(f"{dataset} has a single split: leave FOLD unset (got {fold!r})")
        path = root / folder / f"{split}.csv"
    if not path.is_file():
        raise ValueError(
            f"missing data file {path.relative_to(root)} in {root}; the data root must be laid out like "
            f"../shared/data/arithmetic ({LAYOUT})"
        )
    return path


# --------------------------------------------------------------------------------- preprocessing


def preprocess(question: str, numbers: str, equation: str, group_nums: str = "[]") -> Problem:
    """SPEC §1.2 steps 1–2 for one CSV row."""
    tokens, num_pos = [], []
    for token in question.split():
        if _NUMBER_TOKEN.match(token):
            num_pos.append(len(tokens))
            tokens.append("NUM")
        else:
            tokens.append(token)
    equation_tokens = tuple(
        "N" + m.group(1) if (m := _NUMBER_TOKEN.fullmatch(t)) else t for t in equation.split()
    )
    groups = tuple(int(x) for x in re.findall(r"\d+", group_nums))
    return Problem(tuple(tokens), tuple(num_pos), tuple(numbers.split()), equation_tokens, groups)


def load_problems(path: Path, limit: int | None = None) -> list[Problem]:
    """The preprocessed problems of one CSV file (the first ``limit`` when given)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if limit is not None:
        rows = rows[: int(limit)]
    missing = {"Question", "Numbers", "Equation"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path} lacks the SVAMP-format columns {sorted(missing)}")
    return [preprocess(r["Question"], r["Numbers"], r["Equation"], r.get("group_nums", "[]")) for r in rows]


def _is_constant(token: str) -> bool:
    return token not in OPERATORS and not _COPY_TOKEN.fullmatch(token)


@dataclasses.dataclass(frozen=True)
class Vocab:
    """Input and output vocabularies of one train/dev pair (SPEC §1.2 steps 2, 3 and 5)."""

    input_words: tuple[str, ...]  # "PAD", "NUM", "UNK", then train words in first-seen order
    output_words: tuple[str, ...]  # operators, generate numbers, N0..N{copy_nums-1}, "UNK"
    num_start: int  # index of the first generate number
    generate_nums: tuple[str, ...]
    copy_nums: int

    @functools.cached_property
    def input_index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.input_words)}

    @functools.cached_property
    def output_index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.output_words)}


def build_vocab(train: Sequence[Problem], dev: Sequence[Problem], dev_words: bool = False) -> Vocab:
    """Vocabularies: generate numbers and ``copy_nums`` over train + dev, operators and words from train
    (``dev_words`` adds dev words, as the original does for pretrained embeddings)."""
    constants = Counter(t for p in (*train, *dev) for t in p.equation if _is_constant(t))
    generate = tuple(c for c, n in constants.items() if n >= GENERATE_MIN_COUNT)
    copy_nums = max((len(p.numbers) for p in (*train, *dev)), default=0)
    operators = list(dict.fromkeys(t for p in train for t in p.equation if not _HAS_DIGIT_OR_NUM.search(t)))
    words = dict.fromkeys(
        t for p in (*train, *(dev if dev_words else ())) for t in p.tokens if not _HAS_DIGIT_OR_NUM.search(t)
    )
    output = (*operators, *generate, *(f"N{i}" for i in range(copy_nums)), "UNK")
    return Vocab(("PAD", "NUM", "UNK", *words), output, len(operators), generate, copy_nums)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A problem as indices: what the model and the scorer consume."""

    input_ids: tuple[int, ...]
    num_pos: tuple[int, ...]
    target_ids: tuple[int, ...]
    num_stack: tuple[tuple[int, ...], ...]  # for each UNK target token, in reverse order: candidate N{i}
    numbers: tuple[str, ...]


NUMBER_POSITIONS = ("aligned", "original")


def subword_encode(problem: Problem, tokenizer: Any, number_positions: str = "aligned") -> tuple[tuple[int, ...],
                                                                                             tuple[int, ...]]:
    """``(input_ids, num_pos)`` of a problem for a pretrained encoder (SPEC §1.2): the word tokens joined with
    spaces, tokenised with the checkpoint's own (fast) tokenizer and special tokens (``<s> … </s>``).

    ``number_positions='aligned'``: each number's position is its first sub-token in that sequence.
    ``'original'``: the word indices unchanged, as the SVAMP code uses them on the sub-token sequence (SPEC
    Q-A3: off by the ``<s>`` and by every earlier word that splits into several sub-tokens)."""
    if number_positions not in NUMBER_POSITIONS:
        raise ValueError(f"number_positions must be one of {NUMBER_POSITIONS}, got {number_positions!r}")
    text = " ".join(problem.tokens)
    encoding = tokenizer(text, add_special_tokens=True)
    input_ids = tuple(int(i) for i in encoding["input_ids"])
    if number_positions == "original":
        return input_ids, problem.num_pos
    starts = np.cumsum([0] + [len(t) + 1 for t in problem.tokens[:-1]])
    positions = []
    for i in problem.num_pos:
        token = encoding.char_to_token(int(starts[i]))
        if token is None:
            raise ValueError(f"the tokenizer gives no token for word {i} ({problem.tokens[i]!r}) of {text!r}")
        positions.append(int(token))
    return input_ids, tuple(positions)


def encode(problem: Problem, vocab: Vocab, tokenizer: Any = None, number_positions: str = "aligned") -> Encoded:
    """Indices of a problem (unknown input words -> UNK; unknown target tokens -> UNK plus a ``num_stack``
    entry listing the numbers equal to that constant, or all numbers when none is). With a ``tokenizer`` the
    input is the pretrained encoder's sub-token ids (:func:`subword_encode`)."""
    words, outputs = vocab.input_index, vocab.output_index
    if tokenizer is None:
        input_ids, num_pos = tuple(words.get(t, words["UNK"]) for t in problem.tokens), problem.num_pos
    else:
        input_ids, num_pos = subword_encode(problem, tokenizer, number_positions)
    target_ids, stack = [], []
    for token in problem.equation:
        if token in outputs:
            target_ids.append(outputs[token])
            continue
        target_ids.append(outputs["UNK"])
        same = tuple(i for i, n in enumerate(problem.numbers) if n == token)
        stack.append(same or tuple(range(len(problem.numbers))))
    return Encoded(input_ids, num_pos, tuple(target_ids), tuple(reversed(stack)), problem.numbers)


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int,
                  lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """SPEC §1.2 step 6: shuffle every epoch, cut into batches (the last one partial), and sort each batch
    by input length, longest first. The order depends only on (seed, epoch), so a resumed run sees the same
    batches (numpy's generator instead of Python's ``random``: bit-exact order is not reproducible, Q-A10)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(num_examples)
    batches = [order[i:i + batch_size] for i in range(0, num_examples, batch_size)]
    if lengths is not None:
        lengths = np.asarray(lengths)
        batches = [b[np.argsort(-lengths[b], kind="stable")] for b in batches]
    return batches


# ---------------------------------------------------------------------------------------- scoring


def _safe_number(text: str) -> float:
    """A number as the original's ``eval`` reads it: ``3.5``, ``3/4``, ``(1/2)``; nothing else runs."""
    node = ast.parse(text, mode="eval").body

    def value(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return float(n.value)
        if isinstance(n, ast.BinOp) and type(n.op) in _AST_OPS:
            return _AST_OPS[type(n.op)](value(n.left), value(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -value(n.operand)
        raise ValueError(f"not a number: {text!r}")

    return value(node)


def number_value(token: str) -> float:
    """A number token's value: mixed numbers ``a(b/c)`` are ``a + b/c``, ``x%`` is ``x/100``."""
    mixed = re.search(r"\d+\(", token)
    if mixed:
        return _safe_number(token[: mixed.end() - 1] + "+" + token[mixed.end() - 1:])
    if token.endswith("%"):
        return float(token[:-1]) / 100
    return _safe_number(token)


def compute_prefix_expression(tokens: Sequence[str]) -> float | None:
    """Evaluate a prefix expression with a stack over the reversed tokens; ``None`` when malformed or on
    division by zero (and, as the original's buggy ``^`` branch, for every power)."""
    stack: list[float] = []
    for token in reversed(list(tokens)):
        if token not in OPERATORS:
            stack.append(number_value(token))
            continue
        if len(stack) < 2 or token == "^":
            return None
        a, b = stack.pop(), stack.pop()
        if token == "/" and b == 0:
            return None
        stack.append(_OPS[token](a, b))
    return stack[0] if len(stack) == 1 else None


def expression_tokens(ids: Sequence[int], vocab: Vocab, numbers: Sequence[str],
                      num_stack: Sequence[Sequence[int]] | None = None) -> list[str] | None:
    """Token ids -> strings with ``N{i}`` replaced by ``numbers[i]`` and UNK by its ``num_stack`` entry;
    ``None`` when an id or a number index is out of range."""
    stack = [list(s) for s in num_stack] if num_stack is not None else []
    out = []
    for i in ids:
        if not 0 <= i < len(vocab.output_words):
            return None
        word = vocab.output_words[i]
        if _COPY_TOKEN.fullmatch(word):
            index = int(word[1:])
            if index >= len(numbers):
                return None
            out.append(numbers[index])
        elif word == "UNK":
            if not stack:
                return None
            out.append(numbers[stack.pop()[0]])
        else:
            out.append(word)
    return out


def score(predicted: Sequence[int], example: Encoded, vocab: Vocab) -> tuple[bool, bool]:
    """``(value_correct, equation_correct)`` per SPEC §1.2's evaluation rules."""
    predicted, target = list(predicted), list(example.target_ids)
    if not example.num_stack and predicted == target:
        return True, True
    pred = expression_tokens(predicted, vocab, example.numbers)
    gold = expression_tokens(target, vocab, example.numbers, example.num_stack)
    if pred is None or gold is None:
        return False, False
    if pred == gold:
        return True, True
    try:
        a, b = compute_prefix_expression(pred), compute_prefix_expression(gold)
        return (a is not None and b is not None and abs(a - b) < 1e-4), False
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, TypeError):
        return False, False


def accuracy(predictions: Sequence[Sequence[int]], examples: Sequence[Encoded], vocab: Vocab) -> dict[str, float]:
    """``{"value_accuracy", "equation_accuracy"}`` in percent, plus the counts behind them."""
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    scores = [score(p, e, vocab) for p, e in zip(predictions, examples)]
    n = len(scores)
    value, equation = sum(s[0] for s in scores), sum(s[1] for s in scores)
    return {"value_accuracy": 100.0 * value / n if n else 0.0, "equation_accuracy": 100.0 * equation / n if n else 0.0,
            "value_correct": value, "equation_correct": equation, "num_eval": n}
