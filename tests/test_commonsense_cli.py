"""Every gin/{csqa,winogrande,race}_*.gin through scripts/train.py on a tiny random RoBERTa and the shared data:
a complete summary.json whose actual sparsity is within 0.005 of the target (GMP included), the fairseq
masking rule and mask-step order, and the commonsense CLI errors. The default suite runs one gin file per pipeline
kind (before / during / after / LTH); the whole matrix is ``slow``.

The runs share one checkpoint, one workdir parent (so the After and LTH runs of a dataset share its dense
run) and the session's compilation cache.
"""

import json
from pathlib import Path

import pytest
from conftest import ALGORITHMS, SHARED_DATA, SUMMARY_KEYS

pytest.importorskip("torch")
pytest.importorskip("transformers")

from smc_jax import sparsity as sp  # noqa: E402
from smc_jax.tasks.commonsense import data as cd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = SHARED_DATA
pytestmark = pytest.mark.skipif(not all((SHARED / cd.FOLDERS[d]).is_dir() for d in cd.DATASETS),
                                reason=f"commonsense data not found under {SHARED}")


@pytest.fixture(scope="module")
def checkpoint(tiny_roberta):
    return tiny_roberta


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("cs_runs")


def small(checkpoint, dataset: str, *extra: str) -> list[str]:
    """16 train / 16 eval questions, 4 updates of 8, 64 tokens, mask events every 2 updates, sparsity 0.36."""
    out = [f"--gin.PRETRAINED='{checkpoint}'", f"--gin.DATA_DIR='{SHARED / cd.FOLDERS[dataset]}'",
           "--gin.MAX_TRAIN_EXAMPLES=16", "--gin.MAX_EVAL_EXAMPLES=16", "--gin.BATCH_SIZE=8", "--gin.MAX_LENGTH=64",
           "--gin.CommonsenseTask.length_buckets=(64,)", "--gin.CommonsenseTask.eval_batch_size=16",
           "--gin.UPDATE_FREQUENCY=2", "--gin.SPARSITY=0.36", "--gin.TrainConfig.progress='off'"]
    if dataset == "race":
        out += ["--gin.NUM_EPOCHS=2", "--gin.CommonsenseTask.train_split='validation'",
                "--gin.CommonsenseTask.race_levels=('middle',)"]
    else:
        out += ["--gin.TRAIN_STEPS=4", "--gin.WARMUP_STEPS=1"]
    if dataset == "winogrande":
        out += ["--gin.CommonsenseTask.winogrande_size='xs'"]
    return out + list(extra)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# the default suite runs one file per pipeline kind (before, during, after, LTH); the rest of the matrix is slow
DEFAULT = {("csqa", "snip"), ("csqa", "gmp"), ("csqa", "omp_after"), ("csqa", "lth")}


@pytest.mark.parametrize("dataset, algorithm", [
    pytest.param(d, a, marks=() if (d, a) in DEFAULT else pytest.mark.slow)
    for d in ("csqa", "winogrande", "race") for a in ALGORITHMS])
def test_every_commonsense_gin_file_runs_to_a_complete_summary(train_main, runs, checkpoint, dataset, algorithm):
    workdir = runs / f"{dataset}_{algorithm}"
    status = train_main([f"--gin_file=gin/{dataset}_{algorithm}.gin", *small(checkpoint, dataset),
                         f"--gin.WORKDIR='{workdir}'"])
    assert status == 0
    summary = read(workdir / "summary.json")
    assert SUMMARY_KEYS <= set(summary) and summary["algorithm"] == algorithm and summary["task"] == dataset
    assert summary["fold"] is None and summary["model"] == "roberta" and summary["steps"] == 4
    assert summary["metrics"] == (["middle_accuracy"] if dataset == "race" else ["accuracy"])
    assert summary["reported"] == summary["selected"]["accuracy"] and 0 <= summary["reported"] <= 100
    gin_class = type(sp.ALGORITHMS[algorithm]).__name__
    fairseq_order = f"{gin_class}.fairseq_order = True" in (workdir / "config.gin").read_text()
    assert fairseq_order == (algorithm != "dense")  # written once, in gin/tasks/commonsense.gin
    target = summary["target_sparsity"]
    assert target == (0.0 if algorithm == "dense" else 1 - 0.8**2 if algorithm == "lth" else 0.36)
    assert abs(summary["actual_sparsity"] - target) <= 0.005, summary["actual_sparsity"]
    leaves = summary["per_leaf_sparsity"]  # SPEC §2.3 fairseq rule: embeddings and the head are prunable
    assert "roberta/embeddings/word_embeddings/embedding" in leaves
    assert ("classifier/out_proj/kernel" in leaves) == (dataset != "winogrande")
    assert not any("token_type" in k or "lm_head/dense" in k or "LayerNorm" in k or k.endswith("bias")
                   for k in leaves)
    if algorithm == "lth":
        assert [read(workdir / f"round_{k}" / "summary.json")["round"] for k in (1, 2)] == [1, 2]


def test_no_pruning_emb_heads_keeps_embeddings_and_the_head_dense(train_main, runs, checkpoint):
    workdir = runs / "csqa_omp_before_noemb"
    assert train_main(["--gin_file=gin/csqa_omp_before.gin", *small(checkpoint, "csqa"),
                       "--gin.NO_PRUNING_EMB_HEADS=True", f"--gin.WORKDIR='{workdir}'"]) == 0
    leaves = read(workdir / "summary.json")["per_leaf_sparsity"]
    assert leaves and not any("embeddings" in k or k.startswith("classifier") for k in leaves)
    assert "roberta/encoder/layer/0/attention/self/query/kernel" in leaves


def test_commonsense_cli_errors_are_one_line(train_main, runs, checkpoint, capsys):
    assert train_main(["--gin_file=gin/csqa_rigl.gin", "--gin.FOLD=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FOLD" in err and "TRAIN_STEPS" in err
    assert train_main(["--gin_file=gin/race_dense.gin", *small(checkpoint, "race"),
                       "--gin.CommonsenseTask.train_split='train'", f"--gin.WORKDIR='{runs / 'race_bad'}'"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "race train split not found" in err and "train_split" in err
    assert train_main(["--gin_file=gin/winogrande_dense.gin", *small(checkpoint, "winogrande"),
                       "--gin.CommonsenseTask.winogrande_size='xl'", f"--gin.WORKDIR='{runs / 'wino_bad'}'"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'xl' not found" in err
