"""mBART in Flax and its checkpoint loading, against the transformers PyTorch ``MBartForConditionalGeneration``."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import copy  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402

import flax.linen as nn  # noqa: E402
import hf_fixtures as fx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from flax import traverse_util  # noqa: E402

from smc_jax.models import from_pretrained, mbart_vocab  # noqa: E402
from smc_jax.models.hf import abstract_params  # noqa: E402
from smc_jax.models.losses import label_smoothed_nll  # noqa: E402
from smc_jax.models.mbart import MBartForConditionalGeneration, MBartOutput, init_cache  # noqa: E402

V = fx.MBART_SIZES["vocab_size"]
INPUTS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")


@pytest.fixture(scope="module")
def torch_model():
    return fx.mbart_torch_model()


@pytest.fixture(scope="module")
def checkpoint(torch_model, tmp_path_factory):
    return fx.mbart_save(torch_model, tmp_path_factory.mktemp("mbart") / "st")


@functools.partial(jax.jit, static_argnums=0)
def _forward(module, params, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask):
    return module.apply({"params": params}, input_ids=input_ids, attention_mask=attention_mask,
                        decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                        deterministic=True)


def _logits(module, params, inputs):
    with jax.default_matmul_precision("highest"):
        out = _forward(module, params, *(jnp.asarray(inputs[k]) for k in INPUTS))
    assert isinstance(out, MBartOutput) and out[0] is out.logits
    return np.asarray(out.logits)


def _assert_parity(module, params, torch_model, inputs):
    ours, ref = _logits(module, params, inputs), fx.mbart_torch_logits(torch_model, inputs)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)  # every position, padding included


def test_logits_match_pytorch_hf_native(torch_model, checkpoint):
    module, params = from_pretrained(checkpoint)
    assert isinstance(module, MBartForConditionalGeneration) and module.config.vocab_size == V
    inputs = fx.mbart_batch()
    assert (inputs["attention_mask"] == 0).any() and (inputs["decoder_attention_mask"] == 0).any()
    _assert_parity(module, params, torch_model, inputs)


def test_logits_match_pytorch_fairseq_layout(torch_model, checkpoint):
    """The explicit conversion equals fairseq's load-time truncation: HF's model with its vocabulary resized to
    n_spm + 26 rows (embedding and bias truncated) gives the same logits."""
    module, params = mbart_vocab.to_fairseq_layout(*from_pretrained(checkpoint))
    assert module.config.vocab_size == V - 1 and params["model"]["shared"]["embedding"].shape == (V - 1, 32)
    assert params["final_logits_bias"].shape == (1, V - 1)
    truncated = copy.deepcopy(torch_model)
    truncated.resize_token_embeddings(V - 1)
    inputs = fx.mbart_batch(vocab=V - 1, src_code=mbart_vocab.langtok_id("en", V - 1),
                            tgt_code=mbart_vocab.langtok_id("fr", V - 1), seed=1)
    _assert_parity(module, params, truncated, inputs)
    # __xx__ rows keep the pretrained rows of the alphabetical codes with the same id
    table = np.asarray(params["model"]["shared"]["embedding"])
    en, cs = mbart_vocab.langtok_id("en", V - 1), mbart_vocab.lang_code_id("cs_CZ", V)
    assert en == cs and mbart_vocab.langtok_id("fr", V - 1) == mbart_vocab.lang_code_id("fr_XX", V)
    np.testing.assert_array_equal(table[en], torch_model.model.shared.weight[cs].detach().numpy())


@pytest.mark.parametrize("fmt", ["bin", "fairseq_keys", pytest.param("sharded", marks=pytest.mark.slow)])
def test_checkpoint_formats(torch_model, tmp_path, fmt):
    """``.bin`` with every tied copy; the embedding only as ``encoder.embed_tokens`` without a bias (-> zeros)."""
    model = copy.deepcopy(torch_model)
    if fmt == "fairseq_keys":
        with torch.no_grad():
            model.final_logits_bias.zero_()
    module, params = from_pretrained(fx.mbart_save(torch_model, tmp_path / fmt, fmt))
    if fmt == "fairseq_keys":
        assert not np.asarray(params["final_logits_bias"]).any()
    _assert_parity(module, params, model, fx.mbart_batch(seed=2))


def test_cached_decoding_equals_full_forward(checkpoint):
    """Encoder once, cross-attention keys/values once, then one token per step against the cache: the logits of
    every step equal the full (teacher-forced) forward's."""
    module, params = from_pretrained(checkpoint)
    inputs = fx.mbart_batch(seed=3)
    dec = np.random.default_rng(3).integers(3, V, inputs["decoder_input_ids"].shape)  # no decoder padding
    full = dict(inputs, decoder_input_ids=dec, decoder_attention_mask=np.ones_like(dec))
    ref = _logits(module, params, full)
    variables = {"params": params}
    ids, mask = jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"])
    with jax.default_matmul_precision("highest"):
        cross = jax.jit(lambda: module.apply(variables, module.apply(variables, ids, mask, method="encode"),
                                             method="cross_kv"))()
        step = jax.jit(lambda tok, t, cache: module.apply(variables, tok, t, cache, cross, mask, method="decode"))
        cache = init_cache(module.config, dec.shape[0], 8)
        for t in range(dec.shape[1]):
            logits, cache = step(jnp.asarray(dec[:, t:t + 1]), t, cache)
            np.testing.assert_allclose(np.asarray(logits[:, 0]), ref[:, t], atol=1e-5, rtol=0)


def test_param_paths_axes_and_frozen_bias(checkpoint):
    module, params = from_pretrained(checkpoint)
    paths = {"/".join(k) for k in traverse_util.flatten_dict(params)}
    per_side, per_encoder_layer, per_decoder_layer = 5, 16, 26  # 2 layers each; plus shared and the bias
    assert len(paths) == 2 + 2 * per_side + 2 * per_encoder_layer + 2 * per_decoder_layer
    assert {"model/shared/embedding", "final_logits_bias", "model/encoder/embed_positions/embedding",
            "model/decoder/layernorm_embedding/scale", "model/encoder/layer_norm/bias",
            "model/encoder/layers/1/self_attn/out_proj/kernel", "model/decoder/layers/0/encoder_attn/k_proj/bias",
            "model/decoder/layers/1/encoder_attn_layer_norm/scale", "model/decoder/layers/1/fc2/kernel"} <= paths
    assert params["model"]["encoder"]["embed_positions"]["embedding"].shape == (64 + 2, 32)
    specs = traverse_util.flatten_dict(nn.get_partition_spec(abstract_params(module)))
    spec = lambda path: tuple(specs[tuple(path.split("/"))])  # noqa: E731
    assert spec("model/shared/embedding") == ("vocab", "embed")
    assert spec("final_logits_bias") == (None, "vocab")
    assert spec("model/decoder/layers/0/encoder_attn/q_proj/kernel") == ("embed", "heads")
    assert spec("model/decoder/layers/0/self_attn/out_proj/kernel") == ("heads", "embed")
    assert spec("model/encoder/layers/0/fc1/kernel") == ("embed", "mlp")
    assert spec("model/encoder/embed_positions/embedding") == (None, "embed")
    hidden = jnp.ones((2, 3, 32))
    grads = jax.grad(lambda p: module.apply({"params": p}, hidden, method="logits").sum())(params)
    assert not np.asarray(grads["final_logits_bias"]).any()  # frozen
    assert np.asarray(grads["model"]["shared"]["embedding"]).any()  # the tied projection


@pytest.mark.slow
def test_bf16_and_remat(checkpoint):
    """bf16 compute keeps float32 params and float32 logits close to fp32's; remat changes no gradient."""
    module, params = from_pretrained(checkpoint)
    inputs = {k: jnp.asarray(v) for k, v in fx.mbart_batch().items()}
    ref = _logits(module, params, inputs)
    bf16, _ = from_pretrained(checkpoint, dtype=jnp.bfloat16)
    out = _logits(bf16, params, inputs)
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 0.1
    remat, _ = from_pretrained(checkpoint, remat=True, dropout=0.3, attention_dropout=0.1)
    plain, _ = from_pretrained(checkpoint, dropout=0.3, attention_dropout=0.1)

    def loss(module, p):
        out = module.apply({"params": p}, *(inputs[k] for k in INPUTS), deterministic=False,
                           rngs={"dropout": jax.random.key(1)})
        return jnp.mean(jax.nn.log_softmax(out.logits)[..., 5])

    g_remat = jax.jit(jax.grad(functools.partial(loss, remat)))(params)
    g_plain = jax.jit(jax.grad(functools.partial(loss, plain)))(params)
    for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_label_smoothed_nll_is_fairseqs():
    """Cross-entropy against 1 - eps on the target and eps / (V - 1) on every other class, pads excluded; not
    optax.smooth_labels' eps / V everywhere."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, (2, 5))
    targets[1, 3:] = 1  # pads
    eps = 0.2
    q = np.full(logits.shape, eps / 10)
    np.put_along_axis(q, targets[..., None], 1 - eps, axis=-1)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = targets != 1
    sums = label_smoothed_nll(jnp.asarray(logits), jnp.asarray(targets), eps)
    np.testing.assert_allclose(float(sums.loss), -(q * lp).sum(-1)[keep].sum(), rtol=1e-5)
    nll = -np.take_along_axis(lp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(sums.nll_loss), nll[keep].sum(), rtol=1e-5)
    assert int(sums.ntokens) == keep.sum()
    import optax

    smoothed = optax.smooth_labels(jax.nn.one_hot(targets, 11), eps)
    assert abs(float(-(smoothed * lp).sum(-1)[keep].sum()) - float(sums.loss)) > 1e-3


# ------------------------------------------------------------------------------------------ bad inputs


def test_other_model_type_is_refused(tmp_path, checkpoint):
    bert = fx.save(fx.torch_model("bert", None), tmp_path / "bert")
    assert "expected model_type 'mbart'" in fx.load_error(bert, model_type="mbart")
    fx.rewrite_config(bert, model_type="mbart", d_model=32, vocab_size=V)
    assert "'bert' weights" in fx.load_error(bert)


def test_missing_tensor_is_named(tmp_path, torch_model):
    from safetensors.numpy import load_file, save_file

    directory = fx.mbart_save(torch_model, tmp_path / "st")
    tensors = load_file(directory / "model.safetensors")
    del tensors["model.decoder.layers.1.encoder_attn.v_proj.weight"]
    save_file(tensors, directory / "model.safetensors")
    message = fx.load_error(directory)
    assert "lacks 1 tensor" in message and "model.decoder.layers.1.encoder_attn.v_proj.weight" in message


def test_tokenizer_layout(tmp_path):
    """A tiny unigram sentencepiece model through ``MBartTokenizer.from_pretrained``: n_spm + 27 ids, language
    codes where the layout puts them; a tokenizer of another size is refused in one line."""
    tokenizer = fx.tiny_mbart_tokenizer(tmp_path / "tok", n_spm=60)
    n_spm = len(tokenizer) - 27
    assert n_spm + 27 != V
    mbart_vocab.check_tokenizer(tokenizer, n_spm + 27)
    assert tokenizer.convert_tokens_to_ids("fr_XX") == mbart_vocab.lang_code_id("fr_XX", n_spm + 27)
    batch = tokenizer("the quick fox", text_target="le renard")
    assert batch["input_ids"][-2:] == [2, mbart_vocab.lang_code_id("en_XX", n_spm + 27)]
    assert batch["labels"][-2:] == [2, mbart_vocab.lang_code_id("fr_XX", n_spm + 27)]
    with pytest.raises(mbart_vocab.CheckpointError, match=f"has {V} rows") as info:
        mbart_vocab.check_tokenizer(tokenizer, V)  # the tiny checkpoints' vocabulary
    assert "\n" not in str(info.value)
    assert mbart_vocab.langtok_id("my", 250026) == 250001 and mbart_vocab.langtok_id("gu", 250026) == 250025
    assert mbart_vocab.lang_code_id("en_XX", 250027) == 250004


def test_bad_config_is_one_line(tmp_path, checkpoint):
    directory = tmp_path / "ld"
    directory.mkdir()
    for f in checkpoint.iterdir():
        (directory / f.name).write_bytes(f.read_bytes())
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "decoder_layerdrop": 0.1}))
    assert "LayerDrop is not supported" in fx.load_error(directory)
