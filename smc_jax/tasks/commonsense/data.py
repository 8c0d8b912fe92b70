"""Commonsense reasoning data (CommonsenseQA, WinoGrande, RACE): loading and model inputs as fairseq builds them.

Faithful to SPEC §1.1 and fairseq's RoBERTa examples: ``commonsense_qa_task.py`` (``<s> Q: stem </s> A: choice
</s>``), ``wsc_task.py``/``wsc_utils.py`` (``WinograndeTask``: the sentence with ``_`` filled by the correct option
(query) and by the other one (candidate), the option's tokens marked for masking) and ``preprocess_RACE.py`` +
``sentence_ranking.py`` (``<s> qa </s></s> article </s>`` with the option part capped at ``--max-option-length``
and the whole cut to ``--max-positions``). Data resolve as DESIGN.md says: an explicit ``DATA_DIR`` (the task's
folder), then ``$SMC_DATA_DIR/<folder>``, then the HF hub dataset. Text only: the task turns these into batches.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

DATASETS = ("csqa", "winogrande", "race")
FOLDERS = {"csqa": "commonsenseqa", "winogrande": "winogrande", "race": "race"}
HUB_IDS = {"csqa": "tau/commonsense_qa", "winogrande": "allenai/winogrande", "race": "ehovy/race"}
WINOGRANDE_SIZES = ("xs", "s", "m", "l", "xl")
RACE_LEVELS = ("middle", "high")
SPLITS = ("train", "validation", "test")

CSQA_FILES = {"train": "train_rand_split.jsonl", "validation": "dev_rand_split.jsonl",
              "test": "test_rand_split_no_answers.jsonl"}
WINOGRANDE_FILES = {"validation": "dev.jsonl", "test": "test.jsonl"}  # train: train_{size}.jsonl
RACE_RAW_SPLITS = {"train": "train", "validation": "dev", "test": "test"}  # our split -> original RACE folder

_GIN = "--gin.CommonsenseTask"


@dataclasses.dataclass(frozen=True)
class Question:
    """One multiple-choice question (CommonsenseQA or RACE)."""

    id: str
    question: str  # CSQA: question.stem; RACE: the question (``_`` marks a blank)
    choices: tuple[str, ...]  # 5 for CSQA, 4 for RACE
    label: int  # index of the answer (ord(letter) - ord('A')); -1 when unlabelled
    context: str | None = None  # RACE: the article, newlines -> spaces and stripped; CSQA: None
    level: str | None = None  # RACE: 'middle' | 'high'; CSQA: None


@dataclasses.dataclass(frozen=True)
class WinoExample:
    """One WinoGrande sentence with its two options."""

    id: str
    sentence: str  # with one "_"
    option1: str
    option2: str
    label: int  # 0 (option1) / 1 (option2); -1 unlabelled


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One choice's model input."""

    input_ids: tuple[int, ...]
    segment_ids: tuple[int, ...]  # 0 through the first part's sep, 1 after (zeroed by the task for one-type models)


@dataclasses.dataclass(frozen=True)
class WinoEncoded:
    """A WinoGrande pair: the sentence filled with the query (correct) and the candidate option, unmasked."""

    query_ids: tuple[int, ...]
    query_span: tuple[int, int]  # [start, end) token positions of the option in query_ids
    cand_ids: tuple[int, ...]
    cand_span: tuple[int, int]


# ----------------------------------------------------------------------------------------------- validation


def _check(kind: str, value: Any, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r} (valid: {', '.join(valid)})")


def _letter_label(key: str | None, n: int, what: str) -> int:
    """``ord(key) - ord('A')``; -1 for a missing or empty key (unlabelled test data)."""
    if not key:
        return -1
    label = ord(key.strip()) - ord("A")
    if not 0 <= label < n:
        raise ValueError(f"{what}: answer {key!r} is not one of the {n} choice letters")
    return label


# ------------------------------------------------------------------------------------ row/record mapping


def csqa_from_record(record: Mapping[str, Any]) -> Question:
    """A line of the original CommonsenseQA jsonl (``question.stem``, ``question.choices[i].text``,
    ``answerKey`` absent in the test file) as a Question."""
    q = record["question"]
    choices = tuple(c["text"] for c in q["choices"])
    return Question(id=str(record["id"]), question=q["stem"], choices=choices,
                    label=_letter_label(record.get("answerKey"), len(choices), f"csqa {record['id']}"))


def csqa_from_hub_row(row: Mapping[str, Any]) -> Question:
    """A ``tau/commonsense_qa`` row (``question`` is the stem, ``choices`` = {label: [..], text: [..]},
    ``answerKey`` "" in test) as a Question."""
    choices = tuple(row["choices"]["text"])
    return Question(id=str(row["id"]), question=row["question"], choices=choices,
                    label=_letter_label(row.get("answerKey"), len(choices), f"csqa {row['id']}"))


def winogrande_from_row(row: Mapping[str, Any], default_id: str) -> WinoExample:
    """A WinoGrande jsonl line or ``allenai/winogrande`` row (``answer`` "1"/"2", "" or absent when unlabelled)
    as a WinoExample; the hub rows have no ``qID``, so ``default_id`` names them."""
    answer = str(row.get("answer") or "").strip()
    if answer not in ("", "1", "2"):
        raise ValueError(f"winogrande {row.get('qID', default_id)}: answer {answer!r} is not '1' or '2'")
    return WinoExample(id=str(row.get("qID") or default_id), sentence=row["sentence"], option1=row["option1"],
                       option2=row["option2"], label=int(answer) - 1 if answer else -1)


def race_article(article: str) -> str:
    """The article as fairseq saw it: ``preprocess_RACE.py`` turns newlines into spaces and the BPE encoder
    strips the line."""
    return article.replace("\n", " ").strip()


def race_from_row(row: Mapping[str, Any], level: str, index: int) -> Question:
    """An HF-style RACE row (``ehovy/race`` or its jsonl export: example_id, article, question, options,
    answer) as a Question; ``index`` is the question's position within its article (id ``high132.txt-0``)."""
    choices = tuple(row["options"])
    qid = f"{row['example_id']}-{index}"
    return Question(id=qid, question=row["question"], choices=choices,
                    label=_letter_label(row.get("answer"), len(choices), f"race {qid}"),
                    context=race_article(row["article"]), level=level)


def race_from_rows(rows: Iterable[Mapping[str, Any]], level: str) -> list[Question]:
    """HF-style RACE rows (one per question) as Questions, numbering the questions of each article in order."""
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        index = seen.get(row["example_id"], 0)
        seen[row["example_id"]] = index + 1
        out.append(race_from_row(row, level, index))
    return out


def race_from_raw(obj: Mapping[str, Any], level: str, default_id: str) -> list[Question]:
    """One original RACE ``.txt`` file (a JSON object with article, questions, options, answers, id) as one
    Question per question, ids ``{id}-{i}``."""
    base = str(obj.get("id") or default_id)
    context = race_article(obj["article"])
    out = []
    for i, (question, options, answer) in enumerate(zip(obj["questions"], obj["options"], obj["answers"],
                                                        strict=True)):
        choices = tuple(options)
        out.append(Question(id=f"{base}-{i}", question=question, choices=choices,
                            label=_letter_label(answer, len(choices), f"race {base}-{i}"), context=context,
                            level=level))
    return out


# --------------------------------------------------------------------------------------------- resolution


def resolve_data_dir(data_dir: str | os.PathLike | None, dataset: str) -> Path | None:
    """The dataset's local folder: an explicit ``data_dir`` (must exist, else ValueError naming it; "" counts as
    unset), else ``$SMC_DATA_DIR/<FOLDERS[dataset]>`` if it exists, else None (meaning: the HF hub dataset)."""
    _check("dataset", dataset, DATASETS)
    if data_dir is not None and str(data_dir) != "":
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise ValueError(f"DATA_DIR {str(data_dir)!r} for {dataset} is not an existing directory "
                             f"(expected a folder like ../shared/data/{FOLDERS[dataset]})")
        return path
    root = os.environ.get("SMC_DATA_DIR")
    if root:
        path = Path(root).expanduser() / FOLDERS[dataset]
        if path.is_dir():
            return path
    return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _load_csqa_local(directory: Path, split: str) -> list[Question]:
    path = directory / CSQA_FILES[split]
    if not path.is_file():
        raise ValueError(f"csqa {split} file {CSQA_FILES[split]} not found in {directory}")
    return [csqa_from_record(r) for r in _read_jsonl(path)]


def _load_winogrande_local(directory: Path, split: str, size: str) -> list[WinoExample]:
    name = f"train_{size}.jsonl" if split == "train" else WINOGRANDE_FILES[split]
    path = directory / name
    if not path.is_file():
        if split != "train":
            raise ValueError(f"winogrande {split} file {name} not found in {directory}")
        present = [s for s in WINOGRANDE_SIZES if (directory / f"train_{s}.jsonl").is_file()]
        if not present:
            raise ValueError(f"winogrande train size {size!r} not found in {directory} (has no train_*.jsonl); "
                             f"set DATA_DIR to a WinoGrande folder or leave it unset for {HUB_IDS['winogrande']!r}")
        raise ValueError(f"winogrande train size {size!r} not found in {directory} (has {', '.join(present)}); "
                         f"set {_GIN}.winogrande_size=\"'{present[-1]}'\"")
    return [winogrande_from_row(r, f"{split}-{i}") for i, r in enumerate(_read_jsonl(path))]


def _race_sources(directory: Path) -> dict[tuple[str, str], tuple[str, Path]]:
    """(split, level) -> ('jsonl', file) or ('raw', folder of .txt files); the first layout found wins."""
    found: dict[tuple[str, str], tuple[str, Path]] = {}
    jsonl_dirs = [directory] + sorted(p for p in directory.glob("hf_export*") if p.is_dir())
    raw_roots = [directory / "RACE", directory]
    for split in SPLITS:
        for level in RACE_LEVELS:
            for d in jsonl_dirs:
                if (d / f"{split}_{level}.jsonl").is_file():
                    found[split, level] = ("jsonl", d / f"{split}_{level}.jsonl")
                    break
            else:
                for root in raw_roots:
                    folder = root / RACE_RAW_SPLITS[split] / level
                    if folder.is_dir() and any(folder.glob("*.txt")):
                        found[split, level] = ("raw", folder)
                        break
    return found


def _load_race_local(directory: Path, split: str, levels: Sequence[str]) -> list[Question]:
    sources = _race_sources(directory)
    has = ", ".join(f"{s}/{lv}" for s, lv in sources) or "nothing"
    in_split = tuple(lv for lv in RACE_LEVELS if (split, lv) in sources)
    if not in_split:
        if split == "train" and sources:
            alt = "validation" if any(s == "validation" for s, _ in sources) else next(iter(sources))[0]
            alt_levels = tuple(lv for lv in RACE_LEVELS if (alt, lv) in sources)
            raise ValueError(f"race train split not found in {directory} (has: {has}); smoke runs can train on "
                             f"{alt}: {_GIN}.train_split=\"'{alt}'\" {_GIN}.race_levels=\"{alt_levels!r}\"")
        raise ValueError(f"race {split} split not found in {directory} (has: {has}); set DATA_DIR to a full RACE "
                         f"folder or leave it unset for {HUB_IDS['race']!r}")
    missing = [lv for lv in levels if (split, lv) not in sources]
    if missing:
        raise ValueError(f"race {split}/{missing[0]} not found in {directory} (has: {has}); "
                         f"set {_GIN}.race_levels=\"{in_split!r}\"")
    out: list[Question] = []
    for level in levels:
        kind, path = sources[split, level]
        if kind == "jsonl":
            out.extend(race_from_rows(_read_jsonl(path), level))
        else:
            for file in sorted(path.glob("*.txt")):
                with open(file, encoding="utf-8") as f:
                    out.extend(race_from_raw(json.load(f), level, f"{level}{file.name}"))
    return out


def _hub_rows(dataset: str, config: str | None, split: str) -> list[Mapping[str, Any]]:
    """Rows of the HF hub dataset (``datasets`` imported lazily); ValueError in one line when it cannot load."""
    hub_id = HUB_IDS[dataset]
    try:
        import datasets

        return list(datasets.load_dataset(hub_id, config, split=split))
    except Exception as e:  # noqa: BLE001 - offline, missing package, unknown config: all mean "use a local copy"
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        what = f"{hub_id!r}" + (f" config {config!r}" if config else "")
        raise ValueError(f"could not load {dataset} {split} from the HF hub dataset {what} ({reason}); set DATA_DIR "
                         f"to a local copy, e.g. --gin.DATA_DIR=\"'../shared/data/{FOLDERS[dataset]}'\", or "
                         f"$SMC_DATA_DIR to a folder holding {FOLDERS[dataset]}/") from e


def load_split(dataset: str, split: str, data_dir: str | os.PathLike | None = None, *, size: str = "xl",
               levels: Sequence[str] = RACE_LEVELS) -> list[Question] | list[WinoExample]:
    """The examples of one split, in file order, from the folder ``resolve_data_dir`` gives or the HF hub.

    ``size`` picks the WinoGrande training set (``train_{size}.jsonl``; validation/test do not depend on it);
    ``levels`` the RACE levels, loaded and concatenated in that order. Every problem (unknown name, missing
    file, split, size or level, hub unreachable) is a one-line ValueError naming what is there and the
    binding to use.
    """
    _check("dataset", dataset, DATASETS)
    _check("split", split, SPLITS)
    _check("winogrande size", size, WINOGRANDE_SIZES)
    if isinstance(levels, str):
        levels = (levels,)
    levels = tuple(levels)
    if not levels:
        raise ValueError(f"race levels are empty (valid: {', '.join(RACE_LEVELS)})")
    for level in levels:
        _check("race level", level, RACE_LEVELS)
    directory = resolve_data_dir(data_dir, dataset)
    if directory is not None:
        if dataset == "csqa":
            return _load_csqa_local(directory, split)
        if dataset == "winogrande":
            return _load_winogrande_local(directory, split, size)
        return _load_race_local(directory, split, levels)
    if dataset == "csqa":
        return [csqa_from_hub_row(r) for r in _hub_rows("csqa", None, split)]
    if dataset == "winogrande":
        rows = _hub_rows("winogrande", f"winogrande_{size}", split)
        return [winogrande_from_row(r, f"{split}-{i}") for i, r in enumerate(rows)]
    out: list[Question] = []
    for level in levels:
        out.extend(race_from_rows(_hub_rows("race", level, split), level))
    return out


# ----------------------------------------------------------------------------------------------- encoding


def _pieces(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _pair_separators(tokenizer: Any) -> int:
    """How many sep tokens the tokenizer puts between a pair: 2 for RoBERTa-like (``</s></s>``), 1 for BERT."""
    probe = list(tokenizer("a", "b")["input_ids"])
    count = probe.count(tokenizer.sep_token_id)
    if count >= 2:
        return count - 1
    return 2 if tokenizer.cls_token == "<s>" else 1  # no pair template in the tokenizer: go by its tokens


def _with_segments(first: list[int], rest: list[int]) -> Encoded:
    return Encoded(tuple(first + rest), (0,) * len(first) + (1,) * len(rest))


def race_option_text(question: str, option: str) -> str:
    """``preprocess_RACE.py``: the question with every ``_`` replaced by the option if it has one, else
    ``question + " " + option``; stripped as the BPE encoder strips its lines."""
    text = question.replace("_", option) if "_" in question else " ".join([question, option])
    return text.strip()


def encode_question(q: Question, tokenizer: Any, dataset: str, max_length: int,
                    max_option_length: int = 128) -> list[Encoded]:
    """One Encoded per choice, as fairseq builds it.

    csqa (``commonsense_qa_task.py``): ``[cls] tok("Q: " + stem) [sep] tok("A: " + choice) [sep]``, one sep
    between the parts for every tokenizer; if longer than ``max_length`` the question's end is cut (fairseq has
    no truncation; CSQA never needs one at 512). race (``sentence_ranking`` with ``--init-token 0
    --separator-token 2 --max-option-length 128 --shorten-method truncate``): ``[cls] tok(qa) [sep]`` capped at
    ``min(max_option_length, max_length)`` tokens by cutting qa's end (the sep stays; fairseq's TruncateDataset
    would drop it, which only matters for options over 126 tokens), then the tokenizer's pair separator
    (``</s>`` again for RoBERTa, nothing more for BERT), ``tok(article) [sep]``; the whole is cut to
    ``max_length`` keeping the first tokens (the option stays, the article's end and last sep go).
    """
    _check("dataset for encode_question", dataset, ("csqa", "race"))
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = []
    if dataset == "csqa":
        question = _pieces(tokenizer, "Q: " + q.question)
        for choice in q.choices:
            answer = _pieces(tokenizer, "A: " + choice)
            budget = max_length - 3 - len(answer)
            if budget < 0:
                raise ValueError(f"csqa {q.id}: answer {choice!r} needs {len(answer) + 3} tokens > max_length "
                                 f"{max_length}")
            out.append(_with_segments([cls] + question[:budget] + [sep], answer + [sep]))
        return out
    if q.context is None:
        raise ValueError(f"race {q.id}: the question has no article (context)")
    option_cap = min(max_option_length, max_length)
    if option_cap < 2:
        raise ValueError(f"race: max_option_length {max_option_length} / max_length {max_length} leave no room")
    article = _pieces(tokenizer, race_article(q.context)) + [sep]
    between = [sep] * (_pair_separators(tokenizer) - 1)
    for choice in q.choices:
        qa = _pieces(tokenizer, race_option_text(q.question, choice))
        first = [cls] + qa[:option_cap - 2] + [sep]
        rest = (between + article)[:max_length - len(first)]
        out.append(_with_segments(first, rest))
    return out


def winogrande_fill(sentence: str, option: str) -> tuple[str, tuple[int, int]]:
    """``WinograndeTask``: ``prefix + leading_space + option + suffix`` with prefix = the text before ``_``
    right-stripped, leading_space " " if that text ended in a space, suffix = the text after ``_``; returns the
    text and the option's [start, end) character range."""
    i = sentence.index("_")
    before = sentence[:i]
    prefix = before.rstrip() + (" " if before.endswith(" ") else "")
    return prefix + option + sentence[i + 1:], (len(prefix), len(prefix) + len(option))


def _encode_filled(sentence: str, option: str, tokenizer: Any, max_length: int, what: str):
    text, (a, b) = winogrande_fill(sentence, option)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    covering = [j for j, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < b and e > a]
    if not covering:
        raise ValueError(f"winogrande {what}: no token covers the option {option!r} in {text!r}")
    ids = [tokenizer.cls_token_id] + list(enc["input_ids"]) + [tokenizer.sep_token_id]
    span = (covering[0] + 1, covering[-1] + 2)
    if len(ids) > max_length:
        if span[1] > max_length - 1:
            raise ValueError(f"winogrande {what}: truncating {len(ids)} tokens to max_length {max_length} would "
                             f"cut the option (tokens {span[0]}..{span[1]})")
        ids = ids[:max_length - 1] + [tokenizer.sep_token_id]
    return tuple(ids), span


def encode_winogrande(e: WinoExample, tokenizer: Any, max_length: int) -> WinoEncoded:
    """The query (the correct option; option1 when unlabelled, as fairseq's eval mode) and the candidate (the
    other option), each ``[cls] tok(filled sentence) [sep]`` with the option's token span.

    The span is the tokens whose character offsets (``return_offsets_mapping``) overlap the option's characters:
    exact, where fairseq's ``binarize_with_mask`` counts the tokens of prefix and option encoded separately
    (the same for GPT-2 BPE except where a merge crosses the option's edge). The ids are not masked (the task
    puts ``mask_token_id`` on the span). Longer than ``max_length``: the end is cut, the final sep kept; a
    ValueError if that would cut into the option.
    """
    query, cand = (e.option2, e.option1) if e.label == 1 else (e.option1, e.option2)
    query_ids, query_span = _encode_filled(e.sentence, query, tokenizer, max_length, f"{e.id} query")
    cand_ids, cand_span = _encode_filled(e.sentence, cand, tokenizer, max_length, f"{e.id} candidate")
    return WinoEncoded(query_ids, query_span, cand_ids, cand_span)


def describe_format(dataset: str) -> str:
    """One line documenting the dataset's text format and model input."""
    _check("dataset", dataset, DATASETS)
    return {
        "csqa": "CommonsenseQA v1.11 jsonl {id, question: {stem, choices: 5 x {label, text}}, answerKey A-E} -> "
                "per choice <s> Q: {stem} </s> A: {choice} </s> (fairseq commonsense_qa), scored by a 1-unit head",
        "winogrande": "WinoGrande jsonl {qID, sentence with one _, option1, option2, answer 1/2} -> the sentence "
                      "with _ filled by the correct (query) and the other option (candidate), <s> text </s>, the "
                      "option's tokens masked and scored by the LM head (fairseq WinograndeTask)",
        "race": "RACE {article, questions, options: 4 each, answers A-D} -> per option <s> {qa} </s></s> "
                "{article} </s>, qa = question with _ filled or question + ' ' + option (fairseq preprocess_RACE "
                "+ sentence_ranking, option part <= 128 tokens, whole cut to max_length)",
    }[dataset]
