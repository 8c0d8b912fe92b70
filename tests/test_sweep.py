"""The sweep command (smc_jax.cli.sweep): the dry-run plan (grid, order, shared dense runs, workdir names,
quoting, the task and algorithm read from the config however the gin files compose), its one-line errors,
diverged runs, and one tiny real sweep through the in-process runner (then rerun: everything skipped)."""

import ast
import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
from conftest import SHARED_DATA

import gin
from smc_jax.cli import gin_cli, sweep
from smc_jax.sparsity import ALGORITHMS
from smc_jax.tasks.base import TaskBase
from smc_jax.train import config
from smc_jax.train.pipelines import PAPER_SPARSITIES

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA / "arithmetic"
AFTER = ("omp_after", "random_after", "lth")
SPARSE = [a for a in ALGORITHMS if a not in ("dense", "lth")]  # one run per sparsity each


def small(*extra: str) -> list[str]:
    """Bindings of a short run (as tests/test_train_cli.py): 64 train / 32 dev problems, 1 epoch, hidden 32."""
    return [f"--gin.DATA_DIR='{DATA}'", "--gin.MAX_TRAIN_EXAMPLES=64", "--gin.MAX_EVAL_EXAMPLES=32",
            "--gin.NUM_EPOCHS=1", "--gin.UPDATE_FREQUENCY=8", "--gin.ArithmeticTask.hidden=32",
            "--gin.ArithmeticTask.embedding_size=32", "--gin.ArithmeticTask.input_buckets=(96,)",
            "--gin.ArithmeticTask.target_buckets=(16,)", "--gin.TrainConfig.progress='off'", *extra]


def dry_run(capsys, *argv: str) -> list[dict]:
    """The commands of ``sweep --dry_run ARGV``, each split back with shlex: its argv, gin files and gin values,
    and the algorithm of the planned run it prints."""
    assert sweep.main([*argv, "--dry_run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    runs, _ = sweep.plan([*argv, "--dry_run"])
    commands = []
    for line, run in zip(out.splitlines(), runs, strict=True):
        words = shlex.split(line)
        assert words[:2] == ["python", "scripts/train.py"], line
        files, bindings, rest = gin_cli.split_gin_args(words[2:])
        assert rest == [] and words[2:] == run.argv(), line
        values = {}
        for b in bindings:
            name, _, value = b.partition("=")
            values[name.strip()] = value.strip()
        gin_values = {k: ast.literal_eval(v) for k, v in values.items() if k.isupper()}
        commands.append({"argv": words[2:], "files": files, "gin": gin_values, "bindings": bindings,
                         "algorithm": run.algorithm})
    return commands


def built(command: dict):
    """The experiment a dry-run command builds (later files and bindings win)."""
    config.register()
    gin_cli.parse_config(command["files"], command["bindings"], search_paths=[gin_cli.GIN_DIR])
    return config.experiment()


def test_default_is_the_gin_files_own_run(capsys):
    [run] = dry_run(capsys, "--gin_file=gin/mawps_rigl.gin")
    assert run["files"] == ["gin/mawps_rigl.gin"]
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
    assert len(runs) == 1 + 1 + len(SPARSE) * len(PAPER_SPARSITIES)  # dense, lth, the others at every sparsity
    names = [r["algorithm"] for r in runs]
    assert names[0] == "dense" and names.count("dense") == 1 and "SPARSITY" not in runs[0]["gin"]
    assert list(dict.fromkeys(names)) == list(ALGORITHMS)  # dense, then the others in DESIGN.md's order
    for run, name in zip(runs, names):  # the given file, then the algorithm's own file (none for rigl's)
        assert run["files"] == ["gin/mawps_rigl.gin"] + ([] if name == "rigl" else [f"algorithms/{name}.gin"])
    dense_dir = runs[0]["gin"]["WORKDIR"]
    assert dense_dir == "runs/sweep_mawps/mawps_dense_seed6174_fold0"
    [lth] = [r for r in runs if r["algorithm"] == "lth"]
    assert lth["gin"]["SPARSITY"] == 0.893 and lth["gin"]["WORKDIR"].endswith("mawps_lth_s0.893_seed6174_fold0")
    for run, name in zip(runs, names):
        assert run["gin"].get("DENSE_WORKDIR") == (dense_dir if name in AFTER else None)
        assert run["gin"]["FOLD"] == 0 and run["gin"]["SEED"] == 6174
    assert len({r["gin"]["WORKDIR"] for r in runs}) == len(runs)
    # after-only sweep: the dense run still comes first; one per (seed, fold), LTH at the largest sparsity
    runs = dry_run(capsys, "--gin_file=gin/asdiv_lth.gin", "--sparsities=0.5,0.2", "--seeds=1,2")
    dense_files = ["gin/asdiv_lth.gin", "algorithms/dense.gin"]
    assert [(r["files"], r["gin"].get("SPARSITY"), r["gin"]["SEED"]) for r in runs] == [
        (dense_files, None, 1), (dense_files, None, 2), (["gin/asdiv_lth.gin"], 0.5, 1),
        (["gin/asdiv_lth.gin"], 0.5, 2)]
    assert [r["gin"].get("DENSE_WORKDIR") for r in runs[2:]] == [r["gin"]["WORKDIR"] for r in runs[:2]]


def test_a_task_file_and_an_algorithm_file(capsys):
    runs = dry_run(capsys, "--gin_file=gin/tasks/mawps.gin", "--gin_file=gin/algorithms/rigl.gin",
                   "--algorithms=rigl,gmp")
    assert [(r["algorithm"], r["files"]) for r in runs] == [
        ("rigl", ["gin/tasks/mawps.gin", "gin/algorithms/rigl.gin"]),
        ("gmp", ["gin/tasks/mawps.gin", "gin/algorithms/rigl.gin", "algorithms/gmp.gin"])]
    assert [r["gin"]["WORKDIR"] for r in runs] == ["runs/sweep_mawps/mawps_rigl_s0.5_seed6174_fold0",
                                                  "runs/sweep_mawps/mawps_gmp_s0.5_seed6174_fold0"]
    assert [built(r).algorithm.name for r in runs] == ["rigl", "gmp"]  # the appended file wins


def test_a_task_alone_needs_algorithms(capsys):
    runs = dry_run(capsys, "--task=mawps", "--algorithms=dense,lth")
    assert [(r["algorithm"], r["files"]) for r in runs] == [("dense", ["tasks/mawps.gin", "algorithms/dense.gin"]),
                                                           ("lth", ["tasks/mawps.gin", "algorithms/lth.gin"])]
    assert [r["gin"]["WORKDIR"] for r in runs] == ["runs/sweep_mawps/mawps_dense_seed6174_fold0",
                                                  "runs/sweep_mawps/mawps_lth_s0.5_seed6174_fold0"]
    assert runs[1]["gin"]["DENSE_WORKDIR"] == runs[0]["gin"]["WORKDIR"]
    assert [built(r).algorithm.name for r in runs] == ["dense", "lth"]
    # --task goes before the given files: a task and an algorithm shortcut of another task's family
    [run] = dry_run(capsys, "--task=svamp", "--gin_file=gin/algorithms/snip.gin")
    assert run["files"] == ["tasks/svamp.gin", "gin/algorithms/snip.gin"] and run["algorithm"] == "snip"
    assert run["gin"]["WORKDIR"] == "runs/sweep_svamp/svamp_snip_s0.5_seed6174"


def test_a_second_model_names_its_runs(capsys):
    """Graph2Tree (its model file, or a gin/<task>_g2t_<algorithm>.gin shortcut): every run and the default workdir
    carry the model; GTS's names are unchanged; the commands build Graph2Tree experiments."""
    runs = dry_run(capsys, "--gin_file=gin/mawps_g2t_rigl.gin", "--algorithms=dense,omp_after,rigl", "--folds=0")
    assert [r["gin"]["WORKDIR"] for r in runs] == [
        "runs/sweep_mawps_graph2tree/mawps_graph2tree_dense_seed6174_fold0",
        "runs/sweep_mawps_graph2tree/mawps_graph2tree_omp_after_s0.5_seed6174_fold0",
        "runs/sweep_mawps_graph2tree/mawps_graph2tree_rigl_s0.5_seed6174_fold0"]
    assert runs[1]["gin"]["DENSE_WORKDIR"] == runs[0]["gin"]["WORKDIR"]
    assert [r["files"][0] for r in runs] == ["gin/mawps_g2t_rigl.gin"] * 3
    for run in runs:
        exp = built(run)
        task = gin_cli.configurable_bindings(exp.task)
        assert task["model"] == "graph2tree" and task["hidden"] == 384 and gin_cli.macro_value("BATCH_SIZE") == 8
    planned, _ = sweep.plan(["--task=svamp", "--gin_file=gin/models/graph2tree.gin", "--algorithms=snip", "--dry_run"])
    assert [r.title() for r in planned] == ["svamp graph2tree snip s=0.5 seed=6174"]
    assert planned[0].workdir == "runs/sweep_svamp_graph2tree/svamp_graph2tree_snip_s0.5_seed6174"
    [run] = dry_run(capsys, "--task=mawps", "--gin_file=gin/models/gts.gin", "--gin_file=gin/algorithms/gmp.gin")
    assert run["gin"]["WORKDIR"] == "runs/sweep_mawps/mawps_gmp_s0.5_seed6174_fold0"


@gin.external_configurable
@dataclasses.dataclass
class SweepFakeTask(TaskBase):
    """A task registered for these tests only: three folds whatever the dataset; never instantiated."""

    dataset: str = "fake"
    fold: int | None = 0

    @classmethod
    def folds(cls, dataset: str) -> int | None:
        return 3

    def __post_init__(self):
        raise AssertionError("the sweep must not instantiate the task")


FAKE_TASK_GIN = """
include 'tasks/mawps.gin'  # the engine settings of a real task; the task itself is the fake
Experiment.task = @SweepFakeTask
SweepFakeTask.dataset = 'word_problems_v2'
"""


def test_a_dataset_name_with_underscores(tmp_path, capsys):
    (tmp_path / "word_problems_v2.gin").write_text(FAKE_TASK_GIN)
    shortcut = tmp_path / "word_problems_v2_g2t_rigl.gin"  # a file name no stem split can take apart
    shortcut.write_text(f"include '{tmp_path / 'word_problems_v2.gin'}'\ninclude 'algorithms/rigl.gin'\n")
    runs = dry_run(capsys, f"--gin_file={shortcut}", "--algorithms=rigl,omp_after", "--folds=all", "--seeds=1")
    assert [r["gin"]["WORKDIR"] for r in runs] == (
        [f"runs/sweep_word_problems_v2/word_problems_v2_dense_seed1_fold{k}" for k in range(3)]
        + [f"runs/sweep_word_problems_v2/word_problems_v2_rigl_s0.5_seed1_fold{k}" for k in range(3)]
        + [f"runs/sweep_word_problems_v2/word_problems_v2_omp_after_s0.5_seed1_fold{k}" for k in range(3)])
    assert [r["files"][-1] for r in runs] == ["algorithms/dense.gin"] * 3 + [str(shortcut)] * 3 + [
        "algorithms/omp_after.gin"] * 3
    runs_, _ = sweep.plan([f"--gin_file={tmp_path / 'word_problems_v2.gin'}", "--gin.SweepFakeTask.dataset='a_b'",
                           "--algorithms=gmp"])
    assert [(r.task_name, r.title()) for r in runs_] == [("a_b", "a_b gmp s=0.5 seed=6174 fold=0")]


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
    gin_cli.parse_config(run["files"], run["bindings"], search_paths=[gin_cli.GIN_DIR])  # still valid gin
    assert gin_cli.macro_value("DENSE_WORKDIR") == f"{odd}/mawps_dense_seed6174_fold0"


def test_help_documents_the_flags(capsys):
    assert sweep.main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--gin_file", "--task", "--algorithms", "--sparsities", "--seeds", "--folds", "--workdir", "--dry_run",
                 "--gin.NAME=VALUE", "paper", "DENSE_WORKDIR", "skipped (done)", "diverged at step",
                 "skipped (diverged at step"):
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
    (["--gin_file=gin/base.gin", "--algorithms=rigl"], "the config names no task (Experiment.task)"),
    (["--gin_file=gin/mawps_nope.gin"], "gin file not found: gin/mawps_nope.gin"),
    (["--gin_file=gin/cola_rigl.gin"], "gin file not found: gin/cola_rigl.gin"),
    ([], "give --gin_file=FILE"),
    (["--task=mawps"], "the config names no algorithm (Experiment.algorithm): give --algorithms="),
    (["--gin_file=gin/tasks/csqa.gin", "--seeds=1"], "the config names no algorithm"),
    (["--task=cola", "--algorithms=rigl"], "unknown task 'cola' (no gin/tasks/cola.gin); tasks: asdiv, csqa, "),
    (["--task=mawps", "--algorithms=rigl,nope"], "unknown algorithm 'nope'"),
    (["--task=mawps", "--algorithms=rigl", "--gin.Experiment.algorithm=@GMP()"],
     "algorithms/rigl.gin does not set the algorithm: a binding sets Experiment.algorithm to 'gmp'"),
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


def test_every_listed_task_names_its_runs():
    """--task lists the dataset files of gin/tasks/ (not the family files they include: every family's); each
    plans and names its runs by its task's name (``summary.json["task"]``): the file's stem, or its setting after
    the family prefix (translation_10to10.gin: 10to10)."""
    files = {Path(f).stem for f in gin_cli.GIN_DIR.glob("tasks/*.gin")}
    with pytest.raises(sweep.SweepError) as info:
        sweep.plan(["--task=cola"])
    listed = str(info.value).split("tasks: ")[1].split(", ")
    assert set(listed) < files and {"asdiv", "csqa", "mawps", "race", "svamp", "winogrande"} <= set(listed)
    for name in listed:
        runs, _ = sweep.plan([f"--task={name}", "--algorithms=dense"])
        task = runs[0].task_name
        assert {run.task_name for run in runs} == {task} and (name == task or name.endswith(f"_{task}")), name
        assert runs[0].workdir.startswith(f"runs/sweep_{task}/{task}_dense")
    assert all((gin_cli.GIN_DIR / "algorithms" / f"{name}.gin").is_file() for name in ALGORITHMS)


# ---------------------------------------------------------------------------------------------- outcomes

LINE = r"\[(\d)/(\d)\] (.*?) \.\.\. (.*)"


def progress(out: str) -> list[tuple[str, str]]:
    return [(m.group(3), m.group(4)) for m in re.finditer(LINE, out)]



def fake_runs(root: Path) -> list:
    """A dense run, an After run from it, and a RigL run (plain Run objects; no gin)."""
    dense = str(root / "t_dense_seed0")
    return [sweep.Run("t", "dense", ("t.gin",), 0, None, None, dense),
            sweep.Run("t", "omp_after", ("t.gin",), 0, None, 0.5, str(root / "t_omp_after_s0.5_seed0"), dense),
            sweep.Run("t", "rigl", ("t.gin",), 0, None, 0.5, str(root / "t_rigl_s0.5_seed0"))]


def fake_train(diverge: set[str], calls: list[str]):
    """A train main that writes each run's summary.json, one marked diverged (exit 3) for algorithms in ``diverge``."""

    def main(argv: list[str]) -> int:
        workdir = Path(ast.literal_eval(next(a for a in argv if a.startswith("--gin.WORKDIR=")).partition("=")[2]))
        algorithm = workdir.name.split("_")[1]
        calls.append(algorithm)
        workdir.mkdir(parents=True)
        summary = {"reported": None, "diverged": True, "diverged_step": 12} if algorithm in diverge else \
            {"reported": 81.25}
        (workdir / "summary.json").write_text(json.dumps(summary))
        return 3 if algorithm in diverge else 0

    return main


def swept(capsys, runs: list, train) -> tuple[int, list, str]:
    """``sweep.execute``'s exit status, progress lines and the counts of its last line."""
    status = sweep.execute(runs, train)
    out = capsys.readouterr().out
    return status, progress(out), re.search(r"^sweep: (.*) in \d+ s$", out, re.MULTILINE).group(1)


def test_a_diverged_run_is_counted_apart_and_skipped_later(tmp_path, capsys):
    runs, calls = fake_runs(tmp_path), []
    assert swept(capsys, runs, fake_train({"rigl"}, calls)) == (1, [
        ("t dense seed=0", "done in 0 s, reported 81.2"), ("t omp_after s=0.5 seed=0", "done in 0 s, reported 81.2"),
        ("t rigl s=0.5 seed=0", "diverged at step 12")], "3 runs: 2 done, 0 skipped, 1 diverged, 0 failed")
    assert calls == ["dense", "omp", "rigl"]
    assert swept(capsys, runs, fake_train(set(), calls)) == (1, [  # nothing runs again; the diverged run counts
        ("t dense seed=0", "skipped (done)"), ("t omp_after s=0.5 seed=0", "skipped (done)"),
        ("t rigl s=0.5 seed=0", "skipped (diverged at step 12)")], "3 runs: 0 done, 2 skipped, 1 diverged, 0 failed")
    assert calls == ["dense", "omp", "rigl"]


def test_a_diverged_dense_run_fails_its_after_runs(tmp_path, capsys):
    runs, calls = fake_runs(tmp_path), []
    assert swept(capsys, runs, fake_train({"dense"}, calls)) == (1, [
        ("t dense seed=0", "diverged at step 12"), ("t omp_after s=0.5 seed=0", "failed (its dense run diverged)"),
        ("t rigl s=0.5 seed=0", "done in 0 s, reported 81.2")], "3 runs: 1 done, 0 skipped, 1 diverged, 1 failed")
    assert calls == ["dense", "rigl"]
    # an LTH run whose round diverged (no top-level summary.json yet) is skipped as diverged too
    lth = sweep.Run("t", "lth", ("t.gin",), 0, None, 0.36, str(tmp_path / "t_lth"), runs[0].workdir)
    (tmp_path / "t_lth" / "round_2").mkdir(parents=True)
    (tmp_path / "t_lth" / "round_2" / "summary.json").write_text(json.dumps({"diverged": True, "diverged_step": 4}))
    assert swept(capsys, [lth], fake_train(set(), calls)) == (
        1, [("t lth s=0.36 seed=0", "skipped (diverged at step 4)")], "1 runs: 0 done, 0 skipped, 1 diverged, 0 failed")


# ---------------------------------------------------------------------------------------------- real runs

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"arithmetic data not found at {DATA}")


@needs_data
def test_tiny_sweep_runs_then_skips(tmp_path, capsys):
    argv = ["--gin_file=gin/mawps_rigl.gin", "--algorithms=dense,rigl", "--sparsities=0.5", "--seeds=0",
            "--folds=0", f"--workdir={tmp_path}", *small()]
    assert sweep.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    lines = progress(out)
    assert [title for title, _ in lines] == ["mawps dense seed=0 fold=0", "mawps rigl s=0.5 seed=0 fold=0"]
    for _, status in lines:
        assert re.fullmatch(r"done in \d+ s, reported \d+\.\d", status), status
    assert re.search(r"^sweep: 2 runs: 2 done, 0 skipped, 0 diverged, 0 failed in \d+ s$", out, re.MULTILINE), out
    dense = json.loads((tmp_path / "mawps_dense_seed0_fold0" / "summary.json").read_text())
    rigl = json.loads((tmp_path / "mawps_rigl_s0.5_seed0_fold0" / "summary.json").read_text())
    assert (dense["algorithm"], dense["seed"], dense["fold"], dense["target_sparsity"]) == ("dense", 0, 0, 0.0)
    assert (rigl["algorithm"], rigl["seed"], rigl["fold"], rigl["target_sparsity"]) == ("rigl", 0, 0, 0.5)
    assert f"reported {rigl['reported']:.1f}" in lines[1][1]
    # in-process runs share no gin state: each run's config is its own (dense: mawps_rigl.gin + algorithms/dense.gin)
    assert "Experiment.algorithm = @Dense()" in (tmp_path / "mawps_dense_seed0_fold0" / "config.gin").read_text()
    rigl_config = (tmp_path / "mawps_rigl_s0.5_seed0_fold0" / "config.gin").read_text()
    assert "Experiment.algorithm = @RigL()" in rigl_config and "Dense" not in rigl_config

    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert progress(out) == [("mawps dense seed=0 fold=0", "skipped (done)"),
                             ("mawps rigl s=0.5 seed=0 fold=0", "skipped (done)")]
    assert re.search(r"^sweep: 2 runs: 0 done, 2 skipped, 0 diverged, 0 failed", out, re.MULTILINE), out
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
    assert re.search(r"^sweep: 5 runs: 0 done, 0 skipped, 0 diverged, 5 failed", captured.out, re.MULTILINE)
    assert captured.err.count("error: ") == 3 and "/nonexistent" in captured.err
