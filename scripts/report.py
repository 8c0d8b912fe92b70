"""Tables and plots like SMC-Bench's figures, from the ``summary.json`` files of finished runs.

    python scripts/report.py runs/ [more_dirs ...] [--out report/] [--tolerance 0.01]
    python scripts/report.py --layers RUN_DIR [--out report/]

The first form gathers every ``summary.json`` under the given directories (``cv_summary.json`` is never
read, so cross-validation folds are not counted twice; of an LTH run only the ``round_k/summary.json`` files
count, not the top-level copy of the last round) and writes into ``--out``:

- ``runs.csv``: one row per summary: coordinates, target/scheduled/actual sparsity, ``sparsity_miss``,
  ``reported``, every entry of ``best`` (as ``best.<name>``), wall time and the summary's path;
- ``report.md``: one markdown table per (task, model, pretrained, metric) for every metric a run lists in
  ``metrics``: rows are the algorithms in DESIGN.md's order with the paper's labels, columns the swept
  ``sparsity_label`` values. A cell is ``best[metric]`` as mean ± sample standard deviation (ddof=1) over
  seeds, just the mean for one seed, blank where no run exists. Cross-validation folds of one (algorithm,
  sparsity, seed) are first micro-averaged with ``num_eval`` (SPEC §1.2). Dense has sparsity 0: its row
  repeats the dense value in every column, as the dashed line of the figures does;
- ``<task>_<model>[_<pretrained>]_<metric>.png`` and ``.pdf``: the paper's figure: one line with markers per
  algorithm (±1 std shaded), dense as a dashed horizontal line, x ticks at the swept sparsities.

A run whose ``actual_sparsity`` misses its ``target_sparsity`` by more than ``--tolerance`` prints a
warning line and is flagged in the CSV and in ``report.md``.

``--layers RUN_DIR`` plots the per-leaf sparsity of one run (its ``summary.json``, else its
``cv_summary.json``) as horizontal bars, one per leaf in order, the target as a vertical line and leaves at
sparsity >= 0.99 highlighted, writes ``layers_<run>.png``/``.pdf`` and prints the collapsed leaves.

Errors (a directory that does not exist, no summaries found, a bad flag) print one line and exit with
status 2.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from smc_jax.sparsity import ALGORITHMS  # noqa: E402

ORDER: tuple[str, ...] = tuple(ALGORITHMS)  # DESIGN.md's order, dense first
LABELS: dict[str, str] = {name: algorithm.label for name, algorithm in ALGORITHMS.items()}
REQUIRED = ("task", "model", "algorithm", "seed", "sparsity_label", "target_sparsity", "actual_sparsity",
            "metrics", "best", "num_eval")
COLLAPSED = 0.99  # a leaf at or above this sparsity counts as collapsed in --layers
_COLOURS = [c if i != 7 else "indigo" for i, c in enumerate(matplotlib.colormaps["tab10"].colors)]  # no grey
_STYLE = dict(zip(ORDER[1:], zip(_COLOURS, "osD^v<>ph*")))  # algorithm -> (colour, marker)


class ReportError(Exception):
    """A user error: printed as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One table cell: the mean and sample std (None for one seed) over ``n`` seeds."""

    mean: float
    std: float | None
    n: int


@dataclasses.dataclass
class Table:
    """The results of one (task, model, pretrained, metric): ``cells[algorithm][sparsity_label]``."""

    task: str
    model: str
    pretrained: str | None
    metric: str
    sparsities: list[float]
    algorithms: list[str]  # rows, DESIGN order, dense first
    cells: dict[str, dict[float, Cell]]
    dense: Cell | None

    @property
    def title(self) -> str:
        """``mawps / gts / value_accuracy`` (with ``pretrained`` when there is one)."""
        model = self.model if self.pretrained is None else f"{self.model} ({_short(self.pretrained)})"
        return f"{self.task} / {model} / {self.metric}"

    def value(self, algorithm: str, sparsity: float) -> Cell | None:
        """The cell of a row and a column; dense's value in every column; None when no run exists."""
        if algorithm == "dense":
            return self.dense
        return self.cells.get(algorithm, {}).get(sparsity)


# --------------------------------------------------------------------------- gathering


def find_summaries(dirs: Iterable[str | Path]) -> list[Path]:
    """Every ``summary.json`` under ``dirs`` (sorted, deduplicated; ``checkpoints/`` is not searched)."""
    found: dict[Path, Path] = {}
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise ReportError(f"no such directory: {root}")
        for here, subdirs, files in os.walk(root):
            subdirs[:] = sorted(s for s in subdirs if s != "checkpoints")
            if "summary.json" in files:
                path = Path(here) / "summary.json"
                found.setdefault(path.resolve(), path)
    return sorted(found.values())


def _counts(path: Path, summary: dict) -> bool:
    """LTH: only ``round_k/summary.json`` counts (the top-level file copies the last round)."""
    return summary.get("algorithm") != "lth" or re.fullmatch(r"round_\d+", path.parent.name) is not None


def load_summaries(dirs: Iterable[str | Path]) -> list[dict]:
    """The summaries under ``dirs`` that count, each with its ``path`` added; warns about unreadable ones.
    ``ReportError`` when there are none."""
    dirs = list(dirs)
    summaries = []
    for path in find_summaries(dirs):
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            _warn(f"skipping {path}: not readable JSON ({err})")
            continue
        missing = [k for k in REQUIRED if k not in summary] if isinstance(summary, dict) else ["(an object)"]
        if missing:
            _warn(f"skipping {path}: no {', '.join(missing)}")
            continue
        if _counts(path, summary):
            summaries.append({**summary, "path": str(path)})
    if not summaries:
        raise ReportError(f"no summary.json found under {', '.join(str(d) for d in dirs)}")
    return summaries


def misses_target(summary: dict, tolerance: float = 0.01) -> bool:
    """Whether ``actual_sparsity`` is more than ``tolerance`` away from ``target_sparsity``."""
    return abs(float(summary["actual_sparsity"]) - float(summary["target_sparsity"])) > tolerance


def flag_runs(summaries: Sequence[dict], tolerance: float = 0.01) -> list[dict]:
    """The runs that miss their target sparsity; prints one warning line per run (stderr)."""
    flagged = [s for s in summaries if misses_target(s, tolerance)]
    for s in flagged:
        _warn(f"{s['path']}: actual sparsity {s['actual_sparsity']:.4f} misses the target "
              f"{s['target_sparsity']:.4f} by more than {tolerance}")
    return flagged


# --------------------------------------------------------------------------- tables


def _rank(algorithm: str) -> int:
    return ORDER.index(algorithm) if algorithm in ORDER else len(ORDER)


def _sort_key(s: dict) -> tuple:
    return (s["task"], s["model"], str(s.get("pretrained")), _rank(s["algorithm"]), s["algorithm"],
            float(s["sparsity_label"]), str(s["seed"]), str(s.get("fold")), s.get("path", ""))


def micro_average(folds: Sequence[dict], metric: str) -> float | None:
    """Σ best[metric]·num_eval / Σ num_eval over the folds that have the metric (SPEC §1.2); None if none."""
    have = [f for f in folds if isinstance(f["best"].get(metric), (int, float))]
    if not have:
        return None
    weight = sum(f["num_eval"] for f in have)
    if weight <= 0:
        return statistics.fmean(f["best"][metric] for f in have)
    return sum(f["best"][metric] * f["num_eval"] for f in have) / weight


def _cell(values: list[float]) -> Cell | None:
    if not values:
        return None
    return Cell(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


def _seed_groups(summaries: Iterable[dict]) -> dict[tuple, list[dict]]:
    """(task, model, pretrained, algorithm, sparsity_label, seed) -> its fold summaries (one per fold;
    duplicates of one fold warn and keep the first path)."""
    groups: dict[tuple, dict[Any, dict]] = defaultdict(dict)
    for s in sorted(summaries, key=_sort_key):
        key = (s["task"], s["model"], s.get("pretrained"), s["algorithm"], float(s["sparsity_label"]), s["seed"])
        fold = s.get("fold")
        if fold in groups[key]:
            _warn(f"duplicate run {s['path']} (same coordinates as {groups[key][fold]['path']}); ignoring it")
            continue
        groups[key][fold] = s
    return {k: list(v.values()) for k, v in groups.items()}


def build_tables(summaries: Sequence[dict]) -> list[Table]:
    """One ``Table`` per (task, model, pretrained, metric in ``metrics``), in sorted order."""
    groups = _seed_groups(summaries)
    by_setting: dict[tuple, dict[tuple, list[dict]]] = defaultdict(dict)
    for key, folds in groups.items():
        by_setting[key[:3]][key[3:]] = folds
    tables = []
    for (task, model, pretrained), runs in sorted(by_setting.items(), key=lambda kv: tuple(map(str, kv[0]))):
        _check_folds(task, model, runs)
        metrics: list[str] = []
        for folds in runs.values():
            for f in folds:
                metrics += [m for m in f["metrics"] if m not in metrics]
        algorithms = sorted({a for a, _, _ in runs} | {"dense"}, key=lambda a: (_rank(a), a))
        sparsities = sorted({sp for a, sp, _ in runs if a != "dense"}) or [0.0]
        for metric in metrics:
            per_cell: dict[tuple[str, float], list[float]] = defaultdict(list)
            for (algorithm, sparsity, _seed), folds in runs.items():
                value = micro_average(folds, metric)
                if value is not None:
                    per_cell[algorithm, sparsity].append(value)
            cells: dict[str, dict[float, Cell]] = defaultdict(dict)
            for (algorithm, sparsity), values in per_cell.items():
                if algorithm != "dense":
                    cells[algorithm][sparsity] = _cell(values)  # type: ignore[assignment]
            dense = _cell([v for (a, _), vs in per_cell.items() if a == "dense" for v in vs])
            tables.append(Table(task, model, pretrained, metric, sparsities, algorithms, dict(cells), dense))
    return tables


def _check_folds(task: str, model: str, runs: dict[tuple, list[dict]]) -> None:
    """Warn about (algorithm, sparsity, seed) groups with fewer CV folds than their setting's other runs."""
    all_folds = {f.get("fold") for folds in runs.values() for f in folds} - {None}
    for (algorithm, sparsity, seed), folds in runs.items():
        have = {f.get("fold") for f in folds}
        if all_folds and have != all_folds:
            _warn(f"{task}/{model} {algorithm} sparsity {sparsity:g} seed {seed}: folds {sorted(have, key=str)} "
                  f"of {sorted(all_folds, key=str)}; micro-averaged over those present")


def _digits(table: Table) -> int:
    values = [c.mean for row in table.cells.values() for c in row.values()] + ([table.dense.mean] if table.dense else [])
    return 2 if any(abs(v) > 1.5 for v in values) else 4


def format_cell(cell: Cell | None, digits: int = 2) -> str:
    """``81.25 ± 1.20``; ``81.25`` for one seed; ``""`` for a missing run."""
    if cell is None:
        return ""
    if cell.std is None:
        return f"{cell.mean:.{digits}f}"
    return f"{cell.mean:.{digits}f} ± {cell.std:.{digits}f}"


def table_markdown(table: Table) -> str:
    """The table as markdown: a heading, then rows = algorithms (paper labels), columns = sparsities."""
    digits = _digits(table)
    lines = [f"### {table.title}", ""]
    if table.pretrained is not None:
        lines += [f"pretrained: `{table.pretrained}`", ""]
    lines.append("| Algorithm | " + " | ".join(f"{s:g}" for s in table.sparsities) + " |")
    lines.append("|---|" + "---:|" * len(table.sparsities))
    for algorithm in table.algorithms:
        cells = [format_cell(table.value(algorithm, s), digits) for s in table.sparsities]
        lines.append(f"| {LABELS.get(algorithm, algorithm)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- figures


def _short(pretrained: str) -> str:
    """The last two path components of a hub id or a local checkpoint directory."""
    return "/".join(Path(str(pretrained).rstrip("/")).parts[-2:])


def plot_figure(table: Table) -> Figure:
    """The paper-style figure of one table: a line with markers per algorithm, dense as a dashed line."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    for algorithm in table.algorithms:
        if algorithm == "dense":
            continue
        row = [table.value(algorithm, s) for s in table.sparsities]
        if all(c is None for c in row):
            continue
        means = [math.nan if c is None else c.mean for c in row]
        colour, marker = _STYLE.get(algorithm, ("grey", "x"))
        ax.plot(table.sparsities, means, marker=marker, color=colour, linewidth=1.6, markersize=5,
                label=LABELS.get(algorithm, algorithm))
        if any(c is not None and c.std is not None for c in row):
            low = [math.nan if c is None else c.mean - (c.std or 0.0) for c in row]
            high = [math.nan if c is None else c.mean + (c.std or 0.0) for c in row]
            ax.fill_between(table.sparsities, low, high, color=colour, alpha=0.12, linewidth=0)
    if table.dense is not None:
        ax.axhline(table.dense.mean, color="black", linestyle="--", linewidth=1.4, label="Dense")
        if table.dense.std is not None:
            ax.axhspan(table.dense.mean - table.dense.std, table.dense.mean + table.dense.std,
                       color="black", alpha=0.06, linewidth=0)
    ax.set_xticks(table.sparsities)
    ax.set_xticklabels([f"{s:g}" for s in table.sparsities], rotation=45 if len(table.sparsities) > 6 else 0)
    if len(table.sparsities) == 1:
        ax.set_xlim(table.sparsities[0] - 0.05, table.sparsities[0] + 0.05)
    ax.set_xlabel("Sparsity")
    ax.set_ylabel(table.metric)
    ax.set_title(table.title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def layers_figure(summary: dict) -> Figure:
    """Per-leaf sparsity of one run as horizontal bars (first leaf on top), the target as a vertical line,
    leaves at sparsity >= 0.99 in red."""
    leaves = list(summary["per_leaf_sparsity"].items())
    fig = Figure(figsize=(8.0, 1.6 + 0.22 * max(len(leaves), 1)))
    ax = fig.add_subplot()
    ys = range(len(leaves))
    ax.barh(list(ys), [v for _, v in leaves], color=["tab:red" if v >= COLLAPSED else "tab:blue" for _, v in leaves])
    ax.set_yticks(list(ys))
    ax.set_yticklabels([name for name, _ in leaves], fontsize=7)
    ax.invert_yaxis()
    target = float(summary.get("target_sparsity", 0.0))
    ax.axvline(target, color="black", linestyle="--", linewidth=1.2, label=f"target {target:g}")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("Sparsity of the leaf")
    ax.set_title(f"{summary.get('task')} / {summary.get('model')} / {summary.get('label', summary.get('algorithm'))}"
                 f": actual {float(summary.get('actual_sparsity', math.nan)):.4f}", fontsize=9)
    handles = ax.get_legend_handles_labels()[0]
    if any(v >= COLLAPSED for _, v in leaves):
        handles.append(Patch(color="tab:red", label=f"collapsed (>= {COLLAPSED})"))
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, stem: Path, dpi: int = 150) -> list[Path]:
    """``stem.png`` and ``stem.pdf``."""
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def figure_stems(tables: Sequence[Table]) -> list[str]:
    """File stems ``task_model[_pretrained]_metric``, unique (a hash is added where short names collide)."""
    stems = []
    for t in tables:
        parts = [t.task, t.model] + ([_short(t.pretrained)] if t.pretrained is not None else []) + [t.metric]
        stems.append(_slug("_".join(parts)))
    seen: dict[str, set] = defaultdict(set)
    for stem, t in zip(stems, tables):
        seen[stem].add(t.pretrained)
    return [stem if len(seen[stem]) == 1 else
            f"{stem}-{hashlib.sha1(str(t.pretrained).encode()).hexdigest()[:6]}" for stem, t in zip(stems, tables)]


# --------------------------------------------------------------------------- outputs


def write_csv(summaries: Sequence[dict], path: Path, tolerance: float = 0.01) -> None:
    """One row per summary, sorted by coordinates; ``best.<name>`` columns for every entry of ``best``."""
    best_keys: list[str] = []
    for s in summaries:
        best_keys += [k for k in s["best"] if k not in best_keys]
    columns = ["task", "model", "pretrained", "algorithm", "label", "seed", "fold", "round", "target_sparsity",
               "sparsity_label", "scheduled_sparsity", "actual_sparsity", "sparsity_miss", "metric", "reported",
               *(f"best.{k}" for k in best_keys), "best_step", "num_eval", "steps", "epochs", "wall_time_s",
               "train_steps_per_s", "path"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for s in sorted(summaries, key=_sort_key):
            row = {c: s.get(c) for c in columns}
            row["label"] = s.get("label") or LABELS.get(s["algorithm"], s["algorithm"])
            row["sparsity_miss"] = misses_target(s, tolerance)
            row.update({f"best.{k}": s["best"].get(k) for k in best_keys})
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def write_report(dirs: Sequence[str | Path], out: str | Path, tolerance: float = 0.01) -> dict[str, Any]:
    """Everything of the first CLI form; returns ``{"summaries", "tables", "flagged", "files"}``."""
    summaries = load_summaries(dirs)
    flagged = flag_runs(summaries, tolerance)
    tables = build_tables(summaries)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "runs.csv"]
    write_csv(summaries, files[0], tolerance)
    md = ["# SMC-Bench report", "",
          f"{len(summaries)} runs from {', '.join(str(d) for d in dirs)}. Cells: best[metric] mean ± sample std "
          "(ddof=1) over seeds (the mean alone for one seed); cross-validation folds micro-averaged with "
          "num_eval first; Dense (sparsity 0) repeated in every column; blank = no run.", ""]
    for table, stem in zip(tables, figure_stems(tables)):
        fig = plot_figure(table)
        files += save_figure(fig, out / stem)
        md += [table_markdown(table), f"![{table.title}]({stem}.png)", ""]
    if flagged:
        md += [f"## Runs whose actual sparsity misses the target by more than {tolerance}", ""]
        md += [f"- `{s['path']}`: target {s['target_sparsity']:.4f}, actual {s['actual_sparsity']:.4f}"
               for s in sorted(flagged, key=_sort_key)]
        md.append("")
    (out / "report.md").write_text("\n".join(md))
    files.append(out / "report.md")
    return {"summaries": summaries, "tables": tables, "flagged": flagged, "files": files}


def read_run(run_dir: str | Path) -> dict:
    """The summary of one run directory (``summary.json``, else ``cv_summary.json``), or of a summary file."""
    path = Path(run_dir)
    if path.is_file():
        candidates = [path]
    elif path.is_dir():
        candidates = [path / "summary.json", path / "cv_summary.json"]
    else:
        raise ReportError(f"no such directory: {path}")
    for candidate in candidates:
        if candidate.is_file():
            try:
                summary = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ReportError(f"{candidate}: not readable JSON ({err})") from None
            if not isinstance(summary, dict) or not isinstance(summary.get("per_leaf_sparsity"), dict):
                raise ReportError(f"{candidate} has no per_leaf_sparsity")
            return {**summary, "path": str(candidate)}
    raise ReportError(f"no summary.json (or cv_summary.json) in {path}")


def _run_name(summary_path: Path) -> str:
    """``mawps_lth_..._round_3`` for ``.../mawps_lth_.../round_3/summary.json``."""
    d = summary_path.resolve().parent
    name = d.name
    while re.fullmatch(r"(round|fold)_\d+", d.name) and d.parent != d:
        d = d.parent
        name = f"{d.name}_{name}"
    return _slug(name)


def write_layers(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """``--layers``: the bar plot of one run and its collapsed leaves; returns ``{"summary", "collapsed", "files"}``."""
    summary = read_run(run_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = save_figure(layers_figure(summary), out / f"layers_{_run_name(Path(summary['path']))}", dpi=100)
    leaves = summary["per_leaf_sparsity"]
    collapsed = [(k, v) for k, v in leaves.items() if v >= COLLAPSED]
    print(f"{summary['path']}: {len(leaves)} leaves, target {float(summary.get('target_sparsity', 0)):.4f}, "
          f"actual {float(summary.get('actual_sparsity', math.nan)):.4f}")
    print(f"collapsed leaves (sparsity >= {COLLAPSED}): {len(collapsed)} of {len(leaves)}")
    for name, value in collapsed:
        print(f"  {name}  {value:.4f}")
    return {"summary": summary, "collapsed": collapsed, "files": files}


# --------------------------------------------------------------------------- CLI


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="report.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="*", metavar="DIR", help="directories searched for summary.json files")
    p.add_argument("--out", default="report", help="output directory (default: report/)")
    p.add_argument("--layers", metavar="RUN_DIR", help="plot the per-leaf sparsity of one run instead")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="flag runs whose actual sparsity misses the target by more than this (default 0.01)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or a bad flag (2, one line already printed)
        return int(done.code or 0)
    try:
        if args.layers is not None:
            if args.dirs:
                raise ReportError("--layers takes one RUN_DIR and no other directories")
            result = write_layers(args.layers, args.out)
        else:
            if not args.dirs:
                raise ReportError("give at least one directory of runs (e.g. runs/) or --layers RUN_DIR")
            result = write_report(args.dirs, args.out, args.tolerance)
            print(f"{len(result['summaries'])} runs, {len(result['tables'])} tables, "
                  f"{len(result['flagged'])} flagged")
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in result["files"]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
