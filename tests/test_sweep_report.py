"""The two commands of a figure: sweep (MAWPS fold 0, dense + RigL + GMP at two sparsities) then report on
its runs: one line per algorithm with DESIGN.md's labels, a horizontal dense line, x ticks
at the swept sparsities, and a table with every cell filled. The default test trains on 64 problems with a
small GTS; the ``slow`` one is the README's CPU-scale command (full fold 0, SPEC sizes, 1 epoch)."""

from pathlib import Path

import pytest
from conftest import SHARED_DATA

from smc_jax.cli import report, report_plots, report_tables, sweep

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA / "arithmetic"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"arithmetic data not found at {DATA}")
ALGORITHMS, SPARSITIES = ("rigl",), (0.5, 0.8)
SMALL = ["--gin.MAX_TRAIN_EXAMPLES=64", "--gin.MAX_EVAL_EXAMPLES=32", "--gin.UPDATE_FREQUENCY=8",
         "--gin.ArithmeticTask.hidden=32", "--gin.ArithmeticTask.embedding_size=32",
         "--gin.ArithmeticTask.input_buckets=(96,)", "--gin.ArithmeticTask.target_buckets=(16,)"]


def sweep_then_report(tmp_path, extra):
    runs = tmp_path / "runs"
    status = sweep.main(["--gin_file=gin/mawps_rigl.gin", f"--algorithms=dense,{','.join(ALGORITHMS)}",
                         f"--sparsities={','.join(map(str, SPARSITIES))}",
                         "--folds=0", f"--workdir={runs}", f"--gin.DATA_DIR='{DATA}'", "--gin.NUM_EPOCHS=1",
                         "--gin.TrainConfig.progress='off'", *extra])
    assert status == 0
    assert len(list(runs.rglob("summary.json"))) == 1 + len(ALGORITHMS) * len(SPARSITIES)
    assert report.main([str(runs), "--out", str(tmp_path / "report")]) == 0
    summaries = report.load_summaries([runs])
    (table,) = [t for t in report_tables.build_tables(summaries) if t.metric == "value_accuracy"]
    fig = report_plots.plot_figure(table)
    ax = fig.axes[0]
    labels = sorted(line.get_label() for line in ax.get_lines())
    assert labels == sorted(["Dense", *(report_tables.LABELS[a] for a in ALGORITHMS)])
    (dense,) = [line for line in ax.get_lines() if line.get_label() == "Dense"]
    assert len(set(dense.get_ydata())) == 1  # horizontal
    assert sorted(float(x) for x in ax.get_xticks()) == list(SPARSITIES)
    for algorithm in ALGORITHMS:
        for sparsity in SPARSITIES:
            assert table.value(algorithm, sparsity) is not None
    png = tmp_path / "report" / "mawps_gts_value_accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    return table


def test_a_small_sweep_and_its_report(tmp_path):
    sweep_then_report(tmp_path, SMALL)


@pytest.mark.slow
def test_the_readme_cpu_scale_sweep_and_report(tmp_path):
    sweep_then_report(tmp_path, [])
