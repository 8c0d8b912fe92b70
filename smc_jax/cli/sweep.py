r"""Run a grid of smc_jax experiments (algorithms x sparsities x seeds x folds) one after another.

    python scripts/sweep.py --gin_file=gin/mawps_rigl.gin [--algorithms=rigl,gmp|all] \
        [--sparsities=paper|0.2,0.5] [--seeds=0,1,2] [--folds=all|0,1] [--gin.NAME=VALUE ...] \
        [--workdir=runs/NAME] [--dry_run]
    python scripts/sweep.py --gin_file=gin/tasks/mawps.gin --gin_file=gin/algorithms/rigl.gin [...]
    python scripts/sweep.py --task=mawps --algorithms=dense,lth [...]

Flags:
  --gin_file     a gin file, repeatable and composed in order as train.py does: a top-level shortcut
                 (gin/mawps_rigl.gin) or a task file and an algorithm file (gin/tasks/mawps.gin,
                 gin/algorithms/rigl.gin). The task, its folds, the algorithm and the grid's defaults are read
                 from the parsed config (Experiment.task, Experiment.algorithm, the macros), never from file names.
  --task         NAME: the task file tasks/NAME.gin of the repo's gin/ goes before the --gin_file files.
  --algorithms   comma list of dense, lth, omp_after, random_after, gmp, omp_before, random_before, snip,
                 rigl, snip_rigl, omp_rigl, or `all` (default: the config's own algorithm; required when the
                 config names none, e.g. with --task alone). Algorithm X runs with the given files plus
                 algorithms/X.gin after them (later bindings win); the config's own algorithm runs as given.
  --sparsities   `paper` (SMC-Bench's grid 0.2, 0.36, 0.488, 0.59, 0.672, 0.738, 0.791, 0.8325, 0.866,
                 0.893) or a comma list of values in [0, 1) (default: the config's SPARSITY). `dense` is
                 one run whatever the sparsities; `lth` is one run whose IMP rounds go up to the largest
                 sparsity (round_k/summary.json per round; report.py reads those).
  --seeds        comma list of integers (default: the config's SEED).
  --folds        `all` (every fold as a separate run) or a comma list (default: the config's FOLD;
                 FOLD='all' expands the same way). Cross-validated datasets only.
  --gin.NAME=VALUE, --gin_bindings=B
                 passed to every run (a --gin_bindings value with several lines as one flag per line).
                 SEED, FOLD and SPARSITY conflict with --seeds, --folds and --sparsities (alone, they set
                 the default); WORKDIR and DENSE_WORKDIR are the sweep's own (use --workdir).
  --workdir      the folder of the runs (default: runs/sweep_<task>[_<model>]). Each run writes to
                 <workdir>/<task>[_<model>]_<algorithm>[_s<sparsity>]_seed<seed>[_fold<k>] (dense: no _s;
                 _<model> for a model other than the task family's default, e.g. mawps_graph2tree_rigl_...,
                 from gin/models/graph2tree.gin or a gin/<task>_g2t_<algorithm>.gin shortcut).
  --dry_run      print one shell-quoted `python scripts/train.py ...` command per run, in run order, and
                 run nothing (paste them into a cluster or TPU VM queue).

Order and sharing: the dense runs come first, one per (seed, fold); the After algorithms (omp_after,
random_after, lth) start from it through --gin.DENSE_WORKDIR, so it is trained once (and is the `dense`
algorithm's run when dense is in the sweep). Then each algorithm, sparsity, seed and fold in turn.

Local runs call train's main() in this process (gin is cleared and re-parsed per run, so no configuration
leaks from one run to the next; compiled programs are shared through the persistent compilation cache;
jax.distributed is initialized by the first run only). A run whose workdir has a summary.json is skipped
(lth: the top-level one, written when every round is done); an interrupted run resumes from its last
checkpoint. One progress line per run (`[3/21] mawps rigl s=0.5 seed=0 fold=0 ... done in 62 s, reported
81.2`, `skipped (done)`, `diverged at step 120`, `skipped (diverged at step 120)`, `failed (exit 2)`); a
failed or diverged run does not stop the sweep (After runs of a dense run that failed or diverged fail
without starting), but the exit status is 1 at the end, and the last line counts done, skipped, diverged
and failed runs. A bad flag prints one line (`error: ...`) and exits with status 2. On a multi-host pod
slice every host runs the same sweep, so --workdir must be on storage all hosts see (only process 0
writes summary.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from smc_jax.cli import arguments, fail
from smc_jax.cli.train import DIVERGED, INTERRUPTED
from smc_jax.cli.train import main as train_main
from smc_jax.sparsity import ALGORITHMS

AFTER = ("omp_after", "random_after", "lth")  # start from the shared dense run


class SweepError(ValueError):
    """A bad sweep flag: printed as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One train invocation of the sweep."""

    task_name: str
    algorithm: str
    gin_files: tuple[str, ...]
    seed: int
    fold: int | None
    sparsity: float | None  # None: dense
    workdir: str
    dense_workdir: str | None = None
    extra: tuple[str, ...] = ()
    model: str = ""  # the model where it is not the task family's default ('graph2tree'), else ''

    def argv(self) -> list[str]:
        """train's flags: the gin files, the extra bindings, then the run's coordinates (later wins)."""
        args = [*(f"--gin_file={f}" for f in self.gin_files), *self.extra]
        if self.sparsity is not None:
            args.append(f"--gin.SPARSITY={self.sparsity!r}")
        args.append(f"--gin.SEED={self.seed}")
        if self.fold is not None:
            args.append(f"--gin.FOLD={self.fold}")
        args.append(f"--gin.WORKDIR={self.workdir!r}")
        if self.dense_workdir is not None:
            args.append(f"--gin.DENSE_WORKDIR={self.dense_workdir!r}")
        return args

    def title(self) -> str:
        """``mawps rigl s=0.5 seed=0 fold=0`` (``mawps graph2tree rigl ...`` for a model other than the default)."""
        sparsity = "" if self.sparsity is None else f" s={self.sparsity:g}"
        fold = "" if self.fold is None else f" fold={self.fold}"
        model = f" {self.model}" if self.model else ""
        return f"{self.task_name}{model} {self.algorithm}{sparsity} seed={self.seed}{fold}"

    def command(self) -> str:
        """The run as a shell command."""
        return " ".join(["python", "scripts/train.py", *map(shell_quote, self.argv())])


def shell_quote(arg: str) -> str:
    """``shlex.quote`` that keeps ``--flag=`` outside the quotes and prefers ``"'gin string'"``."""
    if shlex.quote(arg) == arg:
        return arg
    flag, eq, value = arg.partition("=")
    if not eq or shlex.quote(flag) != flag:
        flag, value = "", arg
    else:
        flag += "="
    if "'" in value and not re.search(r'["$`\\!]', value):
        return flag + f'"{value}"'
    return flag + shlex.quote(value)


# ----------------------------------------------------------------------------------------------- flags


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise SweepError(f"{message}; see --help")


def _flags() -> argparse.ArgumentParser:
    parser = _Parser(add_help=False, allow_abbrev=False)
    for name in ("task", "algorithms", "sparsities", "seeds", "folds", "workdir"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--dry_run", action="store_true")
    return parser


def _items(flag: str, text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise SweepError(f"--{flag} is empty")
    return list(dict.fromkeys(items))


def _numbers(flag: str, text: str, kind: type) -> list:
    try:
        return list(dict.fromkeys(kind(t) for t in _items(flag, text)))
    except ValueError:
        raise SweepError(f"--{flag}={text}: expected a comma list of {kind.__name__}s") from None


def _binding_name(binding: str) -> str:
    return re.match(r"\s*([\w./]*)", binding).group(1)


def _as_flag(binding: str) -> str:
    """A one-line binding as a train flag again."""
    return f"--gin.{binding}" if re.match(r"[\w./]+=", binding) else f"--gin_bindings={binding}"


def _algorithms(text: str | None, own: str | None) -> list[str]:
    if text is None and own is None:
        raise SweepError("the config names no algorithm (Experiment.algorithm): give --algorithms=NAME[,NAME...] "
                         "or all, or an algorithm file such as --gin_file=gin/algorithms/rigl.gin")
    names = list(ALGORITHMS) if text == "all" else _items("algorithms", text) if text else [own]
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown:
        raise SweepError(f"unknown algorithm {unknown[0]!r} in --algorithms; choose from: {', '.join(ALGORITHMS)} "
                         "(or all)")
    return names


def _sparsities(text: str | None, default: float) -> list[float]:
    from smc_jax.train.pipelines import PAPER_SPARSITIES

    values = list(PAPER_SPARSITIES) if text == "paper" else _numbers("sparsities", text, float) if text else [default]
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad:
        raise SweepError(f"sparsity {bad[0]:g} is outside [0, 1) (--sparsities=paper or values like 0.2,0.5)")
    return values


def _folds(text: str | None, default: Any, task_name: str, num_folds: int | None) -> list[int | None]:
    if num_folds is None:
        if text is not None:
            raise SweepError(f"--folds: {task_name} has no folds (it is not a cross-validated dataset)")
        return [None]
    if text == "all" or (text is None and default == "all"):
        return list(range(num_folds))
    folds = _numbers("folds", text, int) if text is not None else [default]
    bad = [k for k in folds if not (isinstance(k, int) and 0 <= k < num_folds)]
    if bad:
        raise SweepError(f"fold {bad[0]!r} of {task_name} does not exist: folds are 0..{num_folds - 1} or all")
    return folds


def _task_file(name: str) -> str:
    """``tasks/NAME.gin`` (found in the repo's gin/ search path); a one-line error listing the tasks."""
    from smc_jax.cli.gin_cli import GIN_DIR
    from smc_jax.cli.gin_errors import listed, top_level_files

    if not (GIN_DIR / "tasks" / f"{name}.gin").is_file():
        tasks = [f[:-4] for f in top_level_files(GIN_DIR / "tasks", GIN_DIR)]
        raise SweepError(f"unknown task {name!r} (no gin/tasks/{name}.gin); tasks: {listed(tasks, limit=None)}")
    return f"tasks/{name}.gin"


def _model(task_class: Any) -> str | None:
    """The model the parsed config gives the (gin-wrapped) task class, for families that offer several
    (``configured_model``); None for the others."""
    from smc_jax.cli import gin_cli

    configured = getattr(task_class, "configured_model", None)
    return None if configured is None else configured(gin_cli.configurable_bindings(task_class))


def _configure(files: Sequence[str], bindings: Sequence[str]) -> Any:
    """Parse ``files`` and ``bindings``; the :class:`Experiment` they describe, or None when they name no
    algorithm. The task is the gin-wrapped class, never instantiated (that would load data)."""
    from smc_jax.cli import gin_cli
    from smc_jax.train import config

    gin_cli.parse_run(files, bindings)
    if gin_cli.binding_value("Experiment.task") is None:
        raise SweepError("the config names no task (Experiment.task): give --task=NAME or a task file such as "
                         "--gin_file=gin/tasks/mawps.gin")
    if gin_cli.binding_value("Experiment.algorithm") is None:
        return None
    return config.experiment()


# ----------------------------------------------------------------------------------------------- plan


def plan(argv: Sequence[str]) -> tuple[list[Run], bool]:
    """The runs of a sweep command line, in order, and whether it is a dry run."""
    from smc_jax.cli import gin_cli

    files, bindings, rest = gin_cli.split_gin_args(argv)
    bindings = [line.strip() for b in bindings for line in b.splitlines()  # one per line: one command per line
                if line.strip() and not line.strip().startswith("#")]
    flags = _flags().parse_args(rest)
    if flags.task is not None:
        files = [_task_file(flags.task), *files]
    if not files:
        raise SweepError("give --gin_file=FILE (e.g. gin/mawps_rigl.gin, repeatable) or --task=NAME")
    named = {_binding_name(b) for b in bindings}
    for macro, flag in (("SEED", "seeds"), ("FOLD", "folds"), ("SPARSITY", "sparsities")):
        if macro in named and getattr(flags, flag) is not None:
            raise SweepError(f"--gin.{macro} conflicts with --{flag}: give one of them")
    for macro in ("WORKDIR", "DENSE_WORKDIR"):
        if macro in named:
            raise SweepError(f"--gin.{macro} conflicts with the sweep, which names every run's workdir; use --workdir")

    given = _configure(files, bindings)
    own = given.algorithm.name if given is not None else None
    algorithms = _algorithms(flags.algorithms, own)
    needs_dense = "dense" in algorithms or any(a in AFTER for a in algorithms)
    files_of = {name: tuple(files) if name == own else (*files, f"algorithms/{name}.gin")
                for name in (["dense"] if needs_dense else []) + algorithms}
    for name, run_files in files_of.items():  # every run's config builds with the bindings (bad values: exit 2 now)
        built = _configure(run_files, bindings)
        if built is None or built.algorithm.name != name:
            raise SweepError(f"algorithms/{name}.gin does not set the algorithm: a binding sets Experiment.algorithm "
                             f"to {getattr(getattr(built, 'algorithm', None), 'name', None)!r}")
    exp = _configure(files if given is not None else files_of[algorithms[0]], bindings)
    macros = gin_cli.defined_macros()
    task = exp.task.configured_name(gin_cli.configurable_bindings(exp.task))
    num_folds = exp.task.folds(task) if "FOLD" in macros else None
    from smc_jax.train.pipelines import model_tag

    tag = model_tag(_model(exp.task), getattr(exp.task, "default_model", None))

    sparsities = _sparsities(flags.sparsities, macros.get("SPARSITY", 0.5))
    seeds = _numbers("seeds", flags.seeds, int) if flags.seeds else [int(exp.seed)]
    folds = _folds(flags.folds, macros.get("FOLD"), task, num_folds)
    root = Path(flags.workdir or f"runs/sweep_{task}{tag}")
    coordinates = {"SEED", "FOLD", "SPARSITY"}  # read above into the grid; every run sets its own
    extra = tuple(_as_flag(b) for b in bindings if _binding_name(b) not in coordinates)

    def run(name: str, seed: int, fold: int | None, sparsity: float | None) -> Run:
        at = f"_seed{seed}" + ("" if fold is None else f"_fold{fold}")
        suffix = ("" if sparsity is None else f"_s{sparsity:g}") + at
        dense = str(root / f"{task}{tag}_dense{at}")
        return Run(task, name, files_of[name], seed, fold, sparsity, str(root / f"{task}{tag}_{name}{suffix}"),
                   dense if name in AFTER else None, extra, tag[1:])

    grid = [(seed, fold) for seed in seeds for fold in folds]
    runs = [run("dense", seed, fold, None) for seed, fold in grid] if needs_dense else []
    for name in algorithms:
        if name == "lth":
            runs += [run(name, seed, fold, max(sparsities)) for seed, fold in grid]
        elif name != "dense":
            runs += [run(name, seed, fold, s) for s in sparsities for seed, fold in grid]
    return runs, flags.dry_run


# ----------------------------------------------------------------------------------------------- run


def _read_summary(path: Path) -> dict | None:
    """A run's summary.json; None when there is none, ``{}`` when it is not readable JSON."""
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _diverged(workdir: Path) -> dict | None:
    """The first summary of a run (its own, a fold's or an LTH round's) that says it diverged; None if none."""
    for folder in (workdir, *sorted(workdir.glob("fold_*")), *sorted(workdir.glob("round_*"))):
        summary = _read_summary(folder / "summary.json")
        if summary and summary.get("diverged"):
            return summary
    return None


def _at_step(summary: dict | None) -> str:
    step = (summary or {}).get("diverged_step")
    return "" if step is None else f" at step {step}"


def execute(runs: Sequence[Run], train: Callable[[list[str]], int] = train_main) -> int:
    """Run (or skip) every run in order with one progress line each; 0 when none failed or diverged, else 1."""
    start = time.time()
    counts = dict.fromkeys(("done", "skipped", "diverged", "failed"), 0)
    unusable: dict[str, str] = {}  # workdir of a run that failed or diverged -> "failed" | "diverged"

    def report(head: str, outcome: str, line: str, workdir: str | None = None) -> None:
        counts[outcome] += 1
        if workdir is not None:
            unusable[workdir] = outcome
        print(f"{head} {line}", flush=True)

    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {run.title()} ..."
        workdir = Path(run.workdir)
        bad = _diverged(workdir)
        if bad is not None:
            report(head, "diverged", f"skipped (diverged{_at_step(bad)})", run.workdir)
            continue
        if _read_summary(workdir / "summary.json") is not None:
            report(head, "skipped", "skipped (done)")
            continue
        if run.dense_workdir in unusable:
            report(head, "failed", f"failed (its dense run {unusable[run.dense_workdir]})", run.workdir)
            continue
        resumed, t0 = any(workdir.glob("**/checkpoints")), time.time()
        try:
            status, why = train(run.argv()), None
        except Exception as err:  # noqa: BLE001  (a crash in one run must not end the sweep)
            traceback.print_exc()
            status, why = 1, type(err).__name__
        if status == INTERRUPTED:
            print(f"{head} interrupted: rerun the same sweep to resume", flush=True)
            return INTERRUPTED
        bad = _diverged(workdir)
        if status == DIVERGED or bad is not None:
            report(head, "diverged", f"diverged{_at_step(bad)}", run.workdir)
        elif status != 0:
            report(head, "failed", f"failed ({why or f'exit {status}'})", run.workdir)
        else:
            reported = (_read_summary(workdir / "summary.json") or {}).get("reported")
            report(head, "done", f"done in {time.time() - t0:.0f} s{' (resumed)' if resumed else ''}"
                   + ("" if reported is None else f", reported {reported:.1f}"))
    print(f"sweep: {len(runs)} runs: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
          + f" in {time.time() - start:.0f} s", flush=True)
    return 1 if counts["failed"] or counts["diverged"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, then print the commands (``--dry_run``) or run the sweep; returns the exit status."""
    argv = arguments(argv, __doc__)
    if argv is None:
        return 0
    try:
        runs, dry_run = plan(argv)
    except (ValueError, TypeError) as err:  # SweepError, ConfigError, a bad gin value
        return fail(err)
    if dry_run:
        print("\n".join(run.command() for run in runs))
        return 0
    return execute(runs)
