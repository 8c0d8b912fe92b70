"""The engine on a tiny fake task: selection rules, summaries, CV averaging, names of workdirs."""

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest
from fake_tasks import ADAM, FakeTask

from smc_jax import sparsity as sp
from smc_jax.train import pipelines
from smc_jax.train.steps import init_state, train_step
from smc_jax.train.trainer import MaskRules, TrainConfig, fit


def run(tmp_path, algorithm, task=None, epochs=4, train_steps=None, **config):
    task = task or FakeTask()
    params = task.init_params(jax.random.key(0))
    masks = algorithm.init_masks(params, MaskRules().masks(params, algorithm.name), key=jax.random.key(1))
    return fit(task, algorithm, tmp_path, seed=0, num_epochs=epochs, params=sp.apply_masks(params, masks),
               masks=masks, optimizer=ADAM, config=TrainConfig(progress="off", log_every=3, **config),
               train_steps=train_steps)


def eval_steps(workdir):
    events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [e["step"] for e in events if e["event"] == "eval"]


def test_best_epoch_is_reported(tmp_path):
    summary = run(tmp_path, sp.OMPBefore(sparsity=0.5))
    assert summary["reported"] == 90.0 and summary["best_step"] == 5 and summary["final"]["acc"] == 55.0
    assert summary["selection"] == "best" and summary["selected_step"] == 5 and summary["selected"] == summary["best"]
    assert summary["diverged"] is False
    assert summary["best"] == {"acc": 90.0, "other": -90.0, "num_eval": 10}
    assert summary["actual_sparsity"] == 0.5 and summary["num_prunable"] == 32 and summary["num_params"] == 36
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "eval"] == [5, 10, 15, 20]
    assert [e["step"] for e in events if e["event"] == "train"] == [3, 6, 9, 12, 15, 18, 20]


def test_gmp_reports_only_from_the_window_end(tmp_path):
    # T = 20 steps, window [2, 16): epochs end at 5, 10, 15, 20 -> only the last is eligible
    summary = run(tmp_path, sp.GMP(sparsity=0.5, update_frequency=2))
    assert summary["selection"] == "best_after_window" and summary["selected_step"] == 20
    assert summary["reported"] == 55.0 == summary["selected"]["acc"]
    assert summary["best_step"] == 5 and summary["best"]["acc"] == 90.0  # the best of all, whatever the selection
    assert summary["scheduled_sparsity"] == 0.5 and summary["actual_sparsity"] == 0.5


def test_a_finished_run_resumes_to_the_same_summary(tmp_path):
    first = run(tmp_path, sp.RigL(sparsity=0.5, update_frequency=3))
    again = run(tmp_path, sp.RigL(sparsity=0.5, update_frequency=3), task=FakeTask(scores=()))  # no evaluation
    for key in ("best", "final", "best_step", "selected", "selected_step", "per_leaf_sparsity", "steps"):
        assert again[key] == first[key]


def test_cv_summary_micro_averages_by_num_eval():
    folds = [{"reported": 80.0, "num_eval": 100, "best": {"acc": 80.0}, "final": {"acc": 70.0}, "actual_sparsity": 0.5,
              "wall_time_s": 1.0, "per_leaf_sparsity": {"a": 0.5}, "fold": k, "metric": "acc"} for k in range(2)]
    folds[1].update(reported=50.0, num_eval=50, best={"acc": 50.0}, final={"acc": 40.0})
    cv = pipelines.cv_summary(folds)
    assert cv["fold"] == "all" and cv["num_eval"] == 150
    assert cv["reported"] == pytest.approx((80 * 100 + 50 * 50) / 150)
    assert cv["best"]["acc"] == pytest.approx(70.0) and cv["final"]["acc"] == pytest.approx(60.0)
    assert cv["folds"] == folds and cv["wall_time_s"] == 2.0


def test_cv_summary_sums_counts_and_pools_the_training_rate():
    folds = [{"reported": 80.0, "num_eval": 100, "best": {"acc": 80.0, "correct": 80},
              "final": {"acc": 70.0, "correct": 70}, "actual_sparsity": 0.0, "wall_time_s": 1.0,
              "per_leaf_sparsity": {}, "fold": k, "metric": "acc", "steps": 100, "train_steps_per_s": 1.0}
             for k in range(2)]
    folds[1].update(reported=50.0, num_eval=50, best={"acc": 50.0, "correct": 25},
                    final={"acc": 40.0, "correct": 20}, train_steps_per_s=4.0)
    cv = pipelines.cv_summary(folds)
    assert cv["best"]["correct"] == 105 and cv["final"]["correct"] == 90
    assert cv["train_steps_per_s"] == pytest.approx(200 / (100 + 25))  # not fold 0's 1.0


@pytest.mark.parametrize("value, label", [(0.7902848, 0.791), (0.83222784, 0.8325), (0.5904, 0.59), (0.2, 0.2),
                                          (0.5, 0.5), (0.67232, 0.672), (0.12345678, 0.1235)])
def test_sparsity_labels_follow_the_paper_grid(value, label):
    assert pipelines.sparsity_label(value) == label


def test_dense_workdir_names_the_dense_settings_only(tmp_path):
    task = FakeTask()
    a = pipelines.default_dense_workdir(task, tmp_path / "rigl_run", seed=1, num_epochs=50)
    b = pipelines.default_dense_workdir(task, tmp_path / "gmp_run", seed=1, num_epochs=50)
    assert a == b and a.parent == tmp_path and a.name.startswith("dense_fake_linear_learned_seed1_fold0_")
    assert pipelines.default_dense_workdir(task, tmp_path / "x", seed=1, num_epochs=40) != a
    assert pipelines.default_dense_workdir(FakeTask(scores=(1.0,)), tmp_path / "x", seed=1, num_epochs=50) != a


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(capsys):
    from smc_jax.train.records import Progress

    bar = Progress("bar", total=10, title="[t]")
    bar.update(5, {"loss": "0.5"})
    bar.message("eval 1")
    bar.close()
    err = capsys.readouterr().err
    assert err.startswith("\r[t] [###############...............] 5/10 loss 0.5") and "\n[t] eval 1\n" in err
    lines = Progress("lines", total=10, title="[t]")
    lines.update(5, {"loss": "0.5"})
    assert capsys.readouterr().err == "[t] step 5/10 loss 0.5\n"
    Progress("off", total=10, title="[t]").update(5, {"loss": "0.5"})
    assert capsys.readouterr().err == ""


def test_default_workdirs_name_the_coordinates():
    task = FakeTask()
    assert str(pipelines.default_workdir(task, sp.RigL(sparsity=0.738), 3)) == "runs/fake_rigl_s0.738_seed3_fold0"
    assert str(pipelines.default_workdir(task, sp.Dense(), 3, fold="all")) == "runs/fake_dense_seed3_foldall"


@pytest.mark.parametrize("algorithm", [sp.Dense(), sp.RigL(sparsity=0.5, update_frequency=3)])
def test_split_and_fused_steps_train_alike(algorithm):
    """The gradient-then-update pair (CPU default) and the single program give the same states and losses."""
    task = FakeTask()
    params = task.init_params(jax.random.key(0))
    masks = algorithm.init_masks(params, MaskRules().masks(params, algorithm.name), key=jax.random.key(1))
    tx = sp.sparse_optimizer(ADAM.build({}, 5, 10), algorithm, masks, 10)
    results = []
    for split in (True, False):
        state, run_step, losses = init_state(sp.apply_masks(params, masks), tx, 0), train_step(task, tx, split), []
        for step, batch in enumerate(task.epoch_batches(0, 0) + task.epoch_batches(0, 1)):
            state, loss = run_step(state, batch, (step + 1) in set(algorithm.update_steps(10)))
            losses.append(float(loss))
        results.append((state, losses))
    (split_state, split_losses), (fused_state, fused_losses) = results
    np.testing.assert_allclose(split_losses, fused_losses, rtol=1e-6)
    assert int(split_state["step"]) == int(fused_state["step"]) == 10
    for a, b in zip(jax.tree.leaves(split_state), jax.tree.leaves(fused_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    if algorithm.dynamic:  # the updates ran and moved the masks
        assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(masks),
                                                               jax.tree.leaves(sp.get_masks(split_state["opt_state"]))))


def test_train_steps_cut_the_last_epoch_and_evaluate_at_the_end(tmp_path):
    summary = run(tmp_path, sp.Dense(), task=FakeTask(scores=(1.0, 2.0, 3.0)), train_steps=12)
    assert summary["steps"] == 12 and summary["epochs"] == 2.4 and eval_steps(tmp_path) == [5, 10, 12]
    assert summary["reported"] == 3.0 and summary["best_step"] == 12


def test_eval_every_adds_evaluations_and_a_run_resumes_mid_epoch(tmp_path):
    scores = tuple(float(x) for x in range(20))
    whole = run(tmp_path / "whole", sp.RigL(sparsity=0.5, update_frequency=4), task=FakeTask(scores=scores),
                train_steps=13, eval_every=3)
    assert eval_steps(tmp_path / "whole") == [3, 5, 6, 9, 10, 12, 13]
    # the 4th evaluation (step 9) fails; the run resumes from its last finished checkpoint (5 or 6)
    cut = FakeTask(scores=scores[:3] + (None,))
    with pytest.raises(TypeError):
        run(tmp_path / "cut", sp.RigL(sparsity=0.5, update_frequency=4), task=cut, train_steps=13, eval_every=3)
    resumed = run(tmp_path / "cut", sp.RigL(sparsity=0.5, update_frequency=4),
                  task=FakeTask(scores=scores[3:]), train_steps=13, eval_every=3)
    assert eval_steps(tmp_path / "cut") == [3, 5, 6, 9, 10, 12, 13]
    for key in ("per_leaf_sparsity", "steps", "actual_sparsity"):
        assert resumed[key] == whole[key]


def test_gradient_accumulation_averages_micro_batch_gradients():
    """Two micro-batches of 2 rows give the gradient of the 4-row batch (a mean loss)."""
    task = FakeTask()
    params = task.init_params(jax.random.key(0))
    batch = task.epoch_batches(0, 0)[0]
    tx = optax.sgd(0.1)
    stepped = []
    for accum in (1, 2, 4):
        state, _ = train_step(task, tx, accum_steps=accum)(init_state(params, tx, 0), batch)
        stepped.append(state["params"])
    for other in stepped[1:]:
        for a, b in zip(jax.tree.leaves(stepped[0]), jax.tree.leaves(other)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of TrainConfig.grad_accum_steps"):
        train_step(task, tx, accum_steps=3)(init_state(params, tx, 0), batch)


@dataclasses.dataclass
class ThreeFoldTask(FakeTask):
    """A cross-validated fake dataset: fold k evaluates ``num_eval = 10 + k`` examples at score 10·(k + 1)."""

    @classmethod
    def folds(cls, dataset):
        return 3

    def __post_init__(self):
        super().__post_init__()
        self.num_eval = 10 + self.fold
        self.scores = (10.0 * (self.fold + 1),) * 4


def test_fold_all_runs_every_fold_and_micro_averages(tmp_path):
    exp = pipelines.Experiment(task=ThreeFoldTask, algorithm=sp.Dense(), optimizer=ADAM, num_epochs=1, fold="all",
                               workdir=str(tmp_path / "cv"), train=TrainConfig(progress="off"))
    cv = pipelines.run_experiment(exp, config_text="# config")
    folds = [json.loads((tmp_path / "cv" / f"fold_{k}" / "summary.json").read_text()) for k in range(3)]
    assert [f["fold"] for f in folds] == [0, 1, 2] and cv["folds"] == folds and cv["fold"] == "all"
    assert cv["num_eval"] == 33 and cv["reported"] == pytest.approx((10 * 10 + 20 * 11 + 30 * 12) / 33)
    assert cv["selected"]["acc"] == pytest.approx(cv["reported"]) and cv["selected_step"] is None
    assert json.loads((tmp_path / "cv" / "cv_summary.json").read_text()) == cv
    assert (tmp_path / "cv" / "config.gin").read_text() == "# config"
