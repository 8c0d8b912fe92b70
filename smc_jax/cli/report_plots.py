"""The figures of a report: the paper's sparsity-vs-metric figure of one table, the models of one task side
by side, the per-leaf sparsity bars of one run, and how they are saved and named. Inputs are
:class:`smc_jax.cli.report_tables.Table` objects and summary dicts; nothing here reads files."""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from smc_jax.cli.report_tables import LABELS, ORDER, Table, short_name  # noqa: E402

COLLAPSED = 0.99  # a leaf at or above this sparsity counts as collapsed in --layers
DIVERGED_LABEL = "diverged (every seed)"  # the legend note of the ✗ markers
_COLOURS = [c if i != 7 else "indigo" for i, c in enumerate(matplotlib.colormaps["tab10"].colors)]  # no grey
_STYLE = dict(zip(ORDER[1:], zip(_COLOURS, "osD^v<>ph*")))  # algorithm -> (colour, marker)
MODEL_ORDER = ("gts", "graph2tree")  # panel order of the side-by-side figure (the paper's); other models after


def plot_figure(table: Table) -> Figure:
    """The paper-style figure of one table: a line with markers per algorithm (±1 std shaded), dense as a
    dashed line. A cell whose every seed diverged is no point of its line: an ✗ at the top of the axis."""
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    ax.legend(handles=_draw(ax, table), fontsize=8, loc="best")
    ax.set_title(table.title)
    fig.tight_layout()
    return fig


def model_groups(tables: Sequence[Table]) -> list[list[Table]]:
    """The tables of one (task, pretrained, metric) with two or more models, in model order: the panels of one
    side-by-side figure (the paper's arithmetic figure puts GTS and Graph2Tree next to each other)."""
    groups: dict[tuple, list[Table]] = defaultdict(list)
    for t in tables:
        groups[t.task_name, str(t.pretrained), t.metric].append(t)

    def order(t: Table) -> tuple:
        return (MODEL_ORDER.index(t.model) if t.model in MODEL_ORDER else len(MODEL_ORDER), t.model)

    return [sorted(g, key=order) for g in groups.values() if len({t.model for t in g}) > 1]


def plot_models_figure(tables: Sequence[Table]) -> Figure:
    """One panel per model (the tables of :func:`model_groups`), side by side on a shared y axis, each drawn as
    :func:`plot_figure` draws its table; one legend for the figure."""
    fig = Figure(figsize=(4.6 * len(tables) + 1.6, 4.4))
    axes = fig.subplots(1, len(tables), sharey=True, squeeze=False)[0]
    handles: dict[str, object] = {}
    for ax, table in zip(axes, tables):
        for handle in _draw(ax, table):
            handles.setdefault(handle.get_label(), handle)
        ax.set_title(table.model if table.pretrained is None else f"{table.model} ({short_name(table.pretrained)})")
    for ax in axes[1:]:
        ax.set_ylabel("")
    first = tables[0]
    fig.suptitle(f"{first.task_name} / {first.metric}")
    fig.legend(handles=list(handles.values()), fontsize=8, loc="center right")
    fig.tight_layout(rect=(0.0, 0.0, 1.0 - 1.5 / fig.get_figwidth(), 1.0))
    return fig


def _draw(ax, table: Table) -> list:
    """Draw one table's lines into ``ax``; returns the legend handles."""
    any_diverged = False
    for algorithm in table.algorithms:
        if algorithm == "dense":
            continue
        row = [table.value(algorithm, s) for s in table.sparsities]
        colour, marker = _STYLE.get(algorithm, ("grey", "x"))
        label = LABELS.get(algorithm, algorithm)
        means = [math.nan if c is None or c.mean is None else c.mean for c in row]
        if any(not math.isnan(m) for m in means):
            ax.plot(table.sparsities, means, marker=marker, color=colour, linewidth=1.6, markersize=5, label=label)
        if any(c is not None and c.std is not None for c in row):
            low = [math.nan if c is None or c.mean is None else c.mean - (c.std or 0.0) for c in row]
            high = [math.nan if c is None or c.mean is None else c.mean + (c.std or 0.0) for c in row]
            ax.fill_between(table.sparsities, low, high, color=colour, alpha=0.12, linewidth=0)
        lost = [s for s, c in zip(table.sparsities, row) if c is not None and c.mean is None]
        if lost:  # x in data coordinates, y at the top of the axes
            any_diverged = True
            ax.plot(lost, [1.0] * len(lost), linestyle="none", marker="x", markersize=8, markeredgewidth=2,
                    color=colour, clip_on=False, transform=ax.get_xaxis_transform(), label=f"_{label} diverged")
    dense = table.dense
    if dense is not None and dense.mean is not None:
        ax.axhline(dense.mean, color="black", linestyle="--", linewidth=1.4, label="Dense")
        if dense.std is not None:
            ax.axhspan(dense.mean - dense.std, dense.mean + dense.std, color="black", alpha=0.06, linewidth=0)
    ax.set_xticks(table.sparsities)
    ax.set_xticklabels([f"{s:g}" for s in table.sparsities], rotation=45 if len(table.sparsities) > 6 else 0)
    if len(table.sparsities) == 1:
        ax.set_xlim(table.sparsities[0] - 0.05, table.sparsities[0] + 0.05)
    ax.set_xlabel("Sparsity")
    ax.set_ylabel(table.metric)
    ax.grid(True, alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if any_diverged:
        handles.append(Line2D([], [], linestyle="none", marker="x", color="grey", label=DIVERGED_LABEL))
    if dense is not None and dense.mean is None:
        handles.append(Line2D([], [], color="black", linestyle="--", label="Dense: every seed diverged"))
    return handles


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


def slug(text: str) -> str:
    """``text`` as a file name: runs of other characters than ``[A-Za-z0-9._-]`` become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def models_stem(tables: Sequence[Table]) -> str:
    """``task[_pretrained]_metric_models``: the file stem of a :func:`plot_models_figure`."""
    t = tables[0]
    parts = [t.task_name] + ([short_name(t.pretrained)] if t.pretrained is not None else []) + [t.metric, "models"]
    return slug("_".join(parts))


def figure_stems(tables: Sequence[Table]) -> list[str]:
    """File stems ``task_model[_pretrained]_metric``, unique (a hash is added where short names collide)."""
    stems = []
    for t in tables:
        parts = [t.task_name, t.model] + ([short_name(t.pretrained)] if t.pretrained is not None else []) + [t.metric]
        stems.append(slug("_".join(parts)))
    seen: dict[str, set] = defaultdict(set)
    for stem, t in zip(stems, tables):
        seen[stem].add(t.pretrained)
    return [stem if len(seen[stem]) == 1 else
            f"{stem}-{hashlib.sha1(str(t.pretrained).encode()).hexdigest()[:6]}" for stem, t in zip(stems, tables)]
