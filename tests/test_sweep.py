"""scripts/sweep.py: the dry-run plan (grid, order, shared dense runs, workdir names, quoting), its one-line
errors, and one tiny real sweep through the in-process runner (then rerun: everything skipped)."""

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import jax
import pytest

from smc_jax.sparsity import ALGORITHMS
from smc_jax.train import gin_utils
from smc_jax.train.pipelines import PAPER_SPARSITIES

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SMC_SHARED_DATA", REPO.parent / "shared" / "data")) / "arithmetic"


def _load_sweep():
    spec = importlib.util.spec_from_file_location("smc_sweep_cli", REPO / "scripts" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


sweep = _load_sweep()


def small(*extra: str) -> list[str]:
    """Bindings of a short run (as tests/test_train_cli.py): 64 train / 32 dev problems, 1 epoch, hidden 32."""
    return [f"--gin.DATA_DIR='{DATA}'", "--gin.MAX_TRAIN_EXAMPLES=64", "--gin.MAX_EVAL_EXAMPLES=32",
            "--gin.NUM_EPOCHS=1", "--gin.UPDATE_FREQUENCY=8", "--gin.ArithmeticTask.hidden=32",
            "--gin.ArithmeticTask.embedding_size=32", "--gin.ArithmeticTask.input_buckets=(96,)",
            "--gin.ArithmeticTask.target_buckets=(16,)", "--gin.TrainConfig.progress='off'", *extra]


def dry_run(capsys, *argv: str) -> list[dict]:
    """The commands of ``sweep.py --dry_run ARGV``, each split back with shlex: its argv and its gin values."""
    assert sweep.main([*argv, "--dry_run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    commands = []
    for line in out.splitlines():
        words = shlex.split(line)
        assert words[:2] == ["python", "scripts/train.py"], line
        files, bindings, rest = gin_utils.split_gin_args(words[2:])
        assert len(files) == 1 and rest == [], line
        values = {}
        for b in bindings:
            name, _, value = b.partition("=")
            values[name.strip()] = value.strip()
        gin = {k: ast.literal_eval(v) for k, v in values.items() if k.isupper()}
        commands.append({"argv": words[2:], "file": files[0], "gin": gin, "bindings": bindings})
    return commands


def test_default_is_the_gin_files_own_run(capsys):
    [run] = dry_run(capsys, "--gin_file=gin/mawps_rigl.gin")
    assert run["file"] == "gin/mawps_rigl.gin"
    assert run["gin"] == {"SPARSITY": 0.5, "SEED": 6174, "FOLD": 0,
                          "WORKDIR": "runs/sweep_mawps/mawps_rigl_s0.5_seed6174_fold0"}
    [run] = dry_run(capsys, "--gin_file=gin/csqa_gmp.gin", "--gin.SPARSITY=0.738", "--workdir=out")
    assert run["gin"] == {"SPARSITY": 0.738, "SEED": 0, "WORKDIR": "out/csqa_gmp_s0.738_seed0"}  # no FOLD


def test_paper_grid(capsys):
    runs = dry_run(capsys, "--gin_file=gin/mawps_rigl.gin", "--sparsities=paper", "--seeds=0")
    assert [r["gin"]["SPARSITY"] for r in runs] == list(PAPER_SPARSITIES)
    assert [r["gin"]["WORKDIR"] for r in runs] == [f"runs/sweep_mawps/mawps_rigl_s{s:g}_seed0_fold0"
                                                  for s in PAPER_SPARSITIES]
    assert "runs/sweep_mawps/mawps_rigl_s0.8325_seed0_fold0" in [r["gin"]["WORKDIR"] for r in runs]


def test_all_algorithms_dense_first_lth_once_after_runs_share_the_dense_run(capsys):
    runs = dry_run(capsys, "--gin_file=gin/mawps_rigl.gin", "--algorithms=all", "--sparsities=paper", "--folds=0")
    assert len(runs) == 1 + 1 + 9 * 10
    names = [Path(r["file"]).stem.split("_", 1)[1] for r in runs]
    assert names[0] == "dense" and names.count("dense") == 1 and "SPARSITY" not in runs[0]["gin"]
    assert list(dict.fromkeys(names)) == list(ALGORITHMS)  # dense, then the others in DESIGN.md's order
    dense_dir = runs[0]["gin"]["WORKDIR"]
    assert dense_dir == "runs/sweep_mawps/mawps_dense_seed6174_fold0"
    [lth] = [r for r in runs if r["file"] == "gin/mawps_lth.gin"]
    assert lth["gin"]["SPARSITY"] == 0.893 and lth["gin"]["WORKDIR"].endswith("mawps_lth_s0.893_seed6174_fold0")
    for run, name in zip(runs, names):
        assert run["gin"].get("DENSE_WORKDIR") == (dense_dir if name in ("omp_after", "random_after", "lth") else None)
        assert run["gin"]["FOLD"] == 0 and run["gin"]["SEED"] == 6174
    assert len({r["gin"]["WORKDIR"] for r in runs}) == len(runs)
    # after-only sweep: the dense run still comes first; one per (seed, fold), LTH at the largest sparsity
    runs = dry_run(capsys, "--gin_file=gin/asdiv_lth.gin", "--sparsities=0.5,0.2", "--seeds=1,2")
    assert [(Path(r["file"]).name, r["gin"].get("SPARSITY"), r["gin"]["SEED"]) for r in runs] == [
        ("asdiv_dense.gin", None, 1), ("asdiv_dense.gin", None, 2),
        ("asdiv_lth.gin", 0.5, 1), ("asdiv_lth.gin", 0.5, 2)]
    assert [r["gin"].get("DENSE_WORKDIR") for r in runs[2:]] == [r["gin"]["WORKDIR"] for r in runs[:2]]


def test_folds_expand_to_separate_runs(capsys):
    runs = dry_run(capsys, "--gin_file=gin/asdiv_omp_after.gin", "--folds=all", "--seeds=0,1", "--sparsities=0.5",
                   "--workdir=cv")
    dirs = [r["gin"]["WORKDIR"] for r in runs]
    assert dirs[:10] == [f"cv/asdiv_dense_seed{s}_fold{k}" for s in (0, 1) for k in range(5)]
    assert dirs[10:] == [f"cv/asdiv_omp_after_s0.5_seed{s}_fold{k}" for s in (0, 1) for k in range(5)]
    assert [r["gin"]["FOLD"] for r in runs[10:]] == [0, 1, 2, 3, 4] * 2
    assert [r["gin"]["DENSE_WORKDIR"] for r in runs[10:]] == dirs[:10]
    # FOLD='all' in the gin bindings expands the same way (no FOLD='all' sub-runs)
    runs = dry_run(capsys, "--gin_file=gin/mawps_gmp.gin", "--gin.FOLD='all'")
    assert [r["gin"]["FOLD"] for r in runs] == [0, 1, 2, 3, 4]
    runs = dry_run(capsys, "--gin_file=gin/svamp_rigl.gin", "--algorithms=dense,rigl", "--seeds=3")
    assert [r["gin"]["WORKDIR"] for r in runs] == ["runs/sweep_svamp/svamp_dense_seed3",
                                                  "runs/sweep_svamp/svamp_rigl_s0.5_seed3"]
    assert all("FOLD" not in r["gin"] for r in runs)


def test_quoting_survives_shlex_split(capsys, tmp_path):
    odd = tmp_path / "my runs" / "it's $HOME"
    extra = ["--gin.DATA_DIR='/data dir/x'", "--gin_bindings=ArithmeticTask.hidden = 32\nTrainConfig.log_every = 7",
             "--gin.TrainConfig.progress='off'"]
    dense, run = dry_run(capsys, "--gin_file=gin/mawps_omp_after.gin", f"--workdir={odd}", *extra)
    assert dense["gin"]["WORKDIR"] == f"{odd}/mawps_dense_seed6174_fold0"
    assert run["gin"]["WORKDIR"] == f"{odd}/mawps_omp_after_s0.5_seed6174_fold0"
    assert run["gin"]["DATA_DIR"] == dense["gin"]["DATA_DIR"] == "/data dir/x"
    assert {"ArithmeticTask.hidden = 32", "TrainConfig.log_every = 7"} <= set(run["bindings"])  # a flag per line
    assert run["argv"] == sweep.plan(["--gin_file=gin/mawps_omp_after.gin", f"--workdir={odd}", *extra])[0][1].argv()
    gin_utils.parse_config([run["file"]], run["bindings"], search_paths=[REPO / "gin"])  # still valid gin
    assert gin_utils.macro_value("DENSE_WORKDIR") == f"{odd}/mawps_dense_seed6174_fold0"


def test_help_documents_the_flags(capsys):
    assert sweep.main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--gin_file", "--algorithms", "--sparsities", "--seeds", "--folds", "--workdir", "--dry_run",
                 "--gin.NAME=VALUE", "paper", "DENSE_WORKDIR", "skipped (done)"):
        assert flag in out, flag


@pytest.mark.parametrize("argv, message", [
    (["--gin_file=gin/mawps_rigl.gin", "--algorithms=rigl,nope"],
     "unknown algorithm 'nope' in --algorithms; choose from: " + ", ".join(ALGORITHMS)),
    (["--gin_file=gin/mawps_rigl.gin", "--sparsities=0.5,1.0"], "sparsity 1 is outside [0, 1)"),
    (["--gin_file=gin/mawps_rigl.gin", "--sparsities=-0.1"], "outside [0, 1)"),
    (["--gin_file=gin/mawps_rigl.gin", "--sparsities=half"], "--sparsities=half"),
    (["--gin_file=gin/mawps_rigl.gin", "--seeds=0,x"], "--seeds=0,x"),
    (["--gin_file=gin/mawps_rigl.gin", "--seeds=1", "--gin.SEED=2"], "--gin.SEED conflicts with --seeds"),
    (["--gin_file=gin/mawps_rigl.gin", "--folds=1", "--gin.FOLD=2"], "--gin.FOLD conflicts with --folds"),
    (["--gin_file=gin/mawps_rigl.gin", "--sparsities=paper", "--gin.SPARSITY=0.2"], "conflicts with --sparsities"),
    (["--gin_file=gin/mawps_rigl.gin", "--gin.WORKDIR='x'"], "use --workdir"),
    (["--gin_file=gin/mawps_rigl.gin", "--gin_bindings=DENSE_WORKDIR = 'x'"], "--gin.DENSE_WORKDIR conflicts"),
    (["--gin_file=gin/svamp_rigl.gin", "--folds=all"], "svamp has no folds"),
    (["--gin_file=gin/csqa_rigl.gin", "--folds=0"], "csqa has no folds"),
    (["--gin_file=gin/mawps_rigl.gin", "--folds=5"], "fold 5 of mawps does not exist: folds are 0..4"),
    (["--gin_file=gin/base.gin"], "not a top-level file"),
    (["--gin_file=gin/mawps_nope.gin"], "not a top-level file"),
    (["--gin_file=gin/cola_rigl.gin"], "gin file not found: gin/cola_rigl.gin"),
    (["--gin_file=gin/mawps_rigl.gin", "--gin_file=gin/mawps_gmp.gin"], "exactly one --gin_file"),
    ([], "exactly one --gin_file"),
    (["--gin_file=gin/mawps_rigl.gin", "--bogus=1"], "unrecognized arguments: --bogus=1"),
    (["--gin_file=gin/mawps_rigl.gin", "--gin.FOLDS=1"], "unknown macro FOLDS"),
    (["--gin_file=gin/svamp_rigl.gin", "--gin.FOLD=1"], "unknown macro FOLD"),
    (["--gin_file=gin/mawps_rigl.gin", "--algorithms=dense,gmp", "--gin.RigL.init='magic'"], "magic"),
])
def test_bad_flags_are_one_line_and_exit_2(argv, message, capsys):
    assert sweep.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert captured.out == ""


def test_missing_sibling_gin_file_names_what_exists(tmp_path, capsys):
    shutil.copy(REPO / "gin" / "mawps_rigl.gin", tmp_path / "mawps_rigl.gin")
    shutil.copy(REPO / "gin" / "mawps_gmp.gin", tmp_path / "mawps_gmp.gin")
    [run] = dry_run(capsys, f"--gin_file={tmp_path / 'mawps_rigl.gin'}", "--algorithms=gmp")
    assert run["file"] == str(tmp_path / "mawps_gmp.gin")
    assert sweep.main([f"--gin_file={tmp_path / 'mawps_rigl.gin'}", "--algorithms=snip"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no gin file mawps_snip.gin for algorithm snip" in err
    assert err.endswith("mawps has: gmp, rigl"), err


# ---------------------------------------------------------------------------------------------- real runs

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"arithmetic data not found at {DATA}")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for the runs (shared with test_train_cli.py's when both run)."""
    cache = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


LINE = r"\[(\d)/(\d)\] (.*?) \.\.\. (.*)"


def progress(out: str) -> list[tuple[str, str]]:
    return [(m.group(3), m.group(4)) for m in re.finditer(LINE, out)]


@needs_data
def test_tiny_sweep_runs_then_skips(tmp_path, compile_cache, capsys):
    argv = ["--gin_file=gin/mawps_rigl.gin", "--algorithms=dense,rigl", "--sparsities=0.5", "--seeds=0",
            "--folds=0", f"--workdir={tmp_path}", *small()]
    assert sweep.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    lines = progress(out)
    assert [title for title, _ in lines] == ["mawps dense seed=0 fold=0", "mawps rigl s=0.5 seed=0 fold=0"]
    for _, status in lines:
        assert re.fullmatch(r"done in \d+ s, reported \d+\.\d", status), status
    assert re.search(r"^sweep: 2 runs: 2 done, 0 skipped, 0 failed in \d+ s$", out, re.MULTILINE), out
    dense = json.loads((tmp_path / "mawps_dense_seed0_fold0" / "summary.json").read_text())
    rigl = json.loads((tmp_path / "mawps_rigl_s0.5_seed0_fold0" / "summary.json").read_text())
    assert (dense["algorithm"], dense["seed"], dense["fold"], dense["target_sparsity"]) == ("dense", 0, 0, 0.0)
    assert (rigl["algorithm"], rigl["seed"], rigl["fold"], rigl["target_sparsity"]) == ("rigl", 0, 0, 0.5)
    assert f"reported {rigl['reported']:.1f}" in lines[1][1]
    # in-process runs share no gin state: each run's config is its own
    assert "RigL" not in (tmp_path / "mawps_dense_seed0_fold0" / "config.gin").read_text()
    assert "RigL.sparsity" in (tmp_path / "mawps_rigl_s0.5_seed0_fold0" / "config.gin").read_text()

    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert progress(out) == [("mawps dense seed=0 fold=0", "skipped (done)"),
                             ("mawps rigl s=0.5 seed=0 fold=0", "skipped (done)")]
    assert re.search(r"^sweep: 2 runs: 0 done, 2 skipped, 0 failed", out, re.MULTILINE), out
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes


def test_failed_runs_do_not_stop_the_sweep(tmp_path, capsys):
    argv = ["--gin_file=gin/mawps_rigl.gin", "--algorithms=rigl,omp_after", "--sparsities=0.5,0.7", "--seeds=0",
            f"--workdir={tmp_path}", "--gin.DATA_DIR='/nonexistent'", "--gin.TrainConfig.progress='off'"]
    assert sweep.main(argv) == 1
    captured = capsys.readouterr()
    assert progress(captured.out) == [
        ("mawps dense seed=0 fold=0", "failed (exit 2)"),
        ("mawps rigl s=0.5 seed=0 fold=0", "failed (exit 2)"),
        ("mawps rigl s=0.7 seed=0 fold=0", "failed (exit 2)"),
        ("mawps omp_after s=0.5 seed=0 fold=0", "failed (its dense run failed)"),
        ("mawps omp_after s=0.7 seed=0 fold=0", "failed (its dense run failed)")]
    assert re.search(r"^sweep: 5 runs: 0 done, 0 skipped, 5 failed", captured.out, re.MULTILINE)
    assert captured.err.count("error: ") == 3 and "/nonexistent" in captured.err
