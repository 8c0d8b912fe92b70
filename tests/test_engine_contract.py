"""The engine's contract with a task: unbounded streams resume exactly, metric_mode and selection decide
`reported`, a non-finite loss stops the run with a diverged summary and strict-JSON metrics."""

import json

import jax
import numpy as np
import pytest
from fake_tasks import ADAM, FakeTask, SampledFakeTask

from smc_jax import sparsity as sp
from smc_jax.train.checkpoints import RunCheckpoints
from smc_jax.train.trainer import Diverged, MaskRules, TrainConfig, fit


def train(workdir, task, algorithm=sp.Dense(), train_steps=None, epochs=4, optimizer=ADAM, **config):
    params = task.init_params(jax.random.key(0))
    masks = algorithm.init_masks(params, MaskRules().masks(params, algorithm.name), key=jax.random.key(1))
    return fit(task, algorithm, workdir, seed=3, num_epochs=epochs, train_steps=train_steps, optimizer=optimizer,
               params=sp.apply_masks(params, masks), masks=masks,
               config=TrainConfig(progress="off", **{"log_every": 1, **config}))


def selected_checkpoint(workdir):
    """``(tree, meta)`` of a fake-task run's selected (``best/``) checkpoint: params and masks."""
    params = FakeTask().init_params(jax.random.key(0))
    with RunCheckpoints(workdir / "checkpoints") as checkpoints:
        return checkpoints.restore_best({"params": params, "masks": MaskRules().masks(params, "rigl")})


def events(workdir, kind):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == kind]


class Interrupting(SampledFakeTask):
    """Its stream raises KeyboardInterrupt (Ctrl-C) when asked for batch ``stop_at``."""

    stop_at = 10**9

    def train_stream(self, seed):
        stream, stop_at = super().train_stream(seed), self.stop_at

        class Stream:
            def __next__(self):
                if stream.index == stop_at:
                    raise KeyboardInterrupt
                return next(stream)

            state, restore = stream.state, stream.restore

        return Stream()


def test_an_unbounded_sampled_stream_resumes_at_exactly_the_next_batch(tmp_path):
    algorithm = sp.RigL(sparsity=0.5, update_frequency=3)
    scores = tuple(float(i) for i in range(10))
    whole = train(tmp_path / "whole", SampledFakeTask(scores=scores, selection="last"), algorithm, train_steps=17,
                  eval_every=5)
    assert whole["epochs"] is None and whole["steps"] == 17
    cut = Interrupting(scores=scores, selection="last")
    cut.stop_at = 12  # after 12 updates; the last checkpoint is at step 10
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "cut", cut, algorithm, train_steps=17, eval_every=5)
    assert RunCheckpoints(tmp_path / "cut" / "checkpoints").latest_step() == 10
    resumed = train(tmp_path / "cut", SampledFakeTask(scores=scores[2:], selection="last"), algorithm,
                    train_steps=17, eval_every=5)
    losses = [[e["loss"] for e in events(tmp_path / run, "train")] for run in ("whole", "cut")]
    assert len(losses[0]) == 17 and losses[0] == losses[1]
    for key in ("per_leaf_sparsity", "steps", "selected_step", "final", "actual_sparsity"):
        assert resumed[key] == whole[key]
    final = [selected_checkpoint(tmp_path / run) for run in ("whole", "cut")]  # 'last': the final params and masks
    assert final[0][1]["step"] == final[1][1]["step"] == 17
    for a, b in zip(jax.tree.leaves(final[0][0]), jax.tree.leaves(final[1][0])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_metric_mode_min_selects_the_lowest_evaluation(tmp_path):
    summary = train(tmp_path, FakeTask(scores=(3.0, 1.0, 2.0, 5.0), metric_mode="min"))
    assert summary["selection"] == "best" and summary["reported"] == 1.0 and summary["selected_step"] == 10
    assert summary["best"]["acc"] == 1.0 and summary["metric_mode"] == "min"


def test_last_selection_reports_the_final_evaluation(tmp_path):
    summary = train(tmp_path, FakeTask(scores=(3.0, 9.0, 2.0, 5.0), selection="last"))
    assert summary["selection"] == "last" and summary["reported"] == 5.0 and summary["selected_step"] == 20
    assert summary["best"]["acc"] == 9.0 and summary["best_step"] == 10  # best stays the best by metric_mode
    assert selected_checkpoint(tmp_path)[1]["step"] == 20  # After/LTH pipelines continue from the selected one


def test_a_non_finite_loss_stops_the_run_with_a_diverged_summary(tmp_path):
    task = FakeTask(scores=(1.0, 2.0, 3.0, 4.0), poison_epoch=1)  # step 8 (epoch 1, batch 2) sees a NaN
    expected = r"non-finite loss at step 8 in .*; the last checkpoint is .*latest/5 \(step 5\)"
    with pytest.raises(Diverged, match=expected):
        train(tmp_path, task, log_every=3)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["diverged"] is True and summary["diverged_step"] == 8 and summary["reported"] == 1.0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    for line in lines:  # strict JSON: no NaN / Infinity tokens
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c} in {line}"))
    assert json.loads(lines[-1]) == {"event": "diverged", "step": summary["diverged_step"], "loss": None}
    assert task.calls == 1  # no evaluation of the diverged weights
