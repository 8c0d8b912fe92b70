"""Summaries to tables: the cells of one (task, model, pretrained, metric) over algorithms and sparsities,
seeds averaged, cross-validation folds micro-averaged, diverged seeds counted apart; and the tables as
markdown."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from smc_jax.cli import warn
from smc_jax.sparsity import ALGORITHMS

ORDER: tuple[str, ...] = tuple(ALGORITHMS)  # DESIGN.md's order, dense first
LABELS: dict[str, str] = {name: algorithm.label for name, algorithm in ALGORITHMS.items()}


def short_name(pretrained: str) -> str:
    """The last two path components of a hub id or a local checkpoint directory."""
    return "/".join(Path(str(pretrained).rstrip("/")).parts[-2:])


@dataclasses.dataclass(frozen=True)
class Cell:
    """One table cell: the mean and sample std (None for one seed) over the ``n`` seeds that finished, and
    how many seeds ``diverged`` (left out; ``mean`` is None when every seed diverged)."""

    mean: float | None
    std: float | None
    n: int
    diverged: int = 0


@dataclasses.dataclass
class Table:
    """The results of one (task, model, pretrained, metric): ``cells[algorithm][sparsity_label]``."""

    task_name: str
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
        model = self.model if self.pretrained is None else f"{self.model} ({short_name(self.pretrained)})"
        return f"{self.task_name} / {model} / {self.metric}"

    def value(self, algorithm: str, sparsity: float) -> Cell | None:
        """The cell of a row and a column; dense's value in every column; None when no run exists."""
        if algorithm == "dense":
            return self.dense
        return self.cells.get(algorithm, {}).get(sparsity)


def metric_value(summary: dict, metric: str) -> float | None:
    """``selected[metric]`` (``best[metric]`` for a summary without ``selected``); None if absent or not finite."""
    source = summary.get("selected") if "selected" in summary else summary.get("best")
    value = (source or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def rank(algorithm: str) -> int:
    """The row of an algorithm: DESIGN.md's order, unknown names last."""
    return ORDER.index(algorithm) if algorithm in ORDER else len(ORDER)


def sort_key(s: dict) -> tuple:
    """Summaries sorted by task, model, pretrained, algorithm (row order), sparsity, seed, fold, path."""
    return (s["task"], s["model"], str(s.get("pretrained")), rank(s["algorithm"]), s["algorithm"],
            float(s["sparsity_label"]), str(s["seed"]), str(s.get("fold")), s.get("path", ""))


def micro_average(folds: Sequence[dict], metric: str) -> float | None:
    """Σ value·num_eval / Σ num_eval of :func:`metric_value` over the folds that have it (SPEC §1.2); None if
    none has it."""
    have = [(v, f["num_eval"]) for f in folds if (v := metric_value(f, metric)) is not None]
    if not have:
        return None
    weight = sum(n for _, n in have)
    if weight <= 0:
        return statistics.fmean(v for v, _ in have)
    return sum(v * n for v, n in have) / weight


def _cell(values: list[float], diverged: int = 0) -> Cell | None:
    if not values:
        return Cell(None, None, 0, diverged) if diverged else None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Cell(statistics.fmean(values), std, len(values), diverged)


def _seed_groups(summaries: Iterable[dict], quiet: bool = False) -> dict[tuple, list[dict]]:
    """(task, model, pretrained, algorithm, sparsity_label, seed) -> its fold summaries (one per fold;
    duplicates of one fold keep the first path, and warn unless ``quiet``)."""
    groups: dict[tuple, dict[Any, dict]] = defaultdict(dict)
    for s in sorted(summaries, key=sort_key):
        key = (s["task"], s["model"], s.get("pretrained"), s["algorithm"], float(s["sparsity_label"]), s["seed"])
        fold = s.get("fold")
        if fold in groups[key]:
            if not quiet:
                warn(f"duplicate run {s['path']} (same coordinates as {groups[key][fold]['path']}); ignoring it")
            continue
        groups[key][fold] = s
    return {k: list(v.values()) for k, v in groups.items()}


def _settings(summaries: Iterable[dict], quiet: bool = False) -> list[tuple[tuple, dict[tuple, list[dict]]]]:
    """``[((task, model, pretrained), {(algorithm, sparsity, seed): fold summaries})]``, sorted (``quiet``: as
    :func:`_seed_groups`)."""
    by_setting: dict[tuple, dict[tuple, list[dict]]] = defaultdict(dict)
    for key, folds in _seed_groups(summaries, quiet).items():
        by_setting[key[:3]][key[3:]] = folds
    return sorted(by_setting.items(), key=lambda kv: tuple(map(str, kv[0])))


def build_tables(summaries: Sequence[dict]) -> list[Table]:
    """One ``Table`` per (task, model, pretrained, metric in ``metrics``), in sorted order. A seed any of
    whose folds diverged counts as diverged in its cell, never as a value."""
    tables = []
    for (task, model, pretrained), runs in _settings(summaries):
        _check_folds(task, model, runs)
        metrics: list[str] = []
        for folds in runs.values():
            for f in folds:
                metrics += [m for m in f["metrics"] if m not in metrics]
        algorithms = sorted({a for a, _, _ in runs} | {"dense"}, key=lambda a: (rank(a), a))
        sparsities = sorted({sp for a, sp, _ in runs if a != "dense"}) or [0.0]
        lost = Counter((a, sp) for (a, sp, _), folds in runs.items() if any(f.get("diverged") for f in folds))
        for metric in metrics:
            per_cell: dict[tuple[str, float], list[float]] = defaultdict(list)
            for (algorithm, sparsity, _seed), folds in runs.items():
                value = micro_average(folds, metric)
                if value is not None and not any(f.get("diverged") for f in folds):
                    per_cell[algorithm, sparsity].append(value)
            cells: dict[str, dict[float, Cell]] = defaultdict(dict)
            for algorithm, sparsity in set(per_cell) | set(lost):
                if algorithm != "dense":
                    cells[algorithm][sparsity] = _cell(per_cell[algorithm, sparsity], lost[algorithm, sparsity])
            dense = _cell([v for (a, _), vs in per_cell.items() if a == "dense" for v in vs],
                          sum(n for (a, _), n in lost.items() if a == "dense"))
            tables.append(Table(task, model, pretrained, metric, sparsities, algorithms, dict(cells), dense))
    return tables


def _check_folds(task_name: str, model: str, runs: dict[tuple, list[dict]]) -> None:
    """Warn about (algorithm, sparsity, seed) groups with fewer CV folds than their setting's other runs."""
    all_folds = {f.get("fold") for folds in runs.values() for f in folds} - {None}
    for (algorithm, sparsity, seed), folds in runs.items():
        have = {f.get("fold") for f in folds}
        if all_folds and have != all_folds:
            warn(f"{task_name}/{model} {algorithm} sparsity {sparsity:g} seed {seed}: folds {sorted(have, key=str)} "
                 f"of {sorted(all_folds, key=str)}; micro-averaged over those present")


def _digits(table: Table) -> int:
    cells = [c for row in table.cells.values() for c in row.values()] + [table.dense]
    return 2 if any(c is not None and c.mean is not None and abs(c.mean) > 1.5 for c in cells) else 4


def format_cell(cell: Cell | None, digits: int = 2) -> str:
    """``81.25 ± 1.20``; ``81.25`` for one seed; ``""`` for a missing run; ``diverged`` when every seed
    diverged; ``† (k of n diverged)`` after the mean of the others when some did."""
    if cell is None:
        return ""
    if cell.mean is None:
        return "diverged"
    text = f"{cell.mean:.{digits}f}" + ("" if cell.std is None else f" ± {cell.std:.{digits}f}")
    return text + (f" † ({cell.diverged} of {cell.n + cell.diverged} diverged)" if cell.diverged else "")


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


@dataclasses.dataclass
class DirectionTable:
    """Per-direction scores of one (task, model, pretrained): ``cells[(algorithm, sparsity)][direction]`` of
    ``selected['<metric>/<direction>']`` (translation's ``bleu/en-fr``, …), seeds averaged; ``means`` the run's
    own ``metric`` (the mean over its directions)."""

    task_name: str
    model: str
    pretrained: str | None
    metric: str
    directions: list[str]
    rows: list[tuple[str, float]]  # (algorithm, sparsity), dense first
    cells: dict[tuple[str, float], dict[str, Cell | None]]
    means: dict[tuple[str, float], Cell | None]


def _directions(runs: dict[tuple, list[dict]], metric: str) -> list[str]:
    """The ``<direction>`` of every ``selected['<metric>/<direction>']`` key, in first-seen order."""
    found: list[str] = []
    for folds in runs.values():
        for f in folds:
            for key in f.get("selected") or {}:
                head, _, tail = key.partition("/")
                if head == metric and tail and "/" not in tail and tail not in found:
                    found.append(tail)
    return found


def direction_tables(summaries: Sequence[dict]) -> list[DirectionTable]:
    """One :class:`DirectionTable` per (task, model, pretrained) whose summaries score their ``metric`` per
    direction (keys ``<metric>/<direction>`` in ``selected``); settings without such keys have none. Diverged
    seeds are left out; duplicate runs are skipped without a warning (:func:`build_tables` gives it)."""
    tables = []
    for (task, model, pretrained), runs in _settings(summaries, quiet=True):
        metric = next(f["metric"] for folds in runs.values() for f in folds)
        directions = _directions(runs, metric)
        if not directions:
            continue
        values: dict[tuple[str, float], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for (algorithm, sparsity, _seed), folds in runs.items():
            if any(f.get("diverged") for f in folds):
                continue
            for name in [*directions, metric]:
                value = micro_average(folds, metric if name == metric else f"{metric}/{name}")
                if value is not None:
                    values[algorithm, sparsity][name].append(value)
        rows = sorted(values, key=lambda r: (rank(r[0]), r[0], r[1]))
        cells = {r: {d: _cell(values[r][d]) for d in directions} for r in rows}
        means = {r: _cell(values[r][metric]) for r in rows}
        tables.append(DirectionTable(task, model, pretrained, metric, directions, rows, cells, means))
    return tables


def direction_table_markdown(table: DirectionTable) -> str:
    """The per-direction table as markdown: rows = (algorithm, sparsity), columns = directions, then the mean."""
    model = table.model if table.pretrained is None else f"{table.model} ({short_name(table.pretrained)})"
    lines = [f"### {table.task_name} / {model} / {table.metric} per direction", "",
             "| Algorithm | Sparsity | " + " | ".join(table.directions) + f" | {table.metric} (mean) |",
             "|---|---:|" + "---:|" * (len(table.directions) + 1)]
    for algorithm, sparsity in table.rows:
        cells = [format_cell(table.cells[algorithm, sparsity][d]) for d in table.directions]
        lines.append(f"| {LABELS.get(algorithm, algorithm)} | {sparsity:g} | " + " | ".join(cells)
                     + f" | {format_cell(table.means[algorithm, sparsity])} |")
    return "\n".join(lines) + "\n"
