"""The main job end to end: the train command (smc_jax.cli.train) on every gin/mawps_*.gin (1 epoch, 64
problems), the After and LTH pipelines, resume after SIGKILL (through scripts/train.py), the CLI's one-line
errors and exit statuses, and every top-level gin file building its experiment.

Runs share a small model (hidden 32) and one persistent compilation cache so the suite stays short; the
real-size smoke run of the README is marked ``slow``.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ALGORITHMS, SHARED_DATA, SUMMARY_KEYS

import gin
from smc_jax import sparsity as sp
from smc_jax.cli import gin_cli
from smc_jax.cli import train as train_cli
from smc_jax.cli.gin_cli import GIN_DIR
from smc_jax.cli.gin_errors import top_level_files
from smc_jax.train import config

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA / "arithmetic"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"arithmetic data not found at {DATA}")


def small(*extra: str) -> list[str]:
    """Bindings of a short run: 64 train / 32 dev problems, 1 epoch, a 32-wide GTS, one padded shape."""
    return [f"--gin.DATA_DIR='{DATA}'", "--gin.MAX_TRAIN_EXAMPLES=64", "--gin.MAX_EVAL_EXAMPLES=32",
            "--gin.NUM_EPOCHS=1", "--gin.UPDATE_FREQUENCY=8", "--gin.ArithmeticTask.hidden=32",
            "--gin.ArithmeticTask.embedding_size=32", "--gin.ArithmeticTask.input_buckets=(96,)",
            "--gin.ArithmeticTask.target_buckets=(16,)", "--gin.TrainConfig.progress='off'", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# the default suite runs one file per pipeline kind (before, during, after, LTH); the rest of the matrix is slow
DEFAULT = ("snip", "rigl", "omp_after", "lth")


@pytest.mark.parametrize("algorithm", [pytest.param(a, marks=() if a in DEFAULT else pytest.mark.slow)
                                       for a in ALGORITHMS])
def test_every_mawps_gin_file_trains_one_epoch(train_main, runs, algorithm, capsys):
    sparsity = 0.36 if algorithm == "lth" else 0.5
    workdir = runs / algorithm
    status = train_main([f"--gin_file=gin/mawps_{algorithm}.gin", *small(
        f"--gin.WORKDIR='{workdir}'", f"--gin.DENSE_WORKDIR='{runs / 'dense'}'", f"--gin.SPARSITY={sparsity}")])
    assert status == 0, capsys.readouterr().err
    summary = read(workdir / "summary.json")
    assert SUMMARY_KEYS <= set(summary)
    assert summary["algorithm"] == algorithm and summary["label"] == sp.ALGORITHMS[algorithm].label
    assert summary["task"] == "mawps" and summary["model"] == "gts" and summary["fold"] == 0
    assert summary["reported"] == summary["selected"]["value_accuracy"]
    assert summary["num_eval"] == 32 and summary["steps"] == 16 and summary["epochs"] == 1
    assert 0.0 <= summary["reported"] <= 100.0
    assert (workdir / "config.gin").read_text().count("ArithmeticTask") > 0
    run_dir = workdir / "round_2" if algorithm == "lth" else workdir  # LTH: one run per round
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][-1] == "eval"
    if algorithm == "dense":
        assert summary["actual_sparsity"] == 0.0 and summary["target_sparsity"] == 0.0
        return
    tolerance = 0.005 if algorithm in ("random_before", "random_after", "rigl") else 1e-4  # Bernoulli init
    assert abs(summary["actual_sparsity"] - sparsity) < tolerance, summary["actual_sparsity"]
    leaves = summary["per_leaf_sparsity"]
    merge = [k for k in leaves if "/merge/" in k]
    if algorithm in ("snip", "gmp", "rigl", "snip_rigl", "omp_rigl"):
        assert merge == []  # SPEC §2.3: merge stays dense for these
    else:
        assert merge
    assert "decoder/predict/embedding_weight" not in leaves  # the 3-D constant embedding stays dense
    if algorithm == "lth":
        rounds = [read(workdir / f"round_{k}" / "summary.json") for k in (1, 2)]
        assert [r["target_sparsity"] for r in rounds] == pytest.approx([0.2, 0.36])
        assert [r["actual_sparsity"] for r in rounds] == pytest.approx([0.2, 0.36], abs=1e-4)
        assert summary == rounds[-1]
        assert not (workdir / "round_3").exists()
    if algorithm in ("omp_after", "random_after", "lth"):  # the dense run: trained by the first, reused after
        out = capsys.readouterr().out
        assert "reusing the dense run" in out or "training the dense run first" in out


def test_after_reuses_the_dense_run_without_retraining(train_main, runs, capsys):
    dense = runs / "dense"
    if not (dense / "summary.json").exists():
        pytest.skip("needs the dense run of test_every_mawps_gin_file_trains_one_epoch")
    before = {p: p.stat().st_mtime_ns for p in dense.rglob("*") if p.is_file()}
    workdir = runs / "omp_after_again"
    assert train_main(["--gin_file=gin/mawps_omp_after.gin", *small(
        f"--gin.WORKDIR='{workdir}'", f"--gin.DENSE_WORKDIR='{dense}'", "--gin.SPARSITY=0.7")]) == 0
    assert {p: p.stat().st_mtime_ns for p in dense.rglob("*") if p.is_file()} == before
    assert "reusing the dense run" in capsys.readouterr().out
    assert abs(read(workdir / "summary.json")["actual_sparsity"] - 0.7) < 1e-4


def test_lth_rewinds_each_round_to_the_initial_weights(train_main, runs, monkeypatch, capsys):
    from smc_jax.train import pipelines

    seen = []
    real_fit = pipelines.fit

    def recording_fit(task, algorithm, workdir, **kwargs):
        seen.append((task, Path(workdir).name, kwargs["params"], kwargs["masks"]))
        return real_fit(task, algorithm, workdir, **kwargs)

    monkeypatch.setattr(pipelines, "fit", recording_fit)
    workdir = runs / "lth_rewind"
    assert train_main(["--gin_file=gin/mawps_lth.gin", *small(
        f"--gin.WORKDIR='{workdir}'", f"--gin.DENSE_WORKDIR='{runs / 'dense_lth'}'", "--gin.SPARSITY=0.36")]) == 0
    assert [name for _, name, _, _ in seen] == ["dense_lth", "round_1", "round_2"]
    task, _, initial, _ = seen[0]
    for _, _, params, masks in seen[1:]:
        expected = sp.apply_masks(initial, masks)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # round 2's masks are a subset of round 1's (survivors pruned further)
    for m1, m2 in zip(jax.tree.leaves(seen[1][3]), jax.tree.leaves(seen[2][3])):
        assert not np.any(np.asarray(m2) & ~np.asarray(m1))


@pytest.mark.parametrize("argv, message", [
    (["--gin_file=gin/mawps_rigl.gin", "--gin.FOLDS=1"], "unknown macro FOLDS"),
    (["--gin_file=gin/svamp_rigl.gin", "--gin.FOLD=0"], "unknown macro FOLD"),
    (["--gin_file=gin/mawps_nope.gin"], "mawps_nope.gin"),
    (["--gin_file=gin/mawps_rigl.gin", "--gin.RigL.sparsty=0.5"], "sparsty"),
    (["--gin_file=gin/mawps_rigl.gin", "--gin.SPARSITY=1.5"], "sparsity must be in [0.0, 1.0)"),
    (["--gin_file=gin/mawps_rigl.gin", "--gin.FOLD=7", "--gin.DATA_DIR='" + str(DATA) + "'"], "FOLD must be 0..4"),
    (["--gin_file=gin/mawps_rigl.gin", "--gin.DATA_DIR='/nonexistent'"], "/nonexistent"),
    (["--gin_file=gin/mawps_rigl.gin", "--gin.RigL.init='magic'"], "unknown RigL init 'magic'"),
    (["--gin_file=gin/mawps_rigl.gin", "--bogus"], "unknown argument '--bogus'"),
    ([], "--gin_file"),
])
def test_bad_input_is_one_line_and_exit_2(train_main, argv, message, capsys):
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_a_diverged_run_exits_non_zero_with_one_line_and_reports_as_diverged(train_main, tmp_path, capsys):
    from smc_jax.cli import report

    workdir = tmp_path / "runs" / "diverged"
    argv = ["--gin_file=gin/mawps_rigl.gin", *small(f"--gin.WORKDIR='{workdir}'", "--gin.Optimizer.learning_rate=1e30")]
    assert train_main(argv) == train_cli.DIVERGED != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: training diverged: non-finite loss at step "), err
    summary = read(workdir / "summary.json")
    assert summary["diverged"] is True and err.split("at step ")[1].startswith(f"{summary['diverged_step']} ")
    for line in (workdir / "metrics.jsonl").read_text().splitlines():  # strict JSON: no NaN / Infinity
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}: {line}"))
    assert train_main(argv) == train_cli.DIVERGED  # a rerun says so again instead of calling it complete
    capsys.readouterr()
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    assert f"diverged at step {summary['diverged_step']}" in capsys.readouterr().err
    assert "diverged" in (tmp_path / "report" / "report.md").read_text()
    rows = (tmp_path / "report" / "runs.csv").read_text().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    assert row[header.index("diverged")] in ("True", "true", "1")


def test_jax_distributed_is_initialized_once_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(train_cli, "_distributed_done", False)
    monkeypatch.setenv("SLURM_NTASKS", "2")  # a multi-host environment
    train_cli.initialize_distributed({})
    train_cli.initialize_distributed({})  # the next run of a sweep in the same process
    assert calls == [((), {})]


def test_sigkill_then_resume_finishes_with_the_same_masks(tmp_path, train_main):
    """A run killed after its first epoch's checkpoint resumes and ends exactly like an uninterrupted one."""
    env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    args = ["--gin_file=gin/mawps_rigl.gin", *small("--gin.NUM_EPOCHS=3", "--gin.UPDATE_FREQUENCY=6",
                                                    "--gin.TrainConfig.log_every=4")]

    def command(workdir):
        return [sys.executable, str(REPO / "scripts" / "train.py"), *args, f"--gin.WORKDIR='{workdir}'"]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        latest = killed / "checkpoints" / "latest"
        if latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir()):  # epoch 1 committed
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    resumed = subprocess.run(command(killed), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step" in resumed.stderr
    straight = tmp_path / "straight"
    assert train_main(args + [f"--gin.WORKDIR='{straight}'"]) == 0
    a, b = read(killed / "summary.json"), read(straight / "summary.json")
    assert a["per_leaf_sparsity"] == b["per_leaf_sparsity"] and a["best"] == b["best"] and a["final"] == b["final"]
    events = [list(map(json.loads, (d / "metrics.jsonl").read_text().splitlines())) for d in (killed, straight)]
    losses = [[e["loss"] for e in run if e["event"] == "train"] for run in events]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert a["best_step"] == b["best_step"] and a["steps"] == b["steps"] == 48


SHORTCUTS = top_level_files(GIN_DIR)  # the thin top-level files (base.gin is included, so not one of them)
TASK_NAMES = [name[:-4] for name in top_level_files(GIN_DIR / "tasks", GIN_DIR)]  # datasets, not family files
ARITHMETIC = ("mawps", "asdiv", "svamp")
PROTEIN = ("hps", "hps2c2", "meltome", "meltome_regression", "stability")


def _includes(name: str) -> list[str]:
    return re.findall(r"^include '([^']+)'", (GIN_DIR / name).read_text(), re.MULTILINE)


def test_every_top_level_gin_file_builds_its_experiment():
    built = set()
    for name in SHORTCUTS:
        config.register()
        gin_cli.parse_config([f"gin/{name}"], [], search_paths=[GIN_DIR])
        experiment = config.experiment()
        bindings = gin_cli.configurable_bindings(experiment.task)
        dataset = experiment.task.configured_name(bindings)
        model = experiment.task.configured_model(bindings) if dataset in ARITHMETIC else None
        algorithm = experiment.algorithm.name
        built.add((dataset, model, algorithm))
        macros = gin_cli.defined_macros()
        task_settings = gin_cli.config_str()
        gin_cli.parse_config(_includes(name), [], search_paths=[GIN_DIR])  # the task (+ model) + algorithm files
        assert gin_cli.config_str() == task_settings, f"{name} is more than its includes"
        if dataset in ARITHMETIC:
            assert experiment.num_epochs == 50 and experiment.seed == 6174
            assert ("FOLD" in macros) == (dataset != "svamp"), name
            assert f"ArithmeticTask.dataset = '{dataset}'" in task_settings
            assert not getattr(experiment.algorithm, "fairseq_order", False), name
            assert ("_g2t_" in name) == (model == "graph2tree"), name
            assert macros["BATCH_SIZE"] == (8 if model == "graph2tree" or dataset == "svamp" else 4), name
        elif dataset in ("csqa", "winogrande", "race"):
            # commonsense: no FOLD, steps (CSQA, WinoGrande) or epochs (RACE), fairseq's mask-step order
            assert "FOLD" not in macros and experiment.fold is None and "MAX_LENGTH" in macros, name
            assert ("TRAIN_STEPS" in macros) == (dataset != "race") == (experiment.train_steps is not None), name
            assert macros["UPDATE_FREQUENCY"] == 500 and macros["PRETRAINED"] == "roberta-large", name
            assert f"CommonsenseTask.dataset = '{dataset}'" in task_settings
            assert getattr(experiment.algorithm, "fairseq_order", algorithm == "dense"), name
        elif dataset in PROTEIN:  # SMC-Bench's finetune_sup.py: epochs, seed 1, ESM-1b
            assert f"ProteinTask.dataset = '{dataset}'" in task_settings, name
            assert (experiment.fold is None) == (dataset != "hps2c2") == ("FOLD" not in macros), name  # HP-S2C2's folds
            assert experiment.train_steps is None and experiment.seed == 1, name
            assert macros["PRETRAINED"] == "facebook/esm1b_t33_650M_UR50S" and macros["UPDATE_FREQUENCY"] == 500, name
        else:  # translation: the authors' fairseq recipe, 40k updates of max-tokens batches
            assert dataset in ("2to2", "5to5", "10to10"), name
            assert f"TranslationTask.setting = '{dataset}'" in task_settings and experiment.fold is None, name
            assert experiment.train_steps == 40000 and experiment.seed == 222 and macros["MAX_TOKENS"] == 1024, name
            assert macros["PRETRAINED"] == "facebook/mbart-large-cc25", name
    # one shortcut per dataset (per model on the arithmetic datasets) and algorithm
    datasets = [(task.removeprefix("translation_"), None) for task in TASK_NAMES if task not in ARITHMETIC]
    datasets += [(task, model) for task in ARITHMETIC for model in ("gts", "graph2tree")]
    assert built == {(task, model, algorithm) for task, model in datasets for algorithm in sp.ALGORITHMS}
    gin.clear_config()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SHORTCUTS if {"tasks/asdiv.gin", "tasks/svamp.gin"} & set(_includes(n))])
def test_asdiv_and_svamp_gin_files_train_one_epoch(train_main, runs, name):
    (dataset,) = [Path(i).stem for i in _includes(name) if i.startswith("tasks/")]
    workdir = runs / name[:-4]
    assert train_main([f"--gin_file=gin/{name}", *small(
        f"--gin.WORKDIR='{workdir}'", f"--gin.DENSE_WORKDIR='{runs / ('dense_' + dataset)}'")]) == 0
    summary = read(workdir / "summary.json")
    assert summary["task"] == dataset and summary["fold"] == (None if dataset == "svamp" else 0)


@pytest.mark.slow
def test_readme_smoke_command_full_size(tmp_path):
    """The README's main job at real size, 1 epoch on MAWPS fold 0, with no DATA_DIR and no $SMC_DATA_DIR: the
    data shipped in the package (extracted into a fresh cache)."""
    workdir = tmp_path / "smoke"
    env = {k: v for k, v in os.environ.items() if k != "SMC_DATA_DIR"}
    env.update(SMC_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "scripts/train.py", "--gin_file=gin/mawps_rigl.gin", "--gin.NUM_EPOCHS=1",
         f"--gin.WORKDIR='{workdir}'"], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    summary = read(workdir / "summary.json")
    assert SUMMARY_KEYS <= set(summary) and summary["steps"] == 385 and summary["num_eval"] == 384
    assert abs(summary["actual_sparsity"] - 0.5) < 0.005


@pytest.mark.slow  # tests/test_trainer.py runs FOLD='all' on a fake three-fold task in the default suite
def test_fold_all_runs_every_fold_and_micro_averages(train_main, tmp_path):
    workdir = tmp_path / "cv"
    assert train_main(["--gin_file=gin/asdiv_dense.gin", *small(
        "--gin.FOLD='all'", "--gin.MAX_TRAIN_EXAMPLES=8", "--gin.MAX_EVAL_EXAMPLES=8",
        f"--gin.WORKDIR='{workdir}'")]) == 0
    folds = [read(workdir / f"fold_{k}" / "summary.json") for k in range(5)]
    assert [f["fold"] for f in folds] == [0, 1, 2, 3, 4]
    cv = read(workdir / "cv_summary.json")
    assert cv["fold"] == "all" and cv["num_eval"] == 40 and cv["folds"] == folds
    assert cv["reported"] == pytest.approx(sum(f["reported"] * f["num_eval"] for f in folds) / 40)
    assert (workdir / "config.gin").exists()
