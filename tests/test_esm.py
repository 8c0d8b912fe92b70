"""ESM-1b / ESM-2 Flax encoder and its checkpoint loading against the real transformers PyTorch ``EsmModel``."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import logging  # noqa: E402

import flax.linen as nn  # noqa: E402
import hf_fixtures as fx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import transformers as tr  # noqa: E402
from flax import traverse_util  # noqa: E402

from smc_jax.models import from_pretrained, layers  # noqa: E402
from smc_jax.models.esm import EsmConfig, EsmModel, EsmModelOutput, default_inv_freq  # noqa: E402
from smc_jax.models.hf import CheckpointError, abstract_params, build_module, load_params, read_config  # noqa: E402

KINDS = tuple(fx.ESM_KINDS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{kind: (torch EsmModel, {format: directory})} for safetensors and pytorch_model.bin."""
    root = tmp_path_factory.mktemp("esm")
    out = {}
    for kind in KINDS:
        model = fx.esm_torch_model(kind)
        out[kind] = model, {fmt: fx.save(model, root / f"{kind}-{fmt}", fmt) for fmt in ("safetensors", "bin")}
    return out


def _hidden(module, params, inputs, **kw):
    """The last hidden state under jit, fp32 matmuls at full precision."""
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda p, ids, mask: module.apply({"params": p}, ids, mask, **kw))(
            params, jnp.asarray(inputs["input_ids"]), jnp.asarray(inputs["attention_mask"]))
    assert isinstance(out, EsmModelOutput)
    return out.last_hidden_state


def _assert_parity(module, params, model, inputs, atol=1e-5):
    ours = np.asarray(_hidden(module, params, inputs), np.float32)
    ref = fx.esm_torch_hidden(model, inputs)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=atol, rtol=0)  # every position, padding included
    np.testing.assert_allclose(fx.esm_pooled(ours, inputs), fx.esm_pooled(ref, inputs), atol=atol, rtol=0)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("kind", KINDS)
def test_matches_pytorch(checkpoints, kind, fmt):
    model, dirs = checkpoints[kind]
    module, params = from_pretrained(dirs[fmt])
    inputs = fx.esm_batch()
    assert (inputs["input_ids"] == fx.ESM_MASK).any() and (inputs["attention_mask"] == 0).any()
    _assert_parity(module, params, model, inputs)


def test_rotary_frequencies_come_from_the_checkpoint(checkpoints):
    model, dirs = checkpoints["esm2"]
    stored = model.rotary_embeddings.inv_freq.numpy()
    computed = default_inv_freq(16)
    assert np.array_equal(stored, stored.astype(np.float16)) and not np.allclose(stored, computed, rtol=1e-3)
    module, params = from_pretrained(dirs["safetensors"])
    np.testing.assert_array_equal(np.asarray(module.config.rotary_inv_freq, np.float32), stored)
    # the module built from config.json alone computes HF's default table, and the loader refuses it
    plain = build_module(read_config(dirs["safetensors"]))
    np.testing.assert_allclose(np.asarray(plain.config.rotary_inv_freq), computed, rtol=1e-7)
    with pytest.raises(CheckpointError, match="rotary_inv_freq.*checkpoint_dir") as info:
        load_params(plain, dirs["safetensors"])
    assert "\n" not in str(info.value)
    # ... which does matter: outputs move by more than the parity tolerance
    inputs = fx.esm_batch()
    moved = np.abs(np.asarray(_hidden(plain, params, inputs)) - np.asarray(_hidden(module, params, inputs))).max()
    assert moved > 1e-3
    built = build_module(read_config(dirs["bin"]), checkpoint_dir=dirs["bin"])
    assert built.config == module.config
    _assert_parity(built, jax.tree.map(jnp.asarray, load_params(built, dirs["bin"])), model, inputs)


def test_default_frequencies_match_hf():
    hf = tr.EsmModel(fx.esm_config("esm2"), add_pooling_layer=False).rotary_embeddings.inv_freq.numpy()
    np.testing.assert_allclose(np.asarray(EsmConfig(**fx.ESM_SIZES).rotary_inv_freq), hf, rtol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_lm_checkpoint_released_layout(tmp_path, kind, caplog):
    """EsmForMaskedLM (``esm.`` prefix, lm_head, contact head) as the released checkpoints lay it out: per-layer
    inv_freq and ESM-2's unused position table; the head, the contact head and the extra table are skipped."""
    model = fx.esm_torch_model(kind, cls=tr.EsmForMaskedLM, seed=1)
    directory = fx.esm_facebook_style(model, tmp_path)
    with caplog.at_level(logging.WARNING):
        module, params = from_pretrained(directory)
    assert "esm.contact_head.regression.weight" in caplog.text and "lm_head.dense.weight" in caplog.text
    if kind == "esm2":
        assert "esm.embeddings.position_embeddings.weight" in caplog.text
        assert "inv_freq" not in caplog.text  # read into the config, so not reported as unused
    assert isinstance(module, EsmModel) and "lm_head" not in params
    _assert_parity(module, params, model, fx.esm_batch(seed=1))


def test_sharded_safetensors(tmp_path):
    model = fx.esm_torch_model("esm2", cls=tr.EsmForMaskedLM, seed=2)
    directory = fx.save(model, tmp_path / "sharded", "sharded")
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    module, params = from_pretrained(directory)
    _assert_parity(module, params, model, fx.esm_batch(seed=2))


def test_padding_does_not_change_real_positions(checkpoints):
    module, params = from_pretrained(checkpoints["esm2"][1]["safetensors"])
    inputs = fx.esm_batch()
    padded = np.asarray(_hidden(module, params, inputs))
    for row in range(1, 4):
        n = int(inputs["attention_mask"][row].sum())
        alone = {k: v[row:row + 1, :n] for k, v in inputs.items()}
        np.testing.assert_allclose(np.asarray(_hidden(module, params, alone))[0], padded[row, :n], atol=1e-5)


def test_param_paths_and_logical_axes(checkpoints):
    model, dirs = checkpoints["esm1b"]
    module, params = from_pretrained(dirs["safetensors"])
    paths = {"/".join(k) for k in traverse_util.flatten_dict(params)}
    assert {"embeddings/word_embeddings/embedding", "embeddings/position_embeddings/embedding",
            "embeddings/layer_norm/scale", "encoder/layer/1/attention/LayerNorm/bias",
            "encoder/layer/0/attention/self/query/kernel", "encoder/layer/0/attention/output/dense/kernel",
            "encoder/layer/0/LayerNorm/scale", "encoder/layer/1/intermediate/dense/kernel",
            "encoder/layer/1/output/dense/bias", "encoder/emb_layer_norm_after/scale"} <= paths
    assert len(paths) == 4 + 16 * 2 + 2  # embeddings; 16 per layer; the final LayerNorm
    rotary_paths = {"/".join(k) for k in traverse_util.flatten_dict(
        from_pretrained(checkpoints["esm2"][1]["safetensors"])[1])}
    assert rotary_paths == paths - {"embeddings/position_embeddings/embedding", "embeddings/layer_norm/scale",
                                    "embeddings/layer_norm/bias"}
    specs = traverse_util.flatten_dict(nn.get_partition_spec(abstract_params(module)))
    assert len(specs) == len(paths)
    spec = lambda path: tuple(specs[tuple(path.split("/"))])  # noqa: E731
    assert spec("embeddings/word_embeddings/embedding") == ("vocab", "embed")
    assert spec("embeddings/position_embeddings/embedding") == (None, "embed")
    assert spec("encoder/layer/1/attention/self/key/kernel") == ("embed", "heads")
    assert spec("encoder/layer/1/attention/self/key/bias") == ("heads",)
    assert spec("encoder/layer/0/attention/output/dense/kernel") == ("heads", "embed")
    assert spec("encoder/layer/0/intermediate/dense/kernel") == ("embed", "mlp")
    assert spec("encoder/layer/0/output/dense/kernel") == ("mlp", "embed")
    assert spec("encoder/emb_layer_norm_after/scale") == ("embed",)
    np.testing.assert_array_equal(np.asarray(params["encoder"]["layer"]["0"]["attention"]["LayerNorm"]["scale"]),
                                  model.encoder.layer[0].attention.LayerNorm.weight.detach().numpy())
    np.testing.assert_array_equal(np.asarray(params["encoder"]["layer"]["1"]["intermediate"]["dense"]["kernel"]),
                                  model.encoder.layer[1].intermediate.dense.weight.detach().numpy().T)


def test_config_from_hf_object_and_dict(checkpoints):
    model, dirs = checkpoints["esm1b"]
    assert EsmConfig.from_hf(model.config) == EsmConfig.from_hf(read_config(dirs["safetensors"]))
    config = EsmConfig.from_hf(model.config)
    assert (config.layer_norm_eps, config.emb_layer_norm_before, config.rotary_inv_freq) == (1e-5, True, None)
    with pytest.raises(ValueError, match="is_decoder"):
        EsmConfig.from_hf({**read_config(dirs["safetensors"]), "is_decoder": True})


@pytest.mark.parametrize("kind", KINDS)
def test_from_config_alone(kind):
    config = EsmConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **fx.ESM_KINDS[kind])
    assert config.intermediate_size == 128
    module = EsmModel(config)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), *module.dummy_inputs()))["params"]
    inputs = fx.esm_batch((3, 9))
    hidden = np.asarray(_hidden(module, params, inputs))
    assert hidden.shape == (3, 9, 32) and np.isfinite(hidden).all()
    assert np.abs(hidden[inputs["attention_mask"] == 1]).max() > 0.1
    # the HF model with the same weights (through the loader's name map) agrees
    hf = tr.EsmModel(fx.esm_config(kind, hidden_size=32, intermediate_size=128), add_pooling_layer=False).eval()
    assert {"/".join(k) for k in traverse_util.flatten_dict(params)} == {
        "/".join(k) for k in traverse_util.flatten_dict(nn.meta.unbox(abstract_params(module)))}
    assert sum(x.size for x in jax.tree.leaves(params)) == sum(
        p.numel() for n, p in hf.named_parameters() if not n.startswith("contact_head"))


def test_bf16_compute_close_to_fp32(checkpoints):
    model, dirs = checkpoints["esm2"]
    module, params = from_pretrained(dirs["safetensors"], dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    inputs = fx.esm_batch()
    out = _hidden(module, params, inputs)
    assert out.dtype == jnp.bfloat16
    ref = fx.esm_torch_hidden(model, inputs)
    assert np.abs(np.asarray(out, np.float32) - ref).max() < 0.1 * np.abs(ref).max()


def test_remat_same_outputs_and_gradients(checkpoints):
    directory = checkpoints["esm2"][1]["safetensors"]
    inputs = {k: jnp.asarray(v) for k, v in fx.esm_batch().items()}
    results = []
    for remat in (False, True):  # dropout on, so the remat path must draw the same masks
        module, params = from_pretrained(directory, remat=remat, hidden_dropout_prob=0.1,
                                         attention_probs_dropout_prob=0.1)

        def loss(p, module=module):
            out = module.apply({"params": p}, inputs["input_ids"], inputs["attention_mask"], deterministic=False,
                               rngs={"dropout": jax.random.key(3)}).last_hidden_state
            return jnp.mean(out**2), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        results.append((out, grads))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)  # same dropout masks, fp32 reassociation
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), results[0][1], results[1][1])


def test_explicit_attention_path_matches_fused():
    """The explicit, heads-major attention (with and without a dropout hook) equals
    ``jax.nn.dot_product_attention``, for both logit scalings (BERT's divide-by-sqrt(head_dim), ESM's pre-scaled
    query)."""
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 4, 8))
    mask = layers.padding_mask(jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    for scale in (None, 1.0):
        fused = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale))(q, k, v)
        plain = jax.jit(lambda q, k, v: layers.attend(q, k, v, mask, scale=scale))(q, k, v)
        explicit = jax.jit(lambda q, k, v: layers.attend(q, k, v, mask, scale=scale, dropout=lambda p: p))(q, k, v)
        np.testing.assert_allclose(plain, fused, atol=1e-5)
        np.testing.assert_allclose(explicit, fused, atol=1e-5)


def test_errors_other_model_types(tmp_path, checkpoints):
    esm_dir = checkpoints["esm2"][1]["safetensors"]
    bert = fx.torch_model("bert", "masked_lm")
    bert_dir = fx.save(bert, tmp_path / "bert")
    message = fx.load_error(bert_dir, model_type="esm")
    assert "'bert'" in message and "'esm'" in message
    message = fx.load_error(esm_dir, model_type="bert")
    assert "'esm'" in message and "'bert'" in message
    fx.rewrite_config(bert_dir, model_type="esm")  # prefixed BERT weights under an ESM config
    message = fx.load_error(bert_dir)
    assert "'bert' weights" in message and "'esm'" in message
    base_dir = fx.save(fx.torch_model("bert", None), tmp_path / "bert-base")  # unprefixed weights
    fx.rewrite_config(base_dir, **fx.esm_config("esm2").to_dict())
    message = fx.load_error(base_dir)
    assert "'bert' weights" in message and "attention.output.LayerNorm" in message and "'esm'" in message
    fx.save(checkpoints["esm1b"][0], tmp_path / "esm-as-bert")  # absolute positions: a valid BERT config
    fx.rewrite_config(tmp_path / "esm-as-bert", model_type="bert")
    message = fx.load_error(tmp_path / "esm-as-bert")
    assert "'esm' weights" in message and "emb_layer_norm_after" in message and "'bert'" in message
    masked_dir = fx.save(fx.esm_torch_model("esm1b", cls=tr.EsmForMaskedLM), tmp_path / "esm-mlm")
    fx.rewrite_config(masked_dir, model_type="roberta")
    assert "'esm' weights (keys esm.*)" in fx.load_error(masked_dir)
    with pytest.raises(ValueError, match="only the base encoder"):
        from_pretrained(esm_dir, head="masked_lm")


def test_errors_missing_and_misshapen(tmp_path, checkpoints):
    from safetensors.numpy import save_file

    from smc_jax.models.hf import read_safetensors

    source = checkpoints["esm1b"][1]["safetensors"]
    tensors = {".".join(k): np.array(v) for k, v in read_safetensors(source / "model.safetensors").items()}
    for name, change, expect in (
            ("missing", lambda t: t.pop("encoder.layer.1.LayerNorm.gamma"), ["lacks 1 tensor",
                                                                              "encoder.layer.1.LayerNorm.weight"]),
            ("shape", lambda t: t.update({"embeddings.position_embeddings.weight": np.zeros((514, 64), np.float32)}),
             ["embeddings.position_embeddings.weight", "(514, 64)", "(1026, 64)"])):
        directory = tmp_path / name
        directory.mkdir()
        broken = dict(tensors)
        change(broken)
        (directory / "config.json").write_text((source / "config.json").read_text())
        save_file(broken, str(directory / "model.safetensors"))
        message = fx.load_error(directory)
        assert all(e in message for e in expect), message
