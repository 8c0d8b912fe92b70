"""The batched beam search against a NumPy step-by-step port of fairseq's loop (toy scorer and tiny mBART) and
against HF PyTorch ``generate`` (beam 5 with early stopping, and greedy) on the tiny mBART."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses  # noqa: E402

import beam_reference as ref  # noqa: E402
import hf_fixtures as fx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from smc_jax.models import from_pretrained  # noqa: E402
from smc_jax.models.decoding import (  # noqa: E402
    BeamSearchConfig,
    beam_search,
    bucket_length,
    gather_beams,
    generate,
    pad_to_bucket,
)

V = fx.MBART_SIZES["vocab_size"]
EOS, TGT_CODE = 2, fx.MBART_N_SPM + 8  # fr_XX in the HF-native layout
MAX_LEN = 12


def _assert_same(out, b: int, expected: tuple[list[int], float, list[float]]):
    tokens, score, positional = expected
    n = int(out.lengths[b])
    assert [int(x) for x in out.tokens[b, :n]] == tokens
    assert (np.asarray(out.tokens[b, n:]) == 1).all()
    np.testing.assert_allclose(float(out.scores[b]), score, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.positional_scores[b, :n]), positional, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- toy scorer

TOY_CASES = {
    "beam5": dict(beam_size=5, max_len=9),
    "greedy-prefix-lenpen": dict(beam_size=1, max_len=9, len_penalty=0.5),
    "beam3-minlen-unk-hf": dict(beam_size=3, max_len=7, min_len=3, unk_penalty=0.7, ban_pad=False, forced_eos="zero"),
    "beam2-lenpen2": dict(beam_size=2, max_len=11, len_penalty=2.0),
    "beam4-short": dict(beam_size=4, max_len=2, len_penalty=1.5, forced_eos="zero"),
    "beam6-minlen-max": dict(beam_size=6, max_len=5, min_len=5, unk_penalty=0.3),
}
DEFAULT_TOY = {("beam5", False), ("beam5", True), ("greedy-prefix-lenpen", True), ("beam3-minlen-unk-hf", False)}


@pytest.mark.parametrize("case,with_prefix", [
    pytest.param(c, p, marks=() if (c, p) in DEFAULT_TOY else pytest.mark.slow) for c in TOY_CASES for p in (0, 1)])
def test_toy_scorer_matches_numpy_reference(case, with_prefix):
    """Token for token, with scores, on four sentences of a hash-based scorer; prefixes of different lengths (the
    last row's second token is pad: not forced)."""
    cfg = BeamSearchConfig(**TOY_CASES[case])
    toy = ref.ToyScorer(vocab=16, sentences=4, seed=len(case))
    starts = np.array([2, 2, 0, 5])
    prefix = np.array([[7, 9], [4, 4], [11, 3], [6, 1]]) if with_prefix else None
    K = cfg.beam_size
    out = jax.jit(lambda s, p: beam_search(toy.jax_step(), jnp.zeros((4, K), jnp.int32), s, cfg, p))(starts, prefix)
    lengths = []
    for b in range(4):
        forced = [] if prefix is None else [int(x) for x in prefix[b]]
        expected = ref.reference(toy.numpy(b), int(starts[b]), forced, cfg)
        _assert_same(out, b, expected[0])
        scores = sorted(np.asarray(out.finished_scores[b])[np.isfinite(out.finished_scores[b])], reverse=True)
        np.testing.assert_allclose(scores, [e[1] for e in expected], rtol=1e-5, atol=1e-6)
        lengths.append(len(expected[0][0]))
    if case == "beam5":
        assert len(set(lengths)) > 1  # the toy ends sentences at different steps


def test_loop_stops_when_all_sentences_are_done():
    cfg = BeamSearchConfig(beam_size=2, max_len=50)
    toy = ref.ToyScorer(vocab=16, sentences=2, seed=3)
    toy.table[:, EOS] += 4.0  # ends early
    out = jax.jit(lambda s: beam_search(toy.jax_step(), jnp.zeros((2, 2), jnp.int32), s, cfg))(np.array([2, 2]))
    assert int(out.steps) < 10 and int(out.lengths.max()) <= int(out.steps)


def test_helpers_and_bad_settings():
    x = jnp.arange(2 * 3 * 4).reshape(2, 3, 4)
    np.testing.assert_array_equal(gather_beams({"a": x}, jnp.array([[2, 2, 0], [1, 0, 1]]))["a"][1, 0], x[1, 1])
    assert bucket_length(17, (16, 32, 64)) == 32
    ids, mask = pad_to_bucket(np.array([[5, 6, 2], [7, 2, 1]]), np.array([[1, 1, 1], [1, 1, 0]]), (4, 8), rows=4)
    assert ids.shape == (4, 4) and mask.sum() == 5 and (ids[2:] == 1).all()
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket_length(65, (16, 32, 64))
    with pytest.raises(ValueError, match="min_len 5 > max_len 4"):
        BeamSearchConfig(max_len=4, min_len=5)
    with pytest.raises(ValueError, match="forced_eos"):
        BeamSearchConfig(forced_eos="hf")


# -------------------------------------------------------------------------------------------- tiny mBART


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch model, Flax module, params, HF-format batch of 4 sentences of different lengths)."""
    model = fx.mbart_decoding_model()
    module, params = from_pretrained(fx.mbart_save(model, tmp_path_factory.mktemp("mbart") / "st"))
    batch = fx.mbart_batch(rows=4, src_len=9, seed=5)
    assert len(set(batch["attention_mask"].sum(1))) > 1
    return model, module, params, batch


def _generate(tiny, cfg, start, prefix=None):
    _, module, params, batch = tiny
    with jax.default_matmul_precision("highest"):
        return generate(module, params, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]),
                        jnp.full((4,), start), prefix, config=cfg)


def _hf_generate(tiny, num_beams: int, **extra) -> list[list[int]]:
    """HF generate with the issue's settings (decoder start = the target language code); generated tokens, the
    start token dropped and trailing pads stripped."""
    model, _, _, batch = tiny
    kw = dict(num_beams=num_beams, length_penalty=1.0, early_stopping=True, decoder_start_token_id=TGT_CODE,
              min_new_tokens=1, max_new_tokens=MAX_LEN + 1, forced_eos_token_id=EOS, do_sample=False, **extra)
    if num_beams == 1:
        kw.pop("early_stopping")
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(batch["input_ids"]),
                             attention_mask=torch.tensor(batch["attention_mask"]), **kw).numpy()
    rows = []
    for row in out[:, 1:].tolist():
        n = row.index(EOS) + 1 if EOS in row else len(row)
        rows.append(row[:n])
    return rows


def _ours(out) -> list[list[int]]:
    return [[int(x) for x in out.tokens[b, :int(out.lengths[b])]] for b in range(out.tokens.shape[0])]


HF_MODE = dict(max_len=MAX_LEN, ban_pad=False, forced_eos="zero")  # HF's processors: pad allowed, forced EOS 0


def test_beam5_matches_hf_generate(tiny):
    """num_beams=5, early_stopping=True, length_penalty 1, min_new_tokens 1, max_new_tokens max_len + 1,
    forced_eos_token_id 2, decoder start = target code: the same tokens for every sentence, and hypotheses that
    end at different lengths (some at max_len)."""
    out = _generate(tiny, BeamSearchConfig(beam_size=5, **HF_MODE), TGT_CODE)
    hf = _hf_generate(tiny, 5)
    assert _ours(out) == hf
    assert len({len(r) for r in hf}) > 1


@pytest.mark.slow
def test_beam5_matches_hf_generate_with_pad_suppressed(tiny):
    out = _generate(tiny, BeamSearchConfig(beam_size=5, max_len=MAX_LEN, forced_eos="zero"), TGT_CODE)
    assert _ours(out) == _hf_generate(tiny, 5, suppress_tokens=[1])


@pytest.mark.slow
def test_greedy_matches_hf_greedy(tiny):
    out = _generate(tiny, BeamSearchConfig(beam_size=1, **HF_MODE), TGT_CODE)
    assert _ours(out) == _hf_generate(tiny, 1)


def _torch_scorer(model, batch, b):
    """NumPy reference scorer: HF PyTorch logits of the last position of sentence b's hypotheses."""
    src = torch.tensor(batch["input_ids"][b:b + 1])
    mask = torch.tensor(batch["attention_mask"][b:b + 1])
    with torch.no_grad():
        encoder = model.model.encoder(input_ids=src, attention_mask=mask)

    def score(beams):
        k = len(beams)
        hidden = encoder.last_hidden_state.expand(k, -1, -1)
        with torch.no_grad():
            out = model(encoder_outputs=(hidden,), attention_mask=mask.expand(k, -1),
                        decoder_input_ids=torch.tensor(beams))
        return out.logits[:, -1].numpy()

    return score


@pytest.mark.parametrize("fmt", ["fairseq", pytest.param("hf_native", marks=pytest.mark.slow)])
def test_tiny_model_matches_numpy_reference(tiny, fmt):
    """fairseq's defaults (pad banned, EOS keeps its log-prob at max_len). fairseq format: start </s>, the target
    language token forced at step 0 with its model log-prob; HF-native: start = the target code, no prefix."""
    model, _, _, batch = tiny
    cfg = BeamSearchConfig(beam_size=5, max_len=MAX_LEN)
    start, prefix = (EOS, np.full((4, 1), TGT_CODE)) if fmt == "fairseq" else (TGT_CODE, None)
    out = _generate(tiny, cfg, start, prefix)
    for b in range(4):
        expected = ref.reference(_torch_scorer(model, batch, b), start, [] if prefix is None else [TGT_CODE], cfg)
        _assert_same(out, b, expected[0])
    if fmt == "fairseq":
        assert (np.asarray(out.tokens[:, 0]) == TGT_CODE).all() and (np.asarray(out.positional_scores[:, 0]) < 0).all()


@pytest.mark.slow
def test_forced_eos_score_matters(tiny):
    """fairseq keeps EOS's log-prob at max_len, HF's processor gives it 0: the scores of hypotheses cut at max_len
    differ, so the switch is needed for HF parity."""
    fair = _generate(tiny, BeamSearchConfig(beam_size=5, max_len=MAX_LEN), TGT_CODE)
    hf = _generate(tiny, dataclasses.replace(BeamSearchConfig(beam_size=5, max_len=MAX_LEN), forced_eos="zero"),
                   TGT_CODE)
    cut = np.asarray(hf.lengths) == MAX_LEN + 1
    assert cut.any()
    assert (np.asarray(fair.scores)[cut] < np.asarray(hf.scores)[cut]).all()
