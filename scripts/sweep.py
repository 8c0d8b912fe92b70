r"""Run a grid of smc_jax experiments (algorithms x sparsities x seeds x folds) one after another.

    python scripts/sweep.py --gin_file=gin/mawps_rigl.gin [--algorithms=rigl,gmp|all] \
        [--sparsities=paper|0.2,0.5] [--seeds=0,1,2] [--folds=all|0,1] [--gin.NAME=VALUE ...] \
        [--workdir=runs/NAME] [--dry_run]

Flags:
  --gin_file     one top-level file gin/<dataset>_<algorithm>.gin (datasets: mawps, asdiv, svamp, csqa,
                 winogrande, race). Another algorithm X runs from the sibling file gin/<dataset>_X.gin.
  --algorithms   comma list of dense, lth, omp_after, random_after, gmp, omp_before, random_before, snip,
                 rigl, snip_rigl, omp_rigl, or `all` (default: the gin file's own algorithm).
  --sparsities   `paper` (SMC-Bench's grid 0.2, 0.36, 0.488, 0.59, 0.672, 0.738, 0.791, 0.8325, 0.866,
                 0.893) or a comma list of values in [0, 1) (default: the gin file's SPARSITY). `dense` is
                 one run whatever the sparsities; `lth` is one run whose IMP rounds go up to the largest
                 sparsity (round_k/summary.json per round; report.py reads those).
  --seeds        comma list of integers (default: the gin file's SEED).
  --folds        `all` (folds 0..4 as separate runs) or a comma list (default: the gin file's FOLD;
                 FOLD='all' expands the same way). MAWPS and ASDiv-A only.
  --gin.NAME=VALUE, --gin_bindings=B
                 passed to every run (a --gin_bindings value with several lines as one flag per line).
                 SEED, FOLD and SPARSITY conflict with --seeds, --folds and --sparsities (alone, they set
                 the default); WORKDIR and DENSE_WORKDIR are the sweep's own (use --workdir).
  --workdir      the folder of the runs (default: runs/sweep_<dataset>). Each run writes to
                 <workdir>/<dataset>_<algorithm>[_s<sparsity>]_seed<seed>[_fold<k>] (dense: no _s).
  --dry_run      print one shell-quoted `python scripts/train.py ...` command per run, in run order, and
                 run nothing (paste them into a cluster or TPU VM queue).

Order and sharing: the dense runs come first, one per (seed, fold); the After algorithms (omp_after,
random_after, lth) start from it through --gin.DENSE_WORKDIR, so it is trained once (and is the `dense`
algorithm's run when dense is in the sweep). Then each algorithm, sparsity, seed and fold in turn.

Local runs call scripts/train.py's main() in this process (gin is cleared and re-parsed per run, so no
configuration leaks from one run to the next; compiled programs are shared through the persistent
compilation cache). A run whose workdir has a summary.json is skipped (lth: the top-level one, written
when every round is done); an interrupted run resumes from its last checkpoint. One progress line per run
(`[3/21] mawps rigl s=0.5 seed=0 fold=0 ... done in 62 s, reported 81.2`, `skipped (done)`,
`failed (exit 2)`); a failed run does not stop the sweep, but the exit status is 1 at the end. A bad flag
prints one line (`error: ...`) and exits with status 2. On a multi-host pod slice every host runs the same
sweep, so --workdir must be on storage all hosts see (only process 0 writes summary.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from smc_jax.sparsity import ALGORITHMS  # noqa: E402  (after the sys.path fix; imports jax only)

AFTER = ("omp_after", "random_after", "lth")  # start from the shared dense run


class SweepError(ValueError):
    """A bad sweep flag: printed as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One ``scripts/train.py`` invocation of the sweep."""

    dataset: str
    algorithm: str
    gin_file: str
    seed: int
    fold: int | None
    sparsity: float | None  # None: dense
    workdir: str
    dense_workdir: str | None = None
    extra: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """train.py's flags: the gin file, the extra bindings, then the run's coordinates (later wins)."""
        args = [f"--gin_file={self.gin_file}", *self.extra]
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
        sparsity = "" if self.sparsity is None else f" s={self.sparsity:g}"
        fold = "" if self.fold is None else f" fold={self.fold}"
        return f"{self.dataset} {self.algorithm}{sparsity} seed={self.seed}{fold}"

    def command(self) -> str:
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
    for name in ("algorithms", "sparsities", "seeds", "folds", "workdir"):
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
    """A one-line binding as a train.py flag again."""
    return f"--gin.{binding}" if re.match(r"[\w./]+=", binding) else f"--gin_bindings={binding}"


def _algorithms(text: str | None, own: str) -> list[str]:
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


def _folds(text: str | None, default, dataset: str, num_folds: int | None) -> list[int | None]:
    if num_folds is None:
        if text is not None:
            raise SweepError(f"--folds: {dataset} has no folds (cross-validation: mawps and asdiv only)")
        return [None]
    if text == "all" or (text is None and default == "all"):
        return list(range(num_folds))
    folds = _numbers("folds", text, int) if text is not None else [default]
    bad = [k for k in folds if not (isinstance(k, int) and 0 <= k < num_folds)]
    if bad:
        raise SweepError(f"fold {bad[0]!r} of {dataset} does not exist: folds are 0..{num_folds - 1} or all")
    return folds


def _find_gin(name: str) -> Path | None:
    for path in (Path(name), REPO / "gin" / name):
        if path.is_file():
            return path
    return None


# ----------------------------------------------------------------------------------------------- plan


def plan(argv: Sequence[str]) -> tuple[list[Run], bool]:
    """The runs of a sweep command line, in order, and whether it is a dry run."""
    from smc_jax.train import config, gin_utils

    files, bindings, rest = gin_utils.split_gin_args(argv)
    bindings = [line.strip() for b in bindings for line in b.splitlines()  # one per line: one command per line
                if line.strip() and not line.strip().startswith("#")]
    flags = _flags().parse_args(rest)
    if len(files) != 1:
        raise SweepError(f"give exactly one --gin_file (got {len(files)}), e.g. --gin_file=gin/mawps_rigl.gin")
    given = files[0]
    dataset, _, own = Path(given).stem.partition("_")
    if own not in ALGORITHMS:
        raise SweepError(f"--gin_file={given} is not a top-level file gin/<dataset>_<algorithm>.gin with an algorithm "
                         f"of: {', '.join(ALGORITHMS)}")
    found = _find_gin(given)
    if found is None:
        raise SweepError(f"gin file not found: {given}")
    named = {_binding_name(b) for b in bindings}
    for macro, flag in (("SEED", "seeds"), ("FOLD", "folds"), ("SPARSITY", "sparsities")):
        if macro in named and getattr(flags, flag) is not None:
            raise SweepError(f"--gin.{macro} conflicts with --{flag}: give one of them")
    for macro in ("WORKDIR", "DENSE_WORKDIR"):
        if macro in named:
            raise SweepError(f"--gin.{macro} conflicts with the sweep, which names every run's workdir; use --workdir")

    algorithms = _algorithms(flags.algorithms, own)
    needs_dense = "dense" in algorithms or any(a in AFTER for a in algorithms)
    files_of = {}
    for name in (["dense"] if needs_dense else []) + algorithms:
        sibling = found.with_name(f"{dataset}_{name}.gin")
        if not sibling.is_file():
            there = sorted(p.stem.partition("_")[2] for p in found.parent.glob(f"{dataset}_*.gin"))
            raise SweepError(f"no gin file {sibling.name} for algorithm {name} in {found.parent}; {dataset} has: "
                             f"{', '.join(there)}")
        files_of[name] = str(Path(given).with_name(sibling.name))

    config.register()
    for name in files_of:  # every file builds its experiment with the extra bindings (bad values: exit 2 now)
        gin_utils.parse_config([files_of[name]], bindings, search_paths=[REPO / "gin"])
        config.experiment()
    gin_utils.parse_config([given], bindings, search_paths=[REPO / "gin"])
    macros = gin_utils.defined_macros()
    num_folds = config.experiment().task.folds(dataset) if "FOLD" in macros else None

    sparsities = _sparsities(flags.sparsities, macros.get("SPARSITY", 0.5))
    seeds = _numbers("seeds", flags.seeds, int) if flags.seeds else [int(macros["SEED"])]
    folds = _folds(flags.folds, macros.get("FOLD"), dataset, num_folds)
    root = Path(flags.workdir or f"runs/sweep_{dataset}")
    coordinates = {"SEED", "FOLD", "SPARSITY"}  # read above into the grid; every run sets its own
    extra = tuple(_as_flag(b) for b in bindings if _binding_name(b) not in coordinates)

    def run(name: str, seed: int, fold: int | None, sparsity: float | None) -> Run:
        at = f"_seed{seed}" + ("" if fold is None else f"_fold{fold}")
        suffix = ("" if sparsity is None else f"_s{sparsity:g}") + at
        dense = str(root / f"{dataset}_dense{at}")
        return Run(dataset, name, files_of[name], seed, fold, sparsity, str(root / f"{dataset}_{name}{suffix}"),
                   dense if name in AFTER else None, extra)

    grid = [(seed, fold) for seed in seeds for fold in folds]
    runs = [run("dense", seed, fold, None) for seed, fold in grid] if needs_dense else []
    for name in algorithms:
        if name == "lth":
            runs += [run(name, seed, fold, max(sparsities)) for seed, fold in grid]
        elif name != "dense":
            runs += [run(name, seed, fold, s) for s in sparsities for seed, fold in grid]
    return runs, flags.dry_run


# ----------------------------------------------------------------------------------------------- run


def load_train_main() -> Callable[[list[str]], int]:
    """``scripts/train.py``'s ``main``; ``jax.distributed.initialize`` (a TPU VM, a SLURM job) is called by the
    first run only, since a process may call it once."""
    spec = importlib.util.spec_from_file_location("smc_jax_train_script", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    initialize, calls = module._initialize_distributed, []

    def initialize_once(flags: dict[str, str]) -> None:
        if not calls:
            initialize(flags)
            calls.append(flags)

    module._initialize_distributed = initialize_once
    return module.main


def execute(runs: Sequence[Run], train_main: Callable[[list[str]], int]) -> int:
    """Run (or skip) every run in order with one progress line each; 0 when none failed, else 1."""
    start, counts, failed_dirs = time.time(), {"done": 0, "skipped": 0, "failed": 0}, set()
    for i, run in enumerate(runs, 1):
        head = f"[{i}/{len(runs)}] {run.title()} ..."
        summary = Path(run.workdir) / "summary.json"
        if summary.is_file():
            counts["skipped"] += 1
            print(f"{head} skipped (done)", flush=True)
            continue
        if run.dense_workdir in failed_dirs:
            counts["failed"] += 1
            failed_dirs.add(run.workdir)
            print(f"{head} failed (its dense run failed)", flush=True)
            continue
        resumed, t0 = any(Path(run.workdir).glob("**/checkpoints")), time.time()
        try:
            status, why = train_main(run.argv()), None
        except Exception as err:  # noqa: BLE001  (a crash in one run must not end the sweep)
            traceback.print_exc()
            status, why = 1, type(err).__name__
        if status == 130:
            print(f"{head} interrupted: rerun the same sweep to resume", flush=True)
            return 130
        if status != 0:
            counts["failed"] += 1
            failed_dirs.add(run.workdir)
            print(f"{head} failed ({why or f'exit {status}'})", flush=True)
            continue
        counts["done"] += 1
        reported = json.loads(summary.read_text())["reported"] if summary.is_file() else None
        print(f"{head} done in {time.time() - t0:.0f} s{' (resumed)' if resumed else ''}"
              + ("" if reported is None else f", reported {reported:.1f}"), flush=True)
    print(f"sweep: {len(runs)} runs: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
          f"in {time.time() - start:.0f} s", flush=True)
    return 1 if counts["failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, then print the commands (``--dry_run``) or run the sweep; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        runs, dry_run = plan(argv)
    except (ValueError, TypeError) as err:  # SweepError, gin_utils.ConfigError, a bad gin value
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"error: {first}", file=sys.stderr)
        return 2
    if dry_run:
        print("\n".join(run.command() for run in runs))
        return 0
    return execute(runs, load_train_main())


if __name__ == "__main__":
    sys.exit(main())
