"""Graph2Tree through the train command (gin/<dataset>_g2t_<algorithm>.gin: a task file, gin/models/graph2tree.gin and
an algorithm file): its mask rules (the graph module's ten matrices prunable, biases and norms dense, GTS's
merge/pooler exclusions, NOEMBED), one tiny run (Random Before on MAWPS) in the default suite, and every dataset x
algorithm shortcut (every pipeline kind), a pretrained-encoder run and a GTS + Graph2Tree sweep and report under
``slow``."""

import json
import re
from pathlib import Path

import jax
import pytest
from conftest import ALGORITHMS, SHARED_DATA, SUMMARY_KEYS

from smc_jax.cli import gin_cli, report, report_plots, report_tables, sweep
from smc_jax.sparsity import mask_items
from smc_jax.train import config

DATA = SHARED_DATA / "arithmetic"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"arithmetic data not found at {DATA}")
GIN = Path(gin_cli.GIN_DIR)
SHORTCUTS = sorted(p.name for p in GIN.glob("*_g2t_*.gin"))
SIZES = ["--gin.ArithmeticTask.hidden=8", "--gin.ArithmeticTask.embedding_size=8",
         "--gin.ArithmeticTask.input_buckets=(96,)", "--gin.ArithmeticTask.target_buckets=(16,)"]
GCN = [f"gcn/graph/{k}/{layer}/weight" for k in range(4) for layer in ("gc1", "gc2")] + [
    "gcn/feed_foward/w_1/kernel", "gcn/feed_foward/w_2/kernel"]
KEEPS_MERGE = ("lth", "omp_after", "random_after", "omp_before", "random_before")  # --fix without SNIP: pruned


def tiny(*extra: str) -> list[str]:
    """A Graph2Tree of width 8 on 16 training problems (two batches of 8) and 8 dev problems, one epoch."""
    return [f"--gin.DATA_DIR='{DATA}'", "--gin.MAX_TRAIN_EXAMPLES=16", "--gin.MAX_EVAL_EXAMPLES=8",
            "--gin.NUM_EPOCHS=1", "--gin.UPDATE_FREQUENCY=1", *SIZES, "--gin.TrainConfig.progress='off'", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("g2t_runs")


def test_mask_rules():
    def prunable(algorithm: str, *bindings: str) -> set[str]:
        gin_cli.parse_run([f"gin/mawps_g2t_{algorithm}.gin"], [f"DATA_DIR='{DATA}'", "MAX_TRAIN_EXAMPLES=4",
                                                                "MAX_EVAL_EXAMPLES=2", *(b[6:] for b in SIZES),
                                                                *bindings])
        exp = config.experiment()
        task = exp.task(fold=0)
        shapes = jax.eval_shape(task.init_params, jax.random.key(0))
        return {path for path, _ in mask_items(exp.mask_rules.masks(shapes, algorithm))}

    rigl, omp = prunable("rigl"), prunable("omp_before")
    assert set(GCN) <= rigl and not [p for p in rigl if p.startswith("gcn/") and p not in GCN]
    assert not [p for p in rigl if "merge" in p] and [p for p in omp if "merge" in p]  # SPEC §2.3's exclusions
    assert "decoder/generate/embeddings" in omp and "embedding/embedding" in omp
    assert "decoder/predict/embedding_weight" not in omp  # the 3-D constant embedding
    noembed = prunable("omp_before", "NOEMBED=True")
    assert omp - noembed == {"decoder/generate/embeddings"}  # names with 'embeddings' (a learned embedding has none)


def check_summary(summary: dict, dataset: str, algorithm: str, sparsity: float) -> None:
    assert SUMMARY_KEYS <= set(summary)
    assert (summary["task"], summary["model"], summary["algorithm"]) == (dataset, "graph2tree", algorithm)
    assert summary["fold"] == (None if dataset == "svamp" else 0) and summary["num_eval"] == 8
    assert summary["reported"] == summary["selected"]["value_accuracy"] and summary["epochs"] == 1
    leaves = summary["per_leaf_sparsity"]
    if algorithm == "dense":
        assert summary["actual_sparsity"] == 0.0
        return
    assert abs(summary["actual_sparsity"] - summary["target_sparsity"]) < 0.005, summary["actual_sparsity"]
    assert abs(summary["target_sparsity"] - sparsity) < 1e-9 or algorithm == "lth"
    assert set(GCN) <= set(leaves) and not [k for k in leaves if k.startswith("gcn/") and k not in GCN]
    assert bool([k for k in leaves if "/merge/" in k]) == (algorithm in KEEPS_MERGE)


def train(train_main, runs: Path, shortcut: str, sparsity: float = 0.5) -> dict:
    dataset, algorithm = re.fullmatch(r"(\w+?)_g2t_(\w+)\.gin", shortcut).groups()
    workdir = runs / shortcut[:-4]
    status = train_main([f"--gin_file=gin/{shortcut}", *tiny(
        f"--gin.WORKDIR='{workdir}'", f"--gin.DENSE_WORKDIR='{runs / ('dense_' + dataset)}'",
        f"--gin.SPARSITY={sparsity}")])
    assert status == 0
    summary = json.loads((workdir / "summary.json").read_text())
    check_summary(summary, dataset, algorithm, sparsity)
    return summary


# The default suite runs one file: a static "before" run, the cheapest sparse one to compile (~30 s cold; no global
# selection). The other pipeline kinds (during, after, LTH: their dense run, global selection and RigL update add
# ~70 s of compilation) and the rest of the matrix are slow.
DEFAULT = ("mawps_g2t_random_before.gin",)


@pytest.mark.parametrize("shortcut", [pytest.param(s, marks=() if s in DEFAULT else pytest.mark.slow)
                                      for s in SHORTCUTS])
def test_every_graph2tree_gin_file_trains(train_main, runs, shortcut):
    summary = train(train_main, runs, shortcut, 0.2 if "_lth" in shortcut else 0.5)
    if "_lth" in shortcut:  # LTH to 0.2: one round after the dense run
        assert summary["round"] == 1 and summary["target_sparsity"] == pytest.approx(0.2)


def test_the_shortcuts_cover_every_dataset_and_algorithm():
    assert SHORTCUTS == sorted(f"{d}_g2t_{a}.gin" for d in ("asdiv", "mawps", "svamp") for a in ALGORITHMS)
    for name in SHORTCUTS:
        dataset, _ = name.split("_g2t_")
        text = (GIN / name).read_text()
        assert re.findall(r"^include '([^']+)'", text, re.MULTILINE) == [
            f"tasks/{dataset}.gin", "models/graph2tree.gin", f"algorithms/{name.split('_g2t_')[1]}"]


@pytest.mark.slow
@pytest.mark.parametrize("number_positions", ["aligned", "original"])
def test_a_pretrained_graph2tree_run(train_main, tiny_roberta, tmp_path, number_positions):
    """RoBERTa in front: sub-token graphs, numbers at their first sub-tokens or at the word indices (the quirk)."""
    workdir = tmp_path / "run"
    assert train_main(["--gin_file=gin/mawps_g2t_rigl.gin", *tiny(
        f"--gin.PRETRAINED='{tiny_roberta}'", f"--gin.ArithmeticTask.number_positions='{number_positions}'",
        f"--gin.WORKDIR='{workdir}'")]) == 0
    summary = json.loads((workdir / "summary.json").read_text())
    check_summary(summary, "mawps", "rigl", 0.5)
    assert summary["pretrained"] == str(tiny_roberta)
    assert any(k.startswith("roberta/encoder/layer/0/") for k in summary["per_leaf_sparsity"])


@pytest.mark.slow
def test_a_sweep_of_both_models_and_its_report(tmp_path):
    """GTS and Graph2Tree swept into one folder (dense + RigL at two sparsities each), then one report: a table
    per model and one figure with both side by side."""
    root = tmp_path / "runs"
    for shortcut in ("gin/mawps_rigl.gin", "gin/mawps_g2t_rigl.gin"):
        assert sweep.main([f"--gin_file={shortcut}", "--algorithms=dense,rigl", "--sparsities=0.5,0.8", "--folds=0",
                           f"--workdir={root}", *tiny()]) == 0
    assert len(list(root.rglob("summary.json"))) == 6
    assert report.main([str(root), "--out", str(tmp_path / "report")]) == 0
    tables = report_tables.build_tables(report.load_summaries([root]))
    (group,) = [g for g in report_plots.model_groups(tables) if g[0].metric == "value_accuracy"]
    assert [t.model for t in group] == ["gts", "graph2tree"]
    fig = report_plots.plot_models_figure(group)
    assert [ax.get_title() for ax in fig.axes] == ["gts", "graph2tree"]
    for ax in fig.axes:
        assert sorted(line.get_label() for line in ax.get_lines()) == ["Dense", "Random+RigL"]
        assert sorted(float(x) for x in ax.get_xticks()) == [0.5, 0.8]
    png = tmp_path / "report" / "mawps_value_accuracy_models.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
