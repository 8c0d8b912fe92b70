"""GTS with a pretrained encoder (``PRETRAINED``): a tiny random RoBERTa saved by the real transformers classes
with a byte-level BPE tokenizer trained here on MAWPS questions, then loaded through the task and the CLI."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from smc_jax.tasks.arithmetic import data  # noqa: E402
from smc_jax.tasks.arithmetic.task import ArithmeticTask  # noqa: E402
from smc_jax.train.optim import Optimizer, StepLR  # noqa: E402
from smc_jax.train.steps import evaluator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA / "arithmetic"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"arithmetic data not found at {DATA}")


@pytest.fixture(scope="module")
def mawps_roberta(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random RoBERTa and its tokenizer (byte-level BPE, 400 tokens) in a checkpoint dir."""
    from tokenizers import ByteLevelBPETokenizer

    directory = tmp_path_factory.mktemp("mawps_roberta")
    problems = data.load_problems(data.split_path(DATA, "mawps", 0, "train"))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(p.tokens) for p in problems], vocab_size=400, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = transformers.RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                                  sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                                  pad_token="<pad>", mask_token="<mask>")
    tokenizer.save_pretrained(directory)
    config = transformers.RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=37, max_position_embeddings=160,
                                        pad_token_id=1, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    transformers.RobertaModel(config).save_pretrained(directory)
    return directory


def test_number_positions_point_at_the_numbers(mawps_roberta):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(mawps_roberta))
    problems = data.load_problems(data.split_path(DATA, "mawps", 0, "dev"))[:50]
    shifted = 0
    for problem in problems:
        ids, aligned = data.subword_encode(problem, tokenizer, "aligned")
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert len(aligned) == len(problem.num_pos)
        for position in aligned:  # the first sub-token of the word NUM
            assert tokenizer.convert_ids_to_tokens(ids[position]).lstrip("Ġ").startswith("N")
        _, original = data.subword_encode(problem, tokenizer, "original")
        assert original == problem.num_pos  # SPEC Q-A3: word indices used on the sub-token sequence
        shifted += original != aligned
    assert shifted == len(problems)  # <s> alone shifts every position by one


def test_pretrained_task_loads_the_checkpoint_and_trains(mawps_roberta):
    from smc_jax.models import from_pretrained

    task = ArithmeticTask(data_dir=str(DATA), pretrained=str(mawps_roberta), hidden=16, embedding_size=16,
                          max_train_examples=16, max_eval_examples=8, input_buckets=(96,), target_buckets=(16,))
    params = task.init_params(jax.random.key(0))
    assert "embedding" not in params and set(params) == {"roberta", "encoder", "decoder"}
    _, loaded = from_pretrained(str(mawps_roberta))
    for a, b in zip(jax.tree.leaves(params["roberta"]), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the LSTM reads the encoder's hidden size; RoBERTa trains in the embedding group at its own lr
    assert params["encoder"]["lstm_l0_fwd"]["weight_ih"].shape[0] == 32
    batch = jax.tree.map(jnp.asarray, task.epoch_batches(0, 0)[0])
    assert int(batch["input_ids"][0, 0]) == 0 and int(batch["input_ids"][0, -1]) == 1  # <s> ... <pad>
    emb_lr = 8e-6
    tx = Optimizer(kind="adam_l2", learning_rate=1e-3, weight_decay=1e-5, schedule=StepLR(20, 0.5),
                   groups={"embedding": {"learning_rate": emb_lr}}).build(task.param_groups, task.steps_per_epoch, 20)
    loss = jax.jit(task.loss)
    opt = jax.jit(lambda p, s, b: tx.update(jax.grad(task.loss)(p, b), s, p))
    state, first = tx.init(params), float(loss(params, batch))
    for i in range(20):
        updates, state = opt(params, state, batch)
        if i == 0:  # Adam's first step moves each weight by about its group's lr
            word = updates["roberta"]["embeddings"]["word_embeddings"]["embedding"]
            assert 0.5 < np.abs(np.asarray(word)).max() / emb_lr < 1.5
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    assert float(loss(params, batch)) < 0.9 * first  # (2.78 -> 2.41 when written)
    result = evaluator(task)(params)
    assert result["num_eval"] == 8 and 0.0 <= result["value_accuracy"] <= 100.0


@pytest.mark.slow  # the CLI wiring of PRETRAINED; the task test above covers loading, training and evaluation
def test_a_pretrained_run_through_the_cli(mawps_roberta, tmp_path):
    spec = importlib.util.spec_from_file_location("smc_train_cli_pretrained", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    workdir = tmp_path / "run"
    status = module.main([
        "--gin_file=gin/mawps_rigl.gin", f"--gin.DATA_DIR='{DATA}'", f"--gin.PRETRAINED='{mawps_roberta}'",
        "--gin.MAX_TRAIN_EXAMPLES=32", "--gin.MAX_EVAL_EXAMPLES=16", "--gin.NUM_EPOCHS=1", "--gin.UPDATE_FREQUENCY=4",
        "--gin.ArithmeticTask.hidden=16", "--gin.ArithmeticTask.embedding_size=16",
        "--gin.ArithmeticTask.input_buckets=(96,)", "--gin.ArithmeticTask.target_buckets=(16,)",
        "--gin.TrainConfig.progress='off'", f"--gin.WORKDIR='{workdir}'"])
    assert status == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["pretrained"] == str(mawps_roberta) and summary["algorithm"] == "rigl"
    assert abs(summary["actual_sparsity"] - 0.5) < 0.005
    # RoBERTa's matrices are prunable; its pooler stays dense for RigL (SPEC §2.3)
    leaves = summary["per_leaf_sparsity"]
    assert any(k.startswith("roberta/encoder/layer/0/attention/self/query") for k in leaves)
    assert not any("pooler" in k for k in leaves)
