"""Tables and plots like SMC-Bench's figures, from the ``summary.json`` files of finished runs.

    python scripts/report.py runs/ [more_dirs ...] [--out report/] [--tolerance 0.01]
    python scripts/report.py --layers RUN_DIR [--out report/]

The first form gathers every ``summary.json`` under the given directories (``cv_summary.json`` is never
read, so cross-validation folds are not counted twice; of an LTH run only the ``round_k/summary.json`` files
count, not the top-level copy of the last round) and writes into ``--out``:

- ``runs.csv``: one row per summary: coordinates, target/scheduled/actual sparsity, ``sparsity_miss``,
  ``reported``, ``selection``, ``selected_step``, every entry of ``selected`` (as ``selected.<name>``) and of
  ``best`` (as ``best.<name>``), ``diverged`` and ``diverged_step``, wall time and the summary's path;
- ``report.md``: one markdown table per (task, model, pretrained, metric) for every metric a run lists in
  ``metrics``: rows are the algorithms in DESIGN.md's order with the paper's labels, columns the swept
  ``sparsity_label`` values. A cell is ``selected[metric]`` (the evaluation the task's selection picked;
  ``best[metric]`` for summaries written before ``selected`` existed) as mean ± sample standard deviation
  (ddof=1) over seeds, just the mean for one seed, blank where no run exists. Cross-validation folds of one
  (algorithm, sparsity, seed) are first micro-averaged with ``num_eval`` (SPEC §1.2). Dense has sparsity 0:
  its row repeats the dense value in every column, as the dashed line of the figures does; for runs that score
  their metric per direction (translation: ``selected['bleu/en-fr']`` …), a table per (task, model, pretrained)
  with a row per (algorithm, sparsity) and a column per direction, then the mean (the run's metric);
- ``<task>_<model>[_<pretrained>]_<metric>.png`` and ``.pdf``: the paper's figure: one line with markers per
  algorithm (±1 std shaded), dense as a dashed horizontal line, x ticks at the swept sparsities;
- ``<task>[_<pretrained>]_<metric>_models.png`` and ``.pdf`` where a task has runs of several models (GTS and
  Graph2Tree): those figures side by side in one, a panel per model on a shared y axis, as the paper's
  arithmetic figure.

A run that diverged (``"diverged": true`` in its summary; a seed diverged when any of its folds did) prints
``warning: <path> diverged at step N``, is flagged in the CSV, and is never averaged in: a cell whose every
seed diverged reads ``diverged`` (an ✗ at the top of the figure, no point), a cell where some did holds the
mean of the others and ``† (k of n diverged)``. A run whose ``actual_sparsity`` misses its
``target_sparsity`` by more than ``--tolerance`` prints a warning line and is flagged in the CSV and in
``report.md``.

``--layers RUN_DIR`` plots the per-leaf sparsity of one run (its ``summary.json``, else its
``cv_summary.json``) as horizontal bars, one per leaf in order, the target as a vertical line and leaves at
sparsity >= 0.99 highlighted, writes ``layers_<run>.png``/``.pdf`` and prints the collapsed leaves.

Errors (a directory that does not exist, no summaries found, a bad flag) print one line and exit with
status 2. The tables are built by :mod:`.report_tables`, the figures drawn by :mod:`.report_plots`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from smc_jax.cli import fail, warn
from smc_jax.cli.report_plots import (
    COLLAPSED,
    figure_stems,
    layers_figure,
    model_groups,
    models_stem,
    plot_figure,
    plot_models_figure,
    save_figure,
    slug,
)
from smc_jax.cli.report_tables import (
    LABELS,
    build_tables,
    direction_table_markdown,
    direction_tables,
    sort_key,
    table_markdown,
)

REQUIRED = ("task", "model", "algorithm", "seed", "sparsity_label", "target_sparsity", "actual_sparsity",
            "metrics", "best", "num_eval")  # present; values may be null in a diverged run's summary


class ReportError(Exception):
    """A user error: printed as one line, exit status 2."""


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
            warn(f"skipping {path}: not readable JSON ({err})")
            continue
        missing = [k for k in REQUIRED if k not in summary] if isinstance(summary, dict) else ["(an object)"]
        if missing:
            warn(f"skipping {path}: no {', '.join(missing)}")
            continue
        if _counts(path, summary):
            summaries.append({**summary, "path": str(path)})
    if not summaries:
        raise ReportError(f"no summary.json found under {', '.join(str(d) for d in dirs)}")
    return summaries


def misses_target(summary: dict, tolerance: float = 0.01) -> bool:
    """Whether ``actual_sparsity`` is more than ``tolerance`` away from ``target_sparsity``."""
    actual, target = summary.get("actual_sparsity"), summary.get("target_sparsity")
    if not (isinstance(actual, (int, float)) and isinstance(target, (int, float))):
        return False
    return abs(float(actual) - float(target)) > tolerance


def flag_runs(summaries: Sequence[dict], tolerance: float = 0.01) -> list[dict]:
    """The finished runs that miss their target sparsity; prints one warning line per run (stderr)."""
    flagged = [s for s in summaries if not s.get("diverged") and misses_target(s, tolerance)]
    for s in flagged:
        warn(f"{s['path']}: actual sparsity {s['actual_sparsity']:.4f} misses the target "
              f"{s['target_sparsity']:.4f} by more than {tolerance}")
    return flagged


def diverged_runs(summaries: Sequence[dict]) -> list[dict]:
    """The runs that diverged; prints ``warning: <path> diverged at step N`` per run (stderr)."""
    runs = [s for s in summaries if s.get("diverged")]
    for s in runs:
        warn(f"{s['path']} diverged at step {s.get('diverged_step')}")
    return runs


# --------------------------------------------------------------------------- tables


# --------------------------------------------------------------------------- outputs


def _keys(summaries: Sequence[dict], field: str) -> list[str]:
    keys: list[str] = []
    for s in summaries:
        keys += [k for k in (s.get(field) or {}) if k not in keys]
    return keys


def write_csv(summaries: Sequence[dict], path: Path, tolerance: float = 0.01) -> None:
    """One row per summary, sorted by coordinates; ``selected.<name>`` and ``best.<name>`` columns."""
    entries = {field: _keys(summaries, field) for field in ("selected", "best")}
    columns = ["task", "model", "pretrained", "algorithm", "label", "seed", "fold", "round", "target_sparsity",
               "sparsity_label", "scheduled_sparsity", "actual_sparsity", "sparsity_miss", "metric", "reported",
               "selection", "selected_step", *(f"selected.{k}" for k in entries["selected"]),
               *(f"best.{k}" for k in entries["best"]), "best_step", "diverged", "diverged_step", "num_eval", "steps",
               "epochs", "wall_time_s", "train_steps_per_s", "path"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for s in sorted(summaries, key=sort_key):
            row = {c: s.get(c) for c in columns}
            row["label"] = s.get("label") or LABELS.get(s["algorithm"], s["algorithm"])
            row["sparsity_miss"] = misses_target(s, tolerance)
            row["diverged"] = bool(s.get("diverged"))
            for field, keys in entries.items():
                row.update({f"{field}.{k}": (s.get(field) or {}).get(k) for k in keys})
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def write_report(dirs: Sequence[str | Path], out: str | Path, tolerance: float = 0.01) -> dict[str, Any]:
    """Everything of the first CLI form; returns ``{"summaries", "tables", "flagged", "diverged", "files"}``."""
    summaries = load_summaries(dirs)
    flagged, diverged = flag_runs(summaries, tolerance), diverged_runs(summaries)
    tables = build_tables(summaries)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "runs.csv"]
    write_csv(summaries, files[0], tolerance)
    md = ["# SMC-Bench report", "",
          f"{len(summaries)} runs from {', '.join(str(d) for d in dirs)}. Cells: selected[metric] mean ± sample std "
          "(ddof=1) over seeds (the mean alone for one seed); cross-validation folds micro-averaged with "
          "num_eval first; Dense (sparsity 0) repeated in every column; blank = no run; `diverged` = every seed "
          "diverged, † = the mean of the seeds that did not.", ""]
    for table, stem in zip(tables, figure_stems(tables)):
        files += save_figure(plot_figure(table), out / stem)
        md += [table_markdown(table), f"![{table.title}]({stem}.png)", ""]
    groups = model_groups(tables)
    if groups:
        md += ["## Models side by side", ""]
    for group in groups:
        stem = models_stem(group)
        files += save_figure(plot_models_figure(group), out / stem)
        md += [f"![{group[0].task_name} / {' vs '.join(t.model for t in group)} / {group[0].metric}]({stem}.png)", ""]
    per_direction = direction_tables(summaries)
    if per_direction:
        md += ["## Per direction", ""]
    for table in per_direction:
        md += [direction_table_markdown(table), ""]
    if flagged:
        md += [f"## Runs whose actual sparsity misses the target by more than {tolerance}", ""]
        md += [f"- `{s['path']}`: target {s['target_sparsity']:.4f}, actual {s['actual_sparsity']:.4f}"
               for s in sorted(flagged, key=sort_key)]
        md.append("")
    if diverged:
        md += ["## Runs that diverged", ""]
        md += [f"- `{s['path']}`: at step {s.get('diverged_step')}" for s in sorted(diverged, key=sort_key)]
        md.append("")
    (out / "report.md").write_text("\n".join(md))
    files.append(out / "report.md")
    return {"summaries": summaries, "tables": tables, "flagged": flagged, "diverged": diverged, "files": files}


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
    return slug(name)


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
                  f"{len(result['flagged'])} flagged, {len(result['diverged'])} diverged")
    except ReportError as err:
        return fail(err)
    for path in result["files"]:
        print(f"wrote {path}")
    return 0
