"""The report command (smc_jax.cli.report, report_tables, report_plots) on synthetic ``summary.json`` trees:
table means ± std over seeds of ``selected[metric]`` (``best`` for older summaries), CV folds micro-averaged by
``num_eval``, LTH rounds counted once (not the top-level copy), blanks for missing runs, diverged runs marked
and never averaged or plotted, the actual-sparsity flag, the CSV, the figures (inspected as matplotlib
objects) and ``--layers``. No training; runs in a few seconds."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from smc_jax.cli import report, report_plots, report_tables

REPO = Path(__file__).resolve().parents[1]

FOLD_SIZES = {0: 300, 1: 100}  # MAWPS-like folds of unequal size
LABEL = {"dense": "Dense", "lth": "LTH (After)", "gmp": "GMP (During)", "snip": "SNIP (Before)", "rigl": "Random+RigL"}
LEAVES = ["encoder/lstm_l0_fwd/weight_ih", "encoder/lstm_l0_fwd/weight_hh", "decoder/predict/ops/kernel"]


def summary(algorithm: str, sparsity: float, seed: int, fold, value: float, *, task="mawps", model="gts",
            pretrained=None, actual=None, per_leaf=None, old=False, **extra) -> dict:
    """A summary.json as train writes it: the selected evaluation has value accuracy ``value`` and equation
    accuracy value − 2; the best evaluation is 1 higher (a selection other than the best). ``old``: a summary
    from before ``selected`` existed, its cells read from ``best`` (= the values)."""
    metric, metrics = ("value_accuracy", ["value_accuracy", "equation_accuracy"]) if task == "mawps" else \
        ("accuracy", ["accuracy"])
    n = FOLD_SIZES[fold] if fold is not None else 1221
    selected = {m: value - 2.0 * i for i, m in enumerate(metrics)} | {"num_eval": n}
    chosen = {} if old else {"selection": "best_after_window", "selected_step": 8, "selected": selected}
    best = selected if old else {m: v + 1.0 for m, v in selected.items()}
    return {"task": task, "model": model, "pretrained": pretrained, "algorithm": algorithm,
            "label": LABEL[algorithm], "seed": seed, "fold": fold, "target_sparsity": sparsity,
            "sparsity_label": sparsity, "scheduled_sparsity": sparsity,
            "actual_sparsity": sparsity if actual is None else actual, "metric": metric, "metrics": metrics,
            "reported": value, **chosen, "final": selected, "best": best, "best_step": 10, "num_eval": n,
            "steps": 20, "epochs": 1, "wall_time_s": 12.5, "train_steps_per_s": 1.6, "num_params": 1000,
            "num_prunable": 900, "per_leaf_sparsity": per_leaf or {leaf: sparsity for leaf in LEAVES}, **extra}


def diverged(summary_: dict, step: int) -> dict:
    """``summary_`` as a run that diverged at ``step`` writes it: nothing reported, nothing selected."""
    return summary_ | {"diverged": True, "diverged_step": step, "reported": None, "selected": None,
                       "selected_step": None}


def write(path: Path, content: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps(content))
    return path


# (algorithm, sparsity, seed) -> value per fold; expected micro-averages in the comments
CV_RUNS = {
    ("dense", 0.0, 1): (90.0, 70.0),    # 85
    ("dense", 0.0, 2): (92.0, 72.0),    # 87      -> 86.00 ± 1.41
    ("rigl", 0.2, 1): (80.0, 40.0),     # 70 (macro would be 60)
    ("rigl", 0.2, 2): (84.0, 44.0),     # 74      -> 72.00 ± 2.83
    ("rigl", 0.36, 1): (60.0, 20.0),    # 50
    ("rigl", 0.36, 2): (60.0, 20.0),    # 50      -> 50.00 ± 0.00
    ("gmp", 0.2, 1): (76.0, 76.0),      # 76, one seed; gmp at 0.36 is missing
}
# the CV runs (one summary per fold), LTH's two rounds per fold, a SNIP run per fold, two CSQA runs
NUM_RUNS = len(CV_RUNS) * len(FOLD_SIZES) + 2 * len(FOLD_SIZES) + len(FOLD_SIZES) + 2
STEMS = ["csqa_roberta_roberta-large_accuracy", "mawps_gts_equation_accuracy", "mawps_gts_value_accuracy"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """runs/: a MAWPS-like CV sweep, an LTH run with two rounds and a top-level copy, a flagged SNIP run,
    a cv_summary.json that must not be read, and a single-split CSQA setting of summaries written before
    ``selected`` existed."""
    root = tmp_path_factory.mktemp("runs")
    for (algorithm, sparsity, seed), values in CV_RUNS.items():
        for fold, value in zip(FOLD_SIZES, values):
            write(root / f"mawps_{algorithm}_s{sparsity}_seed{seed}_fold{fold}",
                  summary(algorithm, sparsity, seed, fold, value))
    for fold in FOLD_SIZES:
        lth = root / f"mawps_lth_s0.36_seed1_fold{fold}"
        write(lth / "round_1", summary("lth", 0.2, 1, fold, 70.0, round=1))
        write(lth / "round_2", summary("lth", 0.36, 1, fold, 60.0, round=2))
        write(lth, summary("lth", 0.36, 1, fold, 999.0, round=2))  # the top-level copy (distinct value to catch it)
        (lth / "checkpoints").mkdir()
        write(root / f"mawps_snip_s0.2_seed1_fold{fold}", summary("snip", 0.2, 1, fold, 30.0, actual=0.25))
    (root / "mawps_dense_all").mkdir()
    (root / "mawps_dense_all" / "cv_summary.json").write_text(
        json.dumps(summary("dense", 0.0, 1, 0, 555.0) | {"fold": "all"}))
    write(root / "csqa" / "dense", summary("dense", 0.0, 0, None, 0.6, task="csqa", model="roberta",
                                           pretrained="roberta-large", old=True))
    write(root / "csqa" / "rigl", summary("rigl", 0.5, 0, None, 0.45, task="csqa", model="roberta",
                                          pretrained="roberta-large", old=True))
    return root


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = report.write_report([tree], out)
    return result, out


def table(result, task="mawps", metric="value_accuracy"):
    (t,) = [t for t in result["tables"] if t.task_name == task and t.metric == metric]
    return t


def test_gathers_each_run_once(built):
    result, _ = built
    paths = [s["path"] for s in result["summaries"]]
    assert len(paths) == NUM_RUNS
    lth = [p for p in paths if "mawps_lth" in p]
    assert len(lth) == 4 and all(Path(p).parent.name.startswith("round_") for p in lth)
    assert not any("cv_summary" in p for p in paths)


def test_table_means_std_and_micro_average(built):
    t = table(built[0])
    assert t.sparsities == [0.2, 0.36]
    assert t.algorithms == ["dense", "lth", "gmp", "snip", "rigl"]  # DESIGN's order
    rigl = t.value("rigl", 0.2)
    assert rigl.n == 2 and rigl.mean == pytest.approx(72.0) and rigl.std == pytest.approx(math.sqrt(8))
    assert t.value("rigl", 0.36).mean == pytest.approx(50.0) and t.value("rigl", 0.36).std == pytest.approx(0.0)
    assert t.value("gmp", 0.2) == report_tables.Cell(76.0, None, 1)
    assert t.dense.mean == pytest.approx(86.0) and t.dense.std == pytest.approx(math.sqrt(2))
    assert t.value("dense", 0.36) == t.dense  # dense is repeated in every column
    eq = table(built[0], metric="equation_accuracy")
    assert eq.value("rigl", 0.2).mean == pytest.approx(70.0)
    folds = [summary("rigl", 0.2, 1, 0, 80.0), summary("rigl", 0.2, 1, 1, 40.0)]
    assert report_tables.micro_average(folds, "value_accuracy") == pytest.approx((80 * 300 + 40 * 100) / 400)


def test_lth_rounds_counted_once(built):
    t = table(built[0])
    assert t.value("lth", 0.2) == report_tables.Cell(70.0, None, 1)
    assert t.value("lth", 0.36) == report_tables.Cell(60.0, None, 1)  # not the top-level copy (999), not n=2


def test_markdown_blanks_and_labels(built):
    result, out = built
    md = report_tables.table_markdown(table(result))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in md.splitlines() if line.startswith("| ") and not line.startswith("| Algorithm")}
    assert rows == {
        "Dense": ["86.00 ± 1.41", "86.00 ± 1.41"],
        "LTH (After)": ["70.00", "60.00"],
        "GMP (During)": ["76.00", ""],  # missing run: blank, not 0
        "SNIP (Before)": ["30.00", ""],
        "Random+RigL": ["72.00 ± 2.83", "50.00 ± 0.00"],
    }
    assert "| Algorithm | 0.2 | 0.36 |" in md
    text = (out / "report.md").read_text()
    assert md in text and "### csqa / roberta (roberta-large) / accuracy" in text
    assert "| Random+RigL | 0.4500 |" in text  # fractions get 4 decimals; best[metric] without selected
    assert "999" not in text and "555" not in text


def test_sparsity_flag(built, tree, tmp_path, capsys):
    result, _ = built
    assert sorted(Path(s["path"]).parent.name for s in result["flagged"]) == [
        "mawps_snip_s0.2_seed1_fold0", "mawps_snip_s0.2_seed1_fold1"]
    assert report.main([str(tree), "--out", str(tmp_path)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "misses the target" in line]
    assert len(warnings) == 2 and all("0.2500" in w and "0.2000" in w for w in warnings)


def test_csv_rows(built):
    _, out = built
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == NUM_RUNS
    assert {"task", "algorithm", "seed", "fold", "target_sparsity", "actual_sparsity", "sparsity_miss", "reported",
            "selection", "selected_step", "selected.value_accuracy", "selected.equation_accuracy",
            "best.value_accuracy", "best.equation_accuracy", "best.accuracy", "diverged", "wall_time_s",
            "path"} <= set(rows[0])
    assert {r["algorithm"] for r in rows if r["sparsity_miss"] == "True"} == {"snip"}
    assert {r["diverged"] for r in rows} == {"False"}
    rigl = [r for r in rows if r["algorithm"] == "rigl" and r["sparsity_label"] == "0.2" and r["seed"] == "1"]
    assert sorted((r["fold"], float(r["selected.value_accuracy"]), float(r["best.value_accuracy"])) for r in rigl) \
        == [("0", 80.0, 81.0), ("1", 40.0, 41.0)]
    assert {(r["selection"], r["selected_step"]) for r in rigl} == {("best_after_window", "8")}
    assert all(r["label"] == "Random+RigL" for r in rigl)
    lth = [r for r in rows if r["algorithm"] == "lth"]
    assert sorted(r["round"] for r in lth) == ["1", "1", "2", "2"]
    csqa = [r for r in rows if r["task"] == "csqa"]
    assert {r["fold"] for r in csqa} == {""} and {r["best.value_accuracy"] for r in csqa} == {""}
    assert {r["selection"] for r in csqa} == {""} and {r["selected.value_accuracy"] for r in csqa} == {""}
    assert "selected.accuracy" not in rows[0]  # only the old CSQA summaries have accuracy, and no selected


def test_plot_figure(built):
    fig = report_plots.plot_figure(table(built[0]))
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"LTH (After)", "GMP (During)", "SNIP (Before)", "Random+RigL", "Dense"}
    assert len(ax.get_lines()) == 5
    assert list(lines["Random+RigL"].get_ydata()) == pytest.approx([72.0, 50.0])
    assert lines["Random+RigL"].get_marker() not in (None, "", "None")
    gmp = lines["GMP (During)"].get_ydata()
    assert gmp[0] == pytest.approx(76.0) and math.isnan(gmp[1])  # the gap, not 0
    dense = lines["Dense"]
    assert dense.get_linestyle() == "--" and list(dense.get_ydata()) == pytest.approx([86.0, 86.0])
    assert list(ax.get_xticks()) == pytest.approx([0.2, 0.36])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.2", "0.36"]
    assert "mawps" in ax.get_title() and "gts" in ax.get_title() and "value_accuracy" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()][-1] == "Dense"


def test_figure_files(built):
    result, out = built
    stems = report_plots.figure_stems(result["tables"])
    assert sorted(stems) == STEMS
    for stem in stems:
        png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000
        assert f"]({stem}.png)" in (out / "report.md").read_text()


def test_layers(tmp_path, capsys):
    per_leaf = {"a/kernel": 0.5, "b/kernel": 0.995, "c/kernel": 0.2, "d/kernel": 1.0}
    run = write(tmp_path / "mawps_lth_seed1_fold0" / "round_3",
                summary("lth", 0.488, 1, 0, 50.0, actual=0.488, per_leaf=per_leaf))
    out = tmp_path / "out"
    assert report.main(["--layers", str(run), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "collapsed leaves (sparsity >= 0.99): 2 of 4" in stdout
    assert "  b/kernel  0.9950" in stdout and "  d/kernel  1.0000" in stdout and "a/kernel" not in stdout
    for ext in ("png", "pdf"):
        path = out / f"layers_mawps_lth_seed1_fold0_round_3.{ext}"
        assert path.stat().st_size > 5_000
    assert (out / "layers_mawps_lth_seed1_fold0_round_3.png").read_bytes()[:4] == b"\x89PNG"
    fig = report_plots.layers_figure(report.read_run(run))
    (ax,) = fig.axes
    bars = ax.patches
    assert [b.get_width() for b in bars] == pytest.approx(list(per_leaf.values()))
    assert [t.get_text() for t in ax.get_yticklabels()] == list(per_leaf)
    red = [b.get_width() for b in bars if b.get_facecolor() == bars[1].get_facecolor()]
    assert red == pytest.approx([0.995, 1.0]) and bars[0].get_facecolor() != bars[1].get_facecolor()
    (target,) = ax.get_lines()
    assert list(target.get_xdata()) == pytest.approx([0.488, 0.488])


def test_errors(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no such directory: {tmp_path / 'nope'}"]
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip() == f"error: no summary.json found under {tmp_path / 'empty'}"
    assert report.main(["--layers", str(tmp_path / "empty")]) == 2
    assert "no summary.json" in capsys.readouterr().err
    assert report.main([]) == 2
    assert capsys.readouterr().err.startswith("error: give at least one directory")
    assert report.main(["--bogus"]) == 2
    assert capsys.readouterr().err.strip() == "error: unrecognized arguments: --bogus (see --help)"
    assert report.main(["--help"]) == 0 and "--layers RUN_DIR" in capsys.readouterr().out


def test_cli_subprocess(tree, tmp_path):
    help_ = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), "--help"],
                           capture_output=True, text=True, check=True)
    assert "--layers RUN_DIR" in help_.stdout and "micro-averaged" in help_.stdout
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(tree), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{NUM_RUNS} runs, {len(STEMS)} tables, 2 flagged, 0 diverged" in done.stdout
    assert (tmp_path / "report.md").is_file() and (tmp_path / "runs.csv").is_file()


def test_diverged_runs_are_marked_never_averaged_or_plotted(tmp_path, capsys):
    root = tmp_path / "runs"
    write(root / "dense", summary("dense", 0.0, 0, 0, 90.0))
    write(root / "rigl_s0.5_seed0", summary("rigl", 0.5, 0, 0, 70.0))
    write(root / "rigl_s0.5_seed1", diverged(summary("rigl", 0.5, 1, 0, 0.0, actual=0.3), 17))
    for seed in (0, 1):  # every seed of 0.8 diverged
        write(root / f"rigl_s0.8_seed{seed}", diverged(summary("rigl", 0.8, seed, 0, 0.0), 5 + seed))
    out = tmp_path / "report"
    assert report.main([str(root), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"warning: {root / 'rigl_s0.5_seed1' / 'summary.json'} diverged at step 17" in captured.err.splitlines()
    assert sum("diverged at step" in line for line in captured.err.splitlines()) == 3
    assert "misses the target" not in captured.err  # a diverged run's sparsity is not flagged
    assert "5 runs, 2 tables, 0 flagged, 3 diverged" in captured.out

    rows = {Path(r["path"]).parent.name: r for r in csv.DictReader((out / "runs.csv").open())}
    assert {name: (r["diverged"], r["diverged_step"]) for name, r in rows.items()} == {
        "dense": ("False", ""), "rigl_s0.5_seed0": ("False", ""), "rigl_s0.5_seed1": ("True", "17"),
        "rigl_s0.8_seed0": ("True", "5"), "rigl_s0.8_seed1": ("True", "6")}
    assert rows["rigl_s0.5_seed1"]["reported"] == "" and rows["rigl_s0.5_seed1"]["selected.value_accuracy"] == ""

    (t,) = [t for t in report_tables.build_tables(report.load_summaries([root])) if t.metric == "value_accuracy"]
    assert t.value("rigl", 0.5) == report_tables.Cell(70.0, None, 1, diverged=1)  # not (70 + 0) / 2
    assert t.value("rigl", 0.8) == report_tables.Cell(None, None, 0, diverged=2)
    md = (out / "report.md").read_text()
    assert "| Random+RigL | 70.00 † (1 of 2 diverged) | diverged |" in md
    assert "## Runs that diverged" in md and "rigl_s0.8_seed1/summary.json`: at step 6" in md

    (ax,) = report_plots.plot_figure(t).axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    rigl = lines["Random+RigL"]
    assert rigl.get_ydata()[0] == pytest.approx(70.0) and math.isnan(rigl.get_ydata()[1])  # no point at 0.8
    assert not any(0.0 in list(line.get_ydata()) for line in ax.get_lines())  # nothing plotted as 0
    (cross,) = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert list(cross.get_xdata()) == [0.8] and list(cross.get_ydata()) == [1.0]  # the top of the axis
    assert cross.get_transform() == ax.get_xaxis_transform() and cross.get_label().startswith("_")
    assert report_plots.DIVERGED_LABEL in [text.get_text() for text in ax.get_legend().get_texts()]


def test_a_cell_of_only_diverged_dense_runs(tmp_path):
    root = tmp_path / "runs"
    write(root / "dense", diverged(summary("dense", 0.0, 0, 0, 0.0), 3))
    write(root / "gmp", summary("gmp", 0.5, 0, 0, 60.0))
    (t,) = [t for t in report_tables.build_tables(report.load_summaries([root])) if t.metric == "value_accuracy"]
    assert t.dense == report_tables.Cell(None, None, 0, diverged=1) and t.value("dense", 0.5) == t.dense
    assert "| Dense | diverged |" in report_tables.table_markdown(t)
    (ax,) = report_plots.plot_figure(t).axes
    assert [line.get_label() for line in ax.get_lines()] == ["GMP (During)"]  # no dense line at 0
    assert "Dense: every seed diverged" in [text.get_text() for text in ax.get_legend().get_texts()]


def test_gts_and_graph2tree_side_by_side(tmp_path):
    """Runs of two models of one task: a table and figure each, and one figure with a panel per model (GTS first,
    as the paper's arithmetic figure), sharing the y axis and one legend."""
    for model, shift in (("gts", 0.0), ("graph2tree", 3.0)):
        tag = "" if model == "gts" else "_graph2tree"
        write(tmp_path / "runs" / f"mawps{tag}_dense_seed1_fold0",
              summary("dense", 0.0, 1, 0, 80.0 + shift, model=model))
        for sparsity, value in ((0.2, 78.0), (0.36, 70.0)):
            write(tmp_path / "runs" / f"mawps{tag}_rigl_s{sparsity}_seed1_fold0",
                  summary("rigl", sparsity, 1, 0, value + shift, model=model))
    result = report.write_report([tmp_path / "runs"], tmp_path / "out")
    assert {(t.model, t.metric) for t in result["tables"]} == {
        (m, k) for m in ("gts", "graph2tree") for k in ("value_accuracy", "equation_accuracy")}
    groups = report_plots.model_groups(result["tables"])
    assert sorted(g[0].metric for g in groups) == ["equation_accuracy", "value_accuracy"]
    (group,) = [g for g in groups if g[0].metric == "value_accuracy"]
    assert [t.model for t in group] == ["gts", "graph2tree"]
    fig = report_plots.plot_models_figure(group)
    left, right = fig.axes
    assert (left.get_title(), right.get_title()) == ("gts", "graph2tree")
    assert left.get_shared_y_axes().joined(left, right)
    for ax, shift in ((left, 0.0), (right, 3.0)):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert list(lines["Random+RigL"].get_ydata()) == pytest.approx([78.0 + shift, 70.0 + shift])
        assert list(lines["Dense"].get_ydata()) == pytest.approx([80.0 + shift] * 2)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Random+RigL", "Dense"]
    png = tmp_path / "out" / f"{report_plots.models_stem(group)}.png"
    assert png.name == "mawps_value_accuracy_models.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({png.stem}.png)" in (tmp_path / "out" / "report.md").read_text()


def test_per_direction_tables(tmp_path):
    """Translation-like runs score BLEU per direction (``selected['bleu/en-fr']`` …): report.md gains a table per
    setting with a row per (algorithm, sparsity), a column per direction (seeds averaged) and the run's mean;
    a diverged seed is left out; settings without per-direction keys (MAWPS) get none."""
    directions = ("en-fr", "fr-en")

    def bleu_summary(algorithm, sparsity, seed, scores, **extra):
        s = summary(algorithm, sparsity, seed, None, sum(scores) / len(scores), task="2to2", model="mbart", **extra)
        per = {f"bleu/{d}": v for d, v in zip(directions, scores)} | {f"sacrebleu/{d}": 0.0 for d in directions}
        s.update(metric="bleu", metrics=["bleu", "sacrebleu"], label={"rigl": "Random+RigL"}.get(algorithm, "Dense"))
        s["selected"] = per | {"bleu": sum(scores) / len(scores), "sacrebleu": 0.0, "num_eval": 400}
        return s

    runs = tmp_path / "runs"
    write(runs / "dense_1", bleu_summary("dense", 0.0, 1, (30.0, 20.0)))
    write(runs / "rigl_1", bleu_summary("rigl", 0.5, 1, (26.0, 18.0)))
    write(runs / "rigl_2", bleu_summary("rigl", 0.5, 2, (28.0, 16.0)))
    write(runs / "rigl_3", diverged(bleu_summary("rigl", 0.5, 3, (0.0, 0.0)), 7))
    write(runs / "mawps", summary("dense", 0.0, 1, 0, 80.0))
    (table,) = report_tables.direction_tables(report.load_summaries([runs]))
    assert (table.task_name, table.metric, table.directions) == ("2to2", "bleu", list(directions))
    assert table.rows == [("dense", 0.0), ("rigl", 0.5)]
    assert table.cells["rigl", 0.5]["en-fr"].mean == pytest.approx(27.0)
    assert table.cells["rigl", 0.5]["en-fr"].n == 2  # the diverged seed is left out
    assert table.cells["rigl", 0.5]["fr-en"].std == pytest.approx(math.sqrt(2.0))
    assert table.means["rigl", 0.5].mean == pytest.approx(22.0)
    report.write_report([runs], tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "### 2to2 / mbart / bleu per direction" in text
    assert "| Dense | 0 | 30.00 | 20.00 | 25.00 |" in text
    assert "| Random+RigL | 0.5 | 27.00 ± 1.41 | 17.00 ± 1.41 | 22.00 ± 0.00 |" in text
    assert "mawps / gts / value_accuracy per direction" not in text
