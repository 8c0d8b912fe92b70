"""Translation data and recipe: fairseq-format ids built numerically, temperature sampling with OPUS-100 sizes,
max-tokens batches, the resumable stream, the token cache, the OPUS-100 parquet loader, the loss normalisation,
inverse_sqrt, and the one-line errors."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from smc_jax.models.losses import label_smoothed_nll  # noqa: E402
from smc_jax.models.mbart_vocab import EOS, PAD, langtok_id  # noqa: E402
from smc_jax.tasks.translation import batching as tb  # noqa: E402
from smc_jax.tasks.translation import data  # noqa: E402
from smc_jax.tasks.translation.task import TranslationTask  # noqa: E402
from smc_jax.train.optim import InverseSqrt  # noqa: E402

FLORES = SHARED_DATA / "flores200"
TATOEBA = SHARED_DATA / "tatoeba_laser"
pytestmark = pytest.mark.skipif(not FLORES.is_dir(), reason=f"FLORES-200 not found under {SHARED_DATA}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from hf_fixtures import tiny_translation_checkpoint

    return tiny_translation_checkpoint(tmp_path_factory.mktemp("tr_ckpt"), SHARED_DATA)


def make_task(checkpoint, cache, **kw):
    args = dict(setting="2to2", source="flores200", data_dir=str(FLORES), pretrained=str(checkpoint),
                max_train_examples=24, max_eval_examples=2, cache_dir=str(cache), max_length=256,
                length_buckets=(64, 128, 256), truncate_eval=True, beam_size=2, max_len_b=4, eval_batch_size=8)
    return TranslationTask(**{**args, **kw})


def test_fairseq_ids_built_numerically():
    texts = data.TokenArrays(np.array([10, 11, 12, 20, 21], np.int32), np.array([0, 3, 5], np.int64))
    v = 126  # a fairseq-layout vocabulary of 100 pieces
    en, fr = langtok_id("en", v), langtok_id("fr", v)
    assert (en, fr) == (102, 108)
    rows = tb.encode_rows("fairseq", texts, np.array([0, -1]), np.array([1, -1]), np.array([en, en]),
                          np.array([fr, fr]), 6)
    assert rows["input_ids"].tolist() == [[en, 10, 11, 12, EOS, PAD], [PAD] * 6]
    assert rows["labels"].tolist()[0] == [fr, 20, 21, EOS, PAD, PAD]
    assert rows["decoder_input_ids"].tolist()[0] == [EOS, fr, 20, 21, PAD, PAD]
    assert rows["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0] * 6]
    hf = tb.encode_rows("hf_native", texts, np.array([0]), np.array([1]), np.array([200]), np.array([201]), 6)
    assert hf["input_ids"].tolist() == [[10, 11, 12, EOS, 200, PAD]]
    assert hf["labels"].tolist() == [[20, 21, EOS, 201, PAD, PAD]]
    assert hf["decoder_input_ids"].tolist() == [[201, 20, 21, EOS, PAD, PAD]]
    cut = tb.encode_rows("fairseq", texts, np.array([0]), np.array([1]), np.array([en]), np.array([fr]), 4)
    assert cut["input_ids"].tolist() == [[en, 10, 11, EOS]]


def test_loss_is_over_langtok_and_eos_and_normalised_by_update_tokens():
    rng = np.random.default_rng(0)
    labels = np.array([[108, 20, 21, EOS, PAD], [108, 30, EOS, PAD, PAD]])
    logits = jnp.asarray(rng.normal(size=(2, 5, 126)), jnp.float32)
    sums = label_smoothed_nll(logits, jnp.asarray(labels), 0.2)
    lp = jax.nn.log_softmax(np.asarray(logits, np.float64), -1)
    keep = labels != PAD
    nll = -np.take_along_axis(np.asarray(lp), labels[..., None], -1)[..., 0]
    eps_i = 0.2 / 125
    want = ((1 - 0.2 - eps_i) * nll - eps_i * np.asarray(lp).sum(-1))[keep].sum()
    assert int(sums.ntokens) == 7 and np.isclose(float(sums.loss), want, rtol=1e-5)
    # two micro-batches of 4 and 3 target tokens: the engine averages loss / (7 / 2), i.e. sum / 7
    a = label_smoothed_nll(logits[:1], jnp.asarray(labels[:1]), 0.2).loss / 3.5
    b = label_smoothed_nll(logits[1:], jnp.asarray(labels[1:]), 0.2).loss / 3.5
    assert np.isclose(float((a + b) / 2), want / 7, rtol=1e-5)


def test_inverse_sqrt_values():
    lr = InverseSqrt(warmup_steps=2500).learning_rate(3e-5, None, 40000)
    got = [float(lr(n)) for n in (0, 1, 1250, 2500, 10000, 39999)]
    want = [0.0, 3e-5 / 2500, 1.5e-5, 3e-5, 3e-5 * np.sqrt(0.25), 3e-5 * np.sqrt(2500 / 39999)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("setting,expected", [
    ("2to2", {"fr": 0.25, "cs": 0.25}),
    ("5to5", {"fr": 0.1120, "cs": 0.1120, "de": 0.1120, "ja": 0.1120, "gu": 0.0522}),
    ("10to10", {"fr": 0.0585, "gu": 0.0273, "my": 0.0049}),
])
def test_sampling_probabilities_with_opus100_sizes(setting, expected):
    dirs = data.setting_directions(setting)
    probs = tb.temperature_probs([data.OPUS100_TRAIN_SIZES[d.other] for d in dirs], 1.5)
    for d, p in zip(dirs, probs):
        if d.other in expected:
            assert round(float(p), 4) == expected[d.other], (d, p)


def test_virtual_epoch_and_max_tokens_batches():
    sizes = [1000, 1000, 30, 30]
    probs = tb.temperature_probs(sizes, 1.5)
    rng = np.random.default_rng(0)
    d, i = tb.sample_epoch(sizes, probs, rng)
    assert len(d) == tb.virtual_epoch_size(sizes, probs)
    assert np.all(i < np.asarray(sizes)[d])
    assert tb.rows_for(96, 1024) == 8 and tb.rows_for(16, 1024) == 64 and tb.rows_for(256, 1024) == 4
    lengths = rng.integers(3, 200, len(d))
    buckets = (16, 32, 64, 128, 256)
    updates = tb.plan_updates(d, i, lengths, buckets, 1024, 2, rng)
    seen = 0
    for u in updates:
        rows = len(u.direction) // 2
        assert rows * u.width <= 1024 and (rows < 8 or rows % 8 == 0)
        real = u.direction >= 0
        seen += int(real.sum())
        assert real[:rows].any()  # the first micro-batch of an update is never empty
    assert seen == len(d)


def test_stream_resumes_at_the_same_batch(checkpoint, tmp_path):
    task = make_task(checkpoint, tmp_path)
    stream = task.train_stream(222)
    batches = [next(stream) for _ in range(3)]
    state = stream.state()
    after = next(stream)
    other = task.train_stream(222)
    other.restore(state)
    assert all(np.array_equal(after[k], v) for k, v in next(other).items())
    assert not np.array_equal(batches[0]["input_ids"], batches[1]["input_ids"])
    for b in batches:
        rows, width = b["input_ids"].shape
        assert (rows // 2) * width <= task.max_tokens
        assert np.isclose(b["ntokens_scale"][0] * 2, float(np.sum(b["labels"] != PAD)))


def test_token_cache_second_run_skips_tokenising(checkpoint, tmp_path):
    first = make_task(checkpoint, tmp_path)
    assert first.cache.misses > 0 and first.cache.hits == 0
    second = make_task(checkpoint, tmp_path)
    assert second.cache.misses == 0 and second.cache.hits == first.cache.misses
    np.testing.assert_array_equal(first.train_texts.tokens, second.train_texts.tokens)
    tato = make_task(checkpoint, tmp_path, source="tatoeba", data_dir=str(TATOEBA), eval_directions=("en-fr",))
    again = make_task(checkpoint, tmp_path, source="tatoeba", data_dir=str(TATOEBA), eval_directions=("en-fr",))
    assert tato.cache.misses > 0 and again.cache.misses == 0


def test_opus100_parquet_loader(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    for config, code in (("cs-en", "cs"), ("en-fr", "fr")):
        (tmp_path / config).mkdir()
        rows = [{"translation": {"en": f"hello {k}", code: f"{code} {k}"}} for k in range(5)]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / config / "train-00000-of-00001.parquet")
    assert data.opus100_config("cs") == "cs-en" and data.opus100_config("fr") == "en-fr"
    en, cs = data.opus100_columns(data.load_opus100("cs", "train", tmp_path, "SETTING"), "cs", limit=3)
    assert list(en) == ["hello 0", "hello 1", "hello 2"] and list(cs) == ["cs 0", "cs 1", "cs 2"]
    with pytest.raises(ValueError, match="direction en-de.*SETTING"):
        data.load_opus100("de", "train", tmp_path, "SETTING")


def test_one_line_errors(checkpoint, tmp_path):
    cases = [
        (dict(setting="3to3"), "setting '3to3' unknown"),
        (dict(eval_directions=("en-xx",)), "unknown language 'xx'"),
        (dict(source="tatoeba", data_dir=str(TATOEBA), setting="5to5"), "no test data for direction en-gu"),
        (dict(max_tokens=100), "MAX_TOKENS=100 is smaller than the longest allowed sentence"),
        (dict(batch_size=16), "set MAX_TOKENS"),
        (dict(input_format="raw"), "INPUT_FORMAT 'raw' unknown"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            make_task(checkpoint, tmp_path, **kw)
        assert "\n" not in str(err.value)


def test_tokenizer_vocabulary_mismatch_is_one_line(checkpoint, tmp_path):
    import json
    import shutil

    from smc_jax.models.hf_files import CheckpointError

    bad = Path(shutil.copytree(checkpoint, tmp_path / "bad"))
    config = json.loads((bad / "config.json").read_text())
    config["vocab_size"] += 5
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="tokenizer has .* tokens") as err:
        make_task(bad, tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_throughput_script_caches_once_and_assembles(checkpoint, tmp_path, capsys):
    import json

    from smc_jax.tasks.translation import throughput

    throughput.main(["--pretrained", str(checkpoint), "--flores", str(FLORES), "--tatoeba", str(TATOEBA),
                     "--cache", str(tmp_path), "--seconds", "1"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    first, second = out["cache"]["first"], out["cache"]["second"]
    assert first["misses"] > 0 and second["misses"] == 0 and second["hits"] == first["misses"]
    assert first["tokens"] == second["tokens"] and out["assembly"]["target_tokens_per_s"] > 0


def test_both_input_formats_from_the_same_cache(checkpoint, tmp_path):
    from smc_jax.models.mbart_vocab import lang_code_id

    fairseq = make_task(checkpoint, tmp_path)
    native = make_task(checkpoint, tmp_path, input_format="hf_native")
    assert native.vocab_size == fairseq.vocab_size + 1 and native.cache.misses == 0
    a, b = next(fairseq.train_stream(0)), next(native.train_stream(0))
    np.testing.assert_array_equal(a["ntokens_scale"], b["ntokens_scale"])
    row = 0
    src = a["input_ids"][row][1:list(a["input_ids"][row]).index(EOS)]
    codes = {lang_code_id(c, native.vocab_size) for c in ("en_XX", "fr_XX", "cs_CZ")}
    n = len(src)
    assert b["input_ids"][row][:n].tolist() == src.tolist() and b["input_ids"][row][n] == EOS
    assert b["input_ids"][row][n + 1] in codes and b["decoder_input_ids"][row][0] in codes
    assert a["decoder_input_ids"][row][0] == EOS and a["decoder_input_ids"][row][1] == a["labels"][row][0]
    assert a["labels"][row][0] in {langtok_id(x, fairseq.vocab_size) for x in ("en", "fr", "cs")}
    eval_batch = native.eval_sets()[native.eval_split][0].batch
    assert "prefix" not in eval_batch and set(eval_batch["start_ids"][:1].tolist()) <= codes
    assert set(fairseq.eval_sets()[fairseq.eval_split][0].batch["start_ids"].tolist()) == {EOS}
