"""Every gin/{hps,hps2c2,meltome,meltome_regression,stability}_*.gin through the train command on a tiny ESM-2-like
checkpoint (one layer): a complete summary.json whose actual sparsity is within 0.005 of the target (GMP
included), SMC-Bench's protein masking rule and the faithful switches in config.gin; every protein shortcut is
exactly its two includes; the bad-input errors are one line naming the fix; a tiny sweep -> report draws the
protein panel. The default suite runs one HP-S file per pipeline kind (before / during / after / LTH); the whole
matrix, the sweep and the benchmark smoke test are ``slow``. HotProtein files are written here; meltome and TAPE
come from ../shared/data."""

import json
import re
from pathlib import Path

import hf_fixtures as fx
import pytest
from conftest import ALGORITHMS, SHARED_DATA, SUMMARY_KEYS
from test_protein_task import write_hotprotein

import gin
from smc_jax.cli import gin_cli, report, report_tables, sweep
from smc_jax.cli.gin_cli import GIN_DIR
from smc_jax.tasks.protein.examples import DATASETS
from smc_jax.train import config

MELTOME = SHARED_DATA / "flip_meltome_early"
TAPE = SHARED_DATA / "tape_stability"
pytestmark = pytest.mark.skipif(not (MELTOME.is_dir() and TAPE.is_dir()),
                                reason=f"protein data not under {SHARED_DATA}")
LAYER_KERNELS = {"attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense",
                 "intermediate/dense", "output/dense"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fx.tiny_esm_checkpoint(tmp_path_factory.mktemp("tiny_esm2") / "ckpt", "esm2", num_hidden_layers=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("protein_runs")


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """The DATA_DIR of each dataset: HotProtein written here (8 train / 8 test sequences), the shared files."""
    root = tmp_path_factory.mktemp("hotprotein")
    write_hotprotein(root, 8, 8, num_classes=5)
    write_hotprotein(root, 8, 8, num_classes=2, dataset="hp_s2c2", fold=1)
    return {"hps": root, "hps2c2": root, "meltome": MELTOME, "meltome_regression": MELTOME, "stability": TAPE}


def small(checkpoint, data_dir, *extra: str) -> list[str]:
    """8 train / 8 eval sequences of <= 64 tokens, 1 epoch of 2 updates of 4, mask events every 2, sparsity 0.36."""
    return [f"--gin.PRETRAINED='{checkpoint}'", f"--gin.DATA_DIR='{data_dir}'", "--gin.MAX_TRAIN_EXAMPLES=8",
            "--gin.MAX_EVAL_EXAMPLES=8", "--gin.BATCH_SIZE=4", "--gin.NUM_EPOCHS=1", "--gin.MAX_LENGTH=64",
            "--gin.ProteinTask.length_buckets=(64,)", "--gin.ProteinTask.meltome_split='clustered_task'",
            "--gin.UPDATE_FREQUENCY=2", "--gin.SPARSITY=0.36", "--gin.TrainConfig.progress='off'", *extra]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# the default suite runs one file per pipeline kind (before, during, after, LTH); the rest of the matrix is slow
DEFAULT = {("hps", "omp_before"), ("hps", "gmp"), ("hps", "omp_after"), ("hps", "lth")}


@pytest.mark.parametrize("dataset, algorithm", [
    pytest.param(d, a, marks=() if (d, a) in DEFAULT else pytest.mark.slow) for d in DATASETS for a in ALGORITHMS])
def test_every_protein_gin_file_runs_to_a_complete_summary(train_main, runs, checkpoint, data_dirs, dataset,
                                                          algorithm):
    workdir = runs / f"{dataset}_{algorithm}"
    assert train_main([f"--gin_file=gin/{dataset}_{algorithm}.gin", *small(checkpoint, data_dirs[dataset]),
                       f"--gin.WORKDIR='{workdir}'", f"--gin.DENSE_WORKDIR='{runs / f'dense_{dataset}'}'"]) == 0
    summary = read(workdir / "summary.json")
    assert SUMMARY_KEYS <= set(summary) and summary["algorithm"] == algorithm and summary["task"] == dataset
    assert summary["model"] == "esm" and summary["fold"] == (1 if dataset == "hps2c2" else None)
    assert summary["steps"] == 2 and summary["epochs"] == 1 and summary["metric_mode"] == "max"
    main = "accuracy" if DATASETS[dataset].classes else "spearman"
    assert summary["metric"] == f"test/{main}" and summary["reported"] == summary["selected"][f"test/{main}"]
    assert summary["metrics"] == (["test/accuracy", "test/spearman"] if dataset == "meltome" else [f"test/{main}"])
    target = summary["target_sparsity"]
    assert target == (0.0 if algorithm == "dense" else 1 - 0.8**2 if algorithm == "lth" else 0.36)
    assert abs(summary["actual_sparsity"] - target) <= 0.005, summary["actual_sparsity"]
    if algorithm != "dense":  # SPEC §2.3: each layer's q/k/v/o and fc1/fc2 kernels; embeddings and head dense
        assert set(summary["per_leaf_sparsity"]) == {f"esm/encoder/layer/0/{m}/kernel" for m in LAYER_KERNELS}
    operative = (workdir / "config.gin").read_text()
    for switch in ("HEAD_TRAINABLE = False", "protein_head_group.trainable = %HEAD_TRAINABLE",
                   "ProteinTask.select_on = 'test'", "ProteinTask.truncation = 'smc'", "OneCycle.per_epoch = True",
                   "ProteinTask.head_init = 'torch_uniform'", "NO_PRUNING_EMB_HEADS = True"):
        assert switch in operative, switch
    if algorithm == "lth":
        assert [read(workdir / f"round_{k}" / "summary.json")["round"] for k in (1, 2)] == [1, 2]


PROTEIN_SHORTCUTS = sorted(f"{d}_{a}.gin" for d in DATASETS for a in ALGORITHMS)


def test_protein_shortcuts_are_their_two_includes_and_state_the_recipe():
    """One shortcut per dataset and algorithm, each exactly its task and algorithm files; the recipe's macros."""
    assert all((GIN_DIR / name).is_file() for name in PROTEIN_SHORTCUTS)
    for name in PROTEIN_SHORTCUTS:
        config.register()
        gin_cli.parse_config([f"gin/{name}"], [], search_paths=[GIN_DIR])
        experiment = config.experiment()
        macros, operative = gin_cli.defined_macros(), gin_cli.config_str()
        includes = re.findall(r"^include '([^']+)'", (GIN_DIR / name).read_text(), re.MULTILINE)
        gin_cli.parse_config(includes, [], search_paths=[GIN_DIR])
        assert gin_cli.config_str() == operative, f"{name} is more than its two includes"
        dataset = experiment.task.configured_name(gin_cli.configurable_bindings(experiment.task))
        assert name == f"{dataset}_{experiment.algorithm.name}.gin"
        assert experiment.num_epochs == 4 and experiment.seed == 1 and experiment.train_steps is None
        assert macros["UPDATE_FREQUENCY"] == 500 and macros["BATCH_SIZE"] == 3 and macros["NUM_EPOCHS"] == 4
        assert macros["PRETRAINED"] == "facebook/esm1b_t33_650M_UR50S" and macros["HEAD_TRAINABLE"] is False
        assert ("FOLD" in macros) == (dataset == "hps2c2") and experiment.fold == (1 if dataset == "hps2c2" else None)
        opt = experiment.optimizer
        assert (opt.kind, opt.learning_rate, opt.weight_decay, opt.b2, opt.eps) == ("adamw", 1e-6, 0.01, 0.999, 1e-8)
        assert type(opt.schedule).__name__ == "OneCycle" and opt.schedule.per_epoch and opt.schedule.cycle_momentum
        assert dict(opt.groups) == {"head": {"frozen": True}}
    gin.clear_config()


# ------------------------------------------------------------------------------------------------ errors


def error_line(train_main, capsys, argv) -> str:
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_bad_input_is_a_one_line_error_naming_the_fix(train_main, runs, checkpoint, tmp_path, capsys):
    def hps(root, *extra):
        return ["--gin_file=gin/hps_dense.gin", *small(checkpoint, root, *extra),
                f"--gin.WORKDIR='{tmp_path / 'bad' / root.name}'"]

    missing = write_hotprotein(tmp_path / "missing", 4, 4)
    (missing / "S" / "S_target" / "train2.fasta").unlink()
    msg = error_line(train_main, capsys, hps(missing))
    assert "no FASTA file for 'train2'" in msg and "fasta_dir" in msg
    labels = write_hotprotein(tmp_path / "labels", (["a", "b"], [1.0, 7.0]), 2)
    msg = error_line(train_main, capsys, hps(labels))
    assert "'b' has label 7.0" in msg and "outside [0, 5)" in msg and "label_offset or num_classes" in msg
    empty = write_hotprotein(tmp_path / "empty", 3, 2)
    (empty / "S" / "S_target" / "train1.fasta").write_text(">train1 nothing after the header\n\n")
    msg = error_line(train_main, capsys, hps(empty))
    assert "'train1' is empty" in msg and "fix its source file" in msg
    csv = tmp_path / "meltome.csv"
    csv.write_text("sequence,tm,set\nMKTAYIAK,50.1,train\nMKV,40.0,test\n")
    msg = error_line(train_main, capsys, ["--gin_file=gin/meltome_dense.gin", *small(checkpoint, csv),
                                          f"--gin.WORKDIR='{tmp_path / 'bad_csv'}'"])
    assert "no 'target' column" in msg and "sequence,target,set" in msg


def test_num_classes_disagreeing_with_the_dense_run_is_a_one_line_error(train_main, runs, checkpoint, data_dirs,
                                                                       capsys):
    """After and LTH on the HP-S dense run of the matrix (5 classes; trained here when the matrix has not) with a
    6-class head."""
    dense = runs / "dense_hps"
    if not (dense / "summary.json").exists():
        assert train_main(["--gin_file=gin/hps_dense.gin", *small(checkpoint, data_dirs["hps"]),
                           f"--gin.WORKDIR='{dense}'"]) == 0
    for algorithm in ("omp_after", "lth"):
        msg = error_line(train_main, capsys, [
            f"--gin_file=gin/hps_{algorithm}.gin", *small(checkpoint, data_dirs["hps"]),
            "--gin.ProteinTask.num_classes=6", f"--gin.DENSE_WORKDIR='{dense}'",
            f"--gin.WORKDIR='{runs / f'bad_{algorithm}'}'"])
        assert f"DENSE_WORKDIR {dense}" in msg and "head/out_proj" in msg and "num_classes" in msg


# ------------------------------------------------------------------------------------------------ sweep, report


@pytest.mark.slow
def test_a_tiny_protein_sweep_draws_the_protein_panel(checkpoint, data_dirs, tmp_path):
    runs = tmp_path / "runs"
    extra = [b for b in small(checkpoint, data_dirs["stability"]) if not b.startswith("--gin.SPARSITY")]
    assert sweep.main(["--gin_file=gin/stability_rigl.gin", "--algorithms=dense,rigl,gmp,lth",
                       "--sparsities=0.2,0.36", f"--workdir={runs}", *extra]) == 0
    assert report.main([str(runs), "--out", str(tmp_path / "report")]) == 0
    (table,) = [t for t in report_tables.build_tables(report.load_summaries([runs])) if t.metric == "test/spearman"]
    assert table.task_name == "stability" and table.model == "esm"
    for algorithm in ("rigl", "gmp", "lth"):
        for sparsity in (0.2, 0.36):
            assert table.value(algorithm, sparsity) is not None
    (png,) = (tmp_path / "report").glob("stability_esm_*test-spearman.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.slow
def test_bench_esm_sparse_step_runs(capsys):
    """``bench.py esm --compare sparse`` (Dense vs RigL 0.5 protein train steps) at a tiny size: a smoke test."""
    from smc_jax.cli import bench

    assert bench.main(["esm", "--compare", "sparse", "--layers", "1", "--batch", "2", "--length", "16",
                       "--rounds", "1", "--update_frequency", "4"]) == 0
    out = capsys.readouterr().out
    assert "rigl / dense:" in out and "protein recipe optimizer" in out
