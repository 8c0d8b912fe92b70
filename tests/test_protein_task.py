"""ProteinTask (smc_jax.tasks.protein): SMC-Bench's head and its torch-default init, pooling against the HF PyTorch
encoder, batches (length buckets, the short last batch, filler rows), the losses, the metrics against scipy, the
selection switch, the masking rules, the frozen head under the faithful optimizer, and the task's one-line errors.
Tiny ESM checkpoints (hf_fixtures) and a handful of sequences."""

import pickle

import flax.linen as nn
import hf_fixtures as fx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA
from scipy import stats

from smc_jax import sparsity as sp
from smc_jax.tasks.protein import ProteinTask, hotprotein, protein_head_group
from smc_jax.tasks.protein.head import EMB_HEADS, PropertyHead, mean_pool
from smc_jax.train.optim import OneCycle, Optimizer
from smc_jax.train.trainer import MaskRules

TAPE = SHARED_DATA / "tape_stability"
MELTOME = SHARED_DATA / "flip_meltome_early"
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
RESIDUES = "LAGVSERTIDPKQNFYMHWC"


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("SMC_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def esm1b(tmp_path_factory):
    """A tiny ESM-1b-like EsmForMaskedLM checkpoint directory, laid out as the released ones."""
    root = tmp_path_factory.mktemp("tiny_esm1b")
    return fx.tiny_esm_checkpoint(root / "ckpt", "esm1b")


def write_hotprotein(root, train, test, num_classes=5, seed=0, lengths=(8, 40), dataset="hp_s", fold=1):
    """HotProtein files as ``hotprotein.LAYOUTS[dataset]`` places them: ``<name>.fasta`` (a header line, the
    sequence over two lines) and the split pickle; ``train`` / ``test`` are counts (labels cycle through the
    classes) or ``(names, labels)``. Returns ``root``."""
    layout = hotprotein.LAYOUTS[dataset]
    rng = np.random.default_rng(seed)
    fasta = root / layout.fasta_dir
    fasta.mkdir(parents=True, exist_ok=True)
    table = {}
    for split, spec in (("train", train), ("test", test)):
        names, labels = spec if isinstance(spec, tuple) else (
            [f"{split}{i}" for i in range(spec)], [float(i % num_classes) for i in range(spec)])
        for name in names:
            seq = "".join(rng.choice(list(RESIDUES), size=int(rng.integers(*lengths))))
            (fasta / f"{name}.fasta").write_text(f">{name} header\n{seq[:5]}\n{seq[5:]}\n")
        table[f"{split}_names"], table[f"{split}_labels"] = list(names), list(labels)
    (root / layout.split_file.format(fold=fold)).write_bytes(pickle.dumps(table))
    return root


def stability(**kw) -> ProteinTask:
    options = dict(dataset="stability", pretrained=None, model_config=TINY, data_dir=str(TAPE), max_train_examples=7,
                   max_eval_examples=6, batch_size=3, length_buckets=(64,))
    return ProteinTask(**{**options, **kw})


# ------------------------------------------------------------------------------------------------ the model


def test_head_has_torch_default_init_and_smc_shape():
    head = PropertyHead(hidden=512, num_outputs=5)
    params = jax.jit(head.init)(jax.random.key(0), jnp.zeros((1, 1280)))["params"]
    params = jax.tree.map(np.asarray, nn.meta.unbox(params))
    assert params["dense"]["kernel"].shape == (1280, 512) and params["out_proj"]["kernel"].shape == (512, 5)
    for name, fan_in in (("dense", 1280), ("out_proj", 512)):
        for leaf in ("kernel", "bias"):
            x = params[name][leaf]
            bound = 1 / np.sqrt(fan_in)  # torch.nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the bias too
            assert np.abs(x).max() <= bound
            if x.size >= 512:  # uniform: max near the bound, std bound/sqrt(3)
                assert np.abs(x).max() > 0.95 * bound and abs(x.std() - bound / np.sqrt(3)) < 0.1 * bound
    assert (params["layer_norm"]["scale"] == 1).all() and (params["layer_norm"]["bias"] == 0).all()
    other = jax.jit(PropertyHead(hidden=512, num_outputs=5, init_scheme="lecun_normal").init)(
        jax.random.key(0), jnp.zeros((1, 1280)))["params"]
    assert float(jnp.abs(nn.meta.unbox(other)["dense"]["bias"]).max()) == 0.0


def test_pooling_and_head_match_the_pytorch_encoder(esm1b, tmp_path):
    """The task's encoder output pooled over ids >= 2 equals HF PyTorch EsmModel's, and the logits are the head
    applied to it."""
    import transformers as tr

    task = ProteinTask(dataset="hps", pretrained=str(esm1b), data_dir=str(write_hotprotein(tmp_path, 5, 5)),
                       batch_size=5, length_buckets=(48,))
    params = task.init_params(jax.random.key(0))
    batch = task.make_train_batch(list(range(5)))
    batch["input_ids"][1, 3] = fx.ESM_MASK  # a <mask> inside a sequence
    inputs = {k: batch[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    model = tr.EsmForMaskedLM.from_pretrained(esm1b, attn_implementation="eager").eval()
    ref = fx.esm_pooled(fx.esm_torch_hidden(model, inputs), inputs)

    def forward(params, batch):
        hidden = task.encoder.module.apply({"params": params["esm"]}, batch["input_ids"],
                                           batch["attention_mask"]).last_hidden_state
        return mean_pool(hidden, batch["input_ids"], batch["attention_mask"]), task._outputs(params, batch, None)

    with jax.default_matmul_precision("highest"):
        pooled, logits = jax.jit(forward)(params, batch)
    np.testing.assert_allclose(np.asarray(pooled), ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(task.head.apply({"params": params["head"]}, ref)),
                               atol=1e-5, rtol=0)
    assert task.model_name == "esm" and task.esm_config.emb_layer_norm_before


# ------------------------------------------------------------------------------------------------ batches


def test_batches_buckets_short_last_batch_and_filler_rows():
    task = stability(length_buckets=(16, 64, 128))
    assert task.steps_per_epoch == 3  # 7 sequences in batches of 3, the last short (drop_last=False)
    order = task.epoch_order(0, 0)
    assert sorted(sum(order, [])) == list(range(7)) and [len(b) for b in order] == [3, 3, 1]
    batch = task.make_train_batch(order[2])
    assert batch["input_ids"].shape == (3, 64)  # TAPE sequences are 43/50 residues: tokens <= 52 -> bucket 64
    assert batch["weights"].tolist() == [1, 0, 0] and batch["targets"].dtype == np.float32
    assert batch["input_ids"][1, :3].tolist() == [0, 2, 1] and batch["attention_mask"][1, :3].tolist() == [1, 1, 0]
    real = task.train.lengths[order[2][0]]
    assert batch["attention_mask"][0].sum() == real and batch["input_ids"][0, real - 1] == 2
    np.testing.assert_allclose(batch["targets"][0], task.train_y[order[2][0]])
    chunks = task.eval_sets()["test"]
    lengths = [int(c.batch["attention_mask"][i].sum()) for c in chunks for i in range(c.count)]
    assert lengths == sorted(lengths)  # evaluation chunks sorted by length


def test_crop_length_and_truncation(tmp_path):
    root = write_hotprotein(tmp_path, 3, 2, lengths=(30, 31))
    task = ProteinTask(dataset="hps", pretrained=None, model_config=TINY, data_dir=str(root), crop_length=10)
    assert (task.train.lengths == 12).all()  # cls + 10 residues + eos
    smc = ProteinTask(dataset="hps", pretrained=None, model_config=TINY, data_dir=str(root), max_length=16)
    row = smc.train.tokens[: smc.train.lengths[0]]
    assert len(row) == 16 and row[0] == 0 and row[-1] != 2  # SMC-Bench's toks[:, :max_length]: eos lost
    esm = ProteinTask(dataset="hps", pretrained=None, model_config=TINY, data_dir=str(root), max_length=16,
                      truncation="esm")
    assert esm.train.tokens[esm.train.lengths[0] - 1] == 2


# ------------------------------------------------------------------------------------------------ loss, metrics


def test_losses_are_the_mean_over_real_rows():
    task = stability()
    params = task.init_params(jax.random.key(0))
    batch = task.make_train_batch([0, 4])
    out = np.asarray(jax.jit(task._outputs, static_argnums=2)(params, batch, None))[:2, 0]
    y = batch["targets"][:2]
    assert float(jax.jit(task.loss)(params, batch)) == pytest.approx(np.mean((out - y) ** 2), rel=1e-5)
    std = stability(regression_loss="standardized_mse")
    z = (y - std.target_mean) / std.target_std
    assert float(jax.jit(std.loss)(params, batch)) == pytest.approx(np.mean((out - z) ** 2), rel=1e-5)
    assert std.target_mean == pytest.approx(task.train_y.mean()) and std.target_std == pytest.approx(task.train_y.std())


def test_classification_loss_and_accuracy(tmp_path):
    root = write_hotprotein(tmp_path, 6, 5)
    task = ProteinTask(dataset="hps", pretrained=None, model_config=TINY, data_dir=str(root), length_buckets=(64,))
    params = task.init_params(jax.random.key(1))
    batch = task.make_train_batch([0, 1, 2])
    logits = np.asarray(jax.jit(task._outputs, static_argnums=2)(params, batch, None), np.float64)
    ce = -np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))[np.arange(3), batch["labels"]]
    assert float(jax.jit(task.loss)(params, batch)) == pytest.approx(ce.mean(), rel=1e-5)
    labels = task.eval_data["test"]["labels"]
    fake = np.eye(5)[(labels + np.array([0, 0, 1, 0, 1])) % 5]  # 3 of 5 right
    assert task.compute_metrics({"test": {"logits": fake}}) == {"test/accuracy": 60.0, "num_eval": 5}
    assert task.metric == "test/accuracy" and task.metrics == ("test/accuracy",) and task.num_eval == 5


def test_spearman_metrics_equal_scipy():
    task = stability(select_on="valid")
    rng = np.random.default_rng(0)
    outputs = {n: {"prediction": rng.normal(size=len(d["targets"]))} for n, d in task.eval_data.items()}
    result = task.compute_metrics(outputs)
    for name, d in task.eval_data.items():
        expected = stats.spearmanr(outputs[name]["prediction"], d["targets"]).statistic
        assert result[f"{name}/spearman"] == pytest.approx(expected)
        assert result[f"{name}/mse"] == pytest.approx(np.mean((outputs[name]["prediction"] - d["targets"]) ** 2))
    assert task.metric == "valid/spearman" and task.metrics == ("test/spearman",) and result["num_eval"] == 6


@pytest.mark.skipif(not MELTOME.is_dir(), reason=f"{MELTOME} not found")
def test_meltome_classes_log_spearman_and_priors():
    task = ProteinTask(dataset="meltome", pretrained=None, model_config=TINY, data_dir=str(MELTOME),
                       meltome_split="clustered_task", max_train_examples=6, max_eval_examples=9, max_length=32)
    assert task.classes == 3 and len(task.edges) == 2 and task.metrics == ("test/accuracy", "test/spearman")
    d = task.eval_data["test"]
    logits = np.log(np.eye(3)[d["labels"]] * 0.9 + 0.05)
    result = task.compute_metrics({n: {"logits": np.log(np.eye(3)[e["labels"]] * 0.9 + 0.05)}
                                   for n, e in task.eval_data.items()})
    assert result["test/accuracy"] == 100.0
    expected = stats.spearmanr(np.exp(logits) @ np.arange(3), d["targets"]).statistic
    assert result["test/spearman"] == pytest.approx(expected)
    priors = [result[f"test/prior_{k}"] for k in range(3)]
    assert priors == pytest.approx(np.bincount(d["labels"], minlength=3) / 9)


# ------------------------------------------------------------------------------------------------ masks, optimizer


def test_default_masks_prune_what_smc_bench_protein_scripts_prune(esm1b, tmp_path):
    task = ProteinTask(dataset="hps", pretrained=str(esm1b), data_dir=str(write_hotprotein(tmp_path, 3, 2)))
    params = task.init_params(jax.random.key(0))
    smc = MaskRules(emb_heads=EMB_HEADS, no_pruning_emb_heads=True).masks(params, "rigl")
    names = {k for k, _ in sp.mask_items(smc)}
    per_layer = {"attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense",
                 "intermediate/dense", "output/dense"}
    assert names == {f"esm/encoder/layer/{i}/{m}/kernel" for i in range(2) for m in per_layer}
    every = {k for k, _ in sp.mask_items(MaskRules(emb_heads=EMB_HEADS).masks(params, "rigl"))}
    assert every - names == {"esm/embeddings/word_embeddings/embedding", "esm/embeddings/position_embeddings/embedding",
                             "head/dense/kernel", "head/out_proj/kernel"}


def test_faithful_head_stays_at_its_init_and_trainable_head_moves():
    """One update of the protein recipe's AdamW (decay on every parameter): the faithful head group is frozen (no
    step, no decay; gradients still reach the encoder through it), the fixed one moves."""
    task = stability()
    params = task.init_params(jax.random.key(0))
    batch = task.make_train_batch([0, 1, 2])
    grads = jax.jit(jax.grad(task.loss))(params, batch)
    for trainable in (False, True):
        optimizer = Optimizer(kind="adamw", learning_rate=1e-3, weight_decay=0.01, schedule=OneCycle(),
                              groups={"head": protein_head_group(trainable)})
        tx = optimizer.build(task.param_groups, task.steps_per_epoch, 4 * task.steps_per_epoch)
        updates, _ = jax.jit(lambda g, p, tx=tx: tx.update(g, tx.init(p), p))(grads, params)
        moved = jax.tree.map(lambda u: bool(np.any(np.asarray(u) != 0)), updates)
        assert all(jax.tree.leaves(moved["head"])) == trainable and not any(jax.tree.leaves(moved["head"])) == (
            not trainable)
        assert all(jax.tree.leaves(moved["esm"]))


# ------------------------------------------------------------------------------------------------ errors


def test_task_errors_are_one_line(tmp_path):
    def error(**kw) -> str:
        with pytest.raises(ValueError) as info:
            ProteinTask(**{"pretrained": None, "model_config": TINY, **kw})
        msg = str(info.value)
        assert "\n" not in msg
        return msg

    root = write_hotprotein(tmp_path / "hp", 3, 2)
    assert "no cross-validation folds" in error(dataset="hps", data_dir=str(root), fold=1)
    assert "select_on='valid'" in error(dataset="hps", data_dir=str(root), select_on="valid")
    assert "model_config" in error(dataset="hps", data_dir=str(root), model_config=None)
    assert "hps2c2" in error(dataset="hps3", data_dir=str(root))
    assert "regression" in error(dataset="stability", data_dir=str(TAPE), num_classes=3)
    assert "num_bins" in error(dataset="meltome", data_dir=str(MELTOME), meltome_split="clustered_task", num_classes=5)
    absolute = dict(TINY, position_embedding_type="absolute", max_position_embeddings=66)
    assert "MAX_LENGTH" in error(dataset="hps", data_dir=str(root), model_config=absolute, max_length=100)
    assert "'roberta'" in error(dataset="hps", data_dir=str(root), pretrained=str(
        fx.save(fx.torch_model("roberta", None), tmp_path / "roberta")), model_config=None)
