"""ArithmeticTask: padded batches, UNK candidates, the optimizer of SPEC §1.2, evaluation plumbing."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA

from smc_jax.tasks.arithmetic import data
from smc_jax.tasks.arithmetic.batches import make_batch, unk_candidates
from smc_jax.tasks.arithmetic.task import ArithmeticTask
from smc_jax.tasks.batching import bucket_length
from smc_jax.train.optim import Optimizer, StepLR
from smc_jax.train.steps import evaluator

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA / "arithmetic"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"arithmetic data not found at {DATA}")


def vocab():
    # ops + - ; generate number 1.0 ; N0 N1 N2 ; UNK
    return data.Vocab(("PAD", "NUM", "UNK", "a"), ("+", "-", "1.0", "N0", "N1", "N2", "UNK"), 2, ("1.0",), 3)


def test_bucket_lengths():
    assert [bucket_length(n, (8, 16)) for n in (1, 8, 9, 16, 17, 33)] == [8, 8, 16, 16, 32, 48]
    assert [bucket_length(n, (8, 16, 32), cap=20) for n in (1, 9, 17, 40)] == [8, 16, 20, 20]


def test_unk_candidates_follow_num_stack_in_target_order():
    # target "+ UNK - UNK N0": first UNK may be N1 or N2, second is N0 (num_stack is stored reversed)
    example = data.Encoded((3, 1), (1,), (0, 6, 1, 6, 3), ((0,), (1, 2)), ("5", "7", "7"))
    out = unk_candidates(example, unk_id=6, num_generate=1, length=6, slots=4)
    assert out[1].tolist() == [False, False, True, True]  # slots G+1, G+2
    assert out[3].tolist() == [False, True, False, False]  # slot G+0
    assert not out[[0, 2, 4, 5]].any()


def test_make_batch_pads_rows_and_lengths():
    v = vocab()
    examples = [data.Encoded((3, 1, 3), (1,), (0, 3, 2), (), ("5",)),
                data.Encoded((1, 3), (0,), (3,), (), ("2",))]
    batch = make_batch(examples, v, batch_size=4, input_length=8, target_length=4, merge_depth=3)
    assert batch["input_ids"].shape == (4, 8) and batch["targets"].shape == (4, 4)
    assert batch["merge_op"].shape == (4, 4, 3) and batch["unk_candidates"].shape == (4, 4, 4)
    assert batch["target_lengths"].tolist() == [3, 1, 0, 0]  # padded rows weigh nothing
    assert batch["lengths"].tolist() == [3, 2, 3, 3] and batch["num_count"].tolist() == [1, 1, 1, 1]
    assert batch["input_ids"][0].tolist() == [3, 1, 3, 0, 0, 0, 0, 0]
    assert batch["node_slot"][0].tolist() == [0, 1, 2, -1] and batch["node_slot"][1].tolist() == [0, -1, -1, -1]
    with pytest.raises(ValueError, match="merge depth"):
        make_batch([data.Encoded((3,), (0,), (0, 3, 0, 3, 3), (), ("1",))], v, 1, 4, 5, merge_depth=1)


@needs_data
def test_task_on_real_mawps_fold():
    task = ArithmeticTask(data_dir=str(DATA), max_train_examples=10, max_eval_examples=6, hidden=16,
                          embedding_size=8, batch_size=4, input_buckets=(96,), target_buckets=(16,))
    assert task.steps_per_epoch == 3 and task.num_eval == 6 and task.name == "mawps" and task.fold == 0
    assert len(task.vocab.input_words) == 2260  # vocabulary of the whole fold, whatever the subset
    batches = task.epoch_batches(seed=1, epoch=0)
    assert [int(b["target_lengths"].astype(bool).sum()) for b in batches] == [4, 4, 2]
    assert all(b["input_ids"].shape == (4, 96) for b in batches)
    order = [b["lengths"][: int(b["target_lengths"].astype(bool).sum())] for b in batches]
    assert all(list(o) == sorted(o, reverse=True) for o in order)  # longest first within a batch
    again = task.epoch_batches(seed=1, epoch=0)
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    params = task.init_params(jax.random.key(0))
    loss = task.loss(params, jax.tree.map(jnp.asarray, batches[0]))
    assert np.isfinite(float(loss)) and float(loss) > 0
    result = evaluator(task)(params)
    assert result["num_eval"] == 6 and 0 <= result["value_accuracy"] <= 100
    assert set(task.eval_sets()) == {"dev"} and sum(c.count for c in task.eval_sets()["dev"]) == 6
    assert "train_value_accuracy" not in result  # the training set is decoded only when asked
    shown_task = dataclasses.replace(task, show_train_accuracy=True)
    shown = evaluator(shown_task)(params)
    assert 0 <= shown["train_value_accuracy"] <= 100 and shown["value_accuracy"] == result["value_accuracy"]
    # a batch's merge-cascade width is bounded by its target bucket: (T - 1) // 2, at least 1
    short = dataclasses.replace(task, target_buckets=(5, 16))
    widths = {b["targets"].shape[1]: b["merge_op"].shape[2] for b in short.epoch_batches(seed=1, epoch=0)}
    assert all(w == max(1, min(short.merge_depth, (t - 1) // 2)) for t, w in widths.items())


@needs_data
def test_optimizer_groups_l2_and_step_lr():
    task = ArithmeticTask(data_dir=str(DATA), max_train_examples=4, max_eval_examples=2, hidden=4, embedding_size=4)
    optimizer = Optimizer(kind="adam_l2", learning_rate=1e-3, weight_decay=0.1, schedule=StepLR(2, 0.5),
                          groups={"embedding": {"learning_rate": 1e-5}})
    params = {"embedding": {"embedding": jnp.ones((2, 2))}, "encoder": {"w": jnp.ones((2, 2))}}
    tx = optimizer.build(task.param_groups, steps_per_epoch=3, total_steps=9)
    state = tx.init(params)
    grads = jax.tree.map(jnp.zeros_like, params)  # only the L2 term drives the update
    sizes = []
    for _ in range(7):
        updates, state = tx.update(grads, state, params)
        sizes.append({k: float(jnp.abs(v[next(iter(v))][0, 0])) for k, v in updates.items()})
    # Adam's first step is lr * sign(g): the L2 gradient 0.1 * w is what it sees.
    assert sizes[0]["embedding"] == pytest.approx(1e-5, rel=1e-3)
    assert sizes[0]["encoder"] == pytest.approx(1e-3, rel=1e-3)
    # epochs 0-1 (steps 0-5) at lr, epoch 2 (step 6) at lr * 0.5
    assert sizes[5]["encoder"] == pytest.approx(1e-3, rel=1e-3) and sizes[6]["encoder"] == pytest.approx(5e-4, rel=1e-3)


@needs_data
@pytest.mark.parametrize("field, value, message", [
    ("number_positions", "shifted", "number_positions must be one of"), ("batch_size", 0, "batch_size must be >= 1"),
    ("max_train_examples", 0, "MAX_TRAIN_EXAMPLES"), ("fold", 9, "FOLD must be 0..4"),
    ("dataset", "gsm8k", "unknown arithmetic dataset"), ("dropout", 1.0, "dropout"),
    ("model", "g2t", r"model \(MODEL\) must be one of"), ("gcn_dropout", 1.0, "gcn_dropout"),
])
def test_bad_settings_name_the_problem(field, value, message):
    with pytest.raises(ValueError, match=message):
        ArithmeticTask(data_dir=str(DATA), **{field: value})
