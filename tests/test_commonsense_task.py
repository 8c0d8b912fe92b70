"""The commonsense task on a tiny random RoBERTa (saved by the real transformers classes, tokenizer trained here)
and the shared CommonsenseQA / WinoGrande / RACE files: batches decode to fairseq's text formats, the losses
fall, evaluation does not depend on padding or order, the fairseq learning-rate schedule."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA

pytest.importorskip("torch")
pytest.importorskip("transformers")

from smc_jax.tasks.commonsense import data as cd  # noqa: E402
from smc_jax.tasks.commonsense.task import CommonsenseTask  # noqa: E402
from smc_jax.train.optim import Optimizer  # noqa: E402
from smc_jax.train.steps import evaluator, init_state, train_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = SHARED_DATA
FOLDER = {d: SHARED / cd.FOLDERS[d] for d in cd.DATASETS}
pytestmark = pytest.mark.skipif(not all(p.is_dir() for p in FOLDER.values()),
                                reason=f"commonsense data not found under {SHARED}")


@pytest.fixture(scope="module")
def checkpoint(tiny_roberta):
    return tiny_roberta


def make(checkpoint, dataset, **kw):
    defaults = dict(pretrained=str(checkpoint), data_dir=str(FOLDER[dataset]), max_train_examples=16,
                    max_eval_examples=24, batch_size=8, max_length=128, length_buckets=(64, 128), eval_batch_size=8)
    if dataset == "winogrande":
        defaults["winogrande_size"] = "xs"
    if dataset == "race":
        defaults.update(train_split="validation", race_levels=("middle",), batch_size=4)
    return CommonsenseTask(dataset=dataset, **{**defaults, **kw})


def decode(task, ids, mask):
    return task.tokenizer.decode([int(t) for t, m in zip(ids, mask) if m])


def test_csqa_batches_decode_to_the_fairseq_format(checkpoint):
    task = make(checkpoint, "csqa", max_train_examples=None)
    rows = cd.load_split("csqa", "train", FOLDER["csqa"])
    batch = task.make_batch(task.train[:3], rows=4)
    assert batch["input_ids"].shape[:2] == (4, 5) and batch["input_ids"].shape[2] in (64, 128)
    for b in range(3):
        for c in range(5):
            text = decode(task, batch["input_ids"][b, c], batch["attention_mask"][b, c])
            assert text == f"<s>Q: {rows[b].question}</s>A: {rows[b].choices[c]}</s>"
        assert batch["labels"][b] == rows[b].label
    assert batch["weights"].tolist() == [1, 1, 1, 0] and not batch["token_type_ids"].any()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == task.pad_id).all()
    assert task.steps_per_epoch == 1218 == -(-9741 // 8)


def test_winogrande_batches_mask_the_option_and_put_the_answer_first(checkpoint):
    task = make(checkpoint, "winogrande")
    rows = cd.load_split("winogrande", "train", FOLDER["winogrande"], size="xs")
    batch = task.epoch_batches(0, 0)[0]
    order = np.random.default_rng([0, 0]).permutation(16)[:8]  # the task's shuffle of epoch 0, seed 0
    for b, i in enumerate(order):
        row = rows[i]
        answer, other = (row.option1, row.option2) if row.label == 0 else (row.option2, row.option1)
        for c, option in enumerate((answer, other)):
            span = decode(task, batch["input_ids"][b, c], batch["span"][b, c])
            assert span.strip() == option
            full = decode(task, batch["input_ids"][b, c], batch["attention_mask"][b, c])
            assert full == "<s>" + row.sentence.replace("_", option) + "</s>"


def test_race_batches_put_the_option_before_the_article_and_truncate_the_article(checkpoint):
    task = make(checkpoint, "race", max_length=64, length_buckets=(64,))
    rows = cd.load_split("race", "validation", FOLDER["race"], levels=("middle",))
    batch = task.make_batch(task.train[:1], rows=1)
    assert batch["input_ids"].shape == (1, 4, 64) and batch["attention_mask"].all()  # articles are long: cut at 64
    for c in range(4):
        text = decode(task, batch["input_ids"][0, c], batch["attention_mask"][0, c])
        head = f"<s>{cd.race_option_text(rows[0].question, rows[0].choices[c])}</s></s>"
        assert text.startswith(head) and rows[0].context.startswith(text[len(head):][:40])
    assert task.metrics == ("middle_accuracy",) and set(evaluator(task)(task.init_params(jax.random.key(0)))) == {
        "accuracy", "middle_accuracy", "num_eval"}


@pytest.mark.parametrize("dataset", ["csqa", "winogrande", "race"])
def test_the_loss_falls_over_50_steps(checkpoint, dataset):
    task = make(checkpoint, dataset, dropout=0.0, attention_dropout=0.0)
    params = task.init_params(jax.random.key(0))
    tx = Optimizer(kind="adamw", learning_rate=1e-3, b2=0.98, eps=1e-6, weight_decay=0.01).build(
        task.param_groups, task.steps_per_epoch, 50)
    step = train_step(task, tx, accum_steps=2 if dataset == "race" else 1)
    state, losses = init_state(params, tx, 0), []
    batches = task.epoch_batches(0, 0)
    for i in range(50):
        state, loss = step(state, batches[i % len(batches)])
        losses.append(float(loss))
    first, last = losses[0], float(np.mean(losses[-5:]))
    assert np.isfinite(losses).all() and last < first - 0.15 * abs(first), (first, last)


@pytest.mark.parametrize("dataset", ["csqa", "winogrande"])
def test_evaluation_is_independent_of_padding_and_order(checkpoint, dataset):
    task = make(checkpoint, dataset)
    params = task.init_params(jax.random.key(1))
    rows = task.eval_rows["accuracy"]
    hits = 0
    for row in rows:  # one unpadded example at a time
        scores = task._scores(params, jax.tree.map(jnp.asarray, task.make_batch([row], 1)), None)[0]
        hits += bool(scores[0] >= scores[1]) if dataset == "winogrande" else int(jnp.argmax(scores)) == row["label"]
    result = evaluator(task)(params)
    assert result["accuracy"] == pytest.approx(100.0 * hits / len(rows)) and result["num_eval"] == 24


def test_bad_settings_are_one_line_errors(checkpoint):
    with pytest.raises(ValueError, match="no cross-validation folds"):
        make(checkpoint, "csqa", fold=0)
    with pytest.raises(ValueError, match="dataset 'cqa' unknown"):
        CommonsenseTask(dataset="cqa", pretrained=str(checkpoint))
    with pytest.raises(ValueError, match="MAX_LENGTH=1024 exceeds"):
        make(checkpoint, "csqa", max_length=1024)
    with pytest.raises(ValueError, match="race train split not found"):
        make(checkpoint, "race", train_split="train")
    with pytest.raises(ValueError, match="size 'xl' not found"):
        make(checkpoint, "winogrande", winogrande_size="xl")
