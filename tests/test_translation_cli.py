"""Every gin/translation_<setting>_<algorithm>.gin through scripts/train.py on a tiny random MBart with a
FLORES-trained sentencepiece tokenizer and the shared FLORES-200 data: a complete summary.json with the 20
directions and the actual sparsity within 0.005 of the target. The default suite runs the dense and the RigL file of
2-to-2; the matrix, the resume check and a tiny sweep -> report are ``slow``."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import ALGORITHMS, SHARED_DATA, SUMMARY_KEYS

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from smc_jax.tasks.translation import data as td  # noqa: E402

FLORES = SHARED_DATA / "flores200"
pytestmark = pytest.mark.skipif(not FLORES.is_dir(), reason=f"FLORES-200 not found under {SHARED_DATA}")
DEFAULT = {("2to2", "dense"), ("2to2", "rigl")}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from hf_fixtures import tiny_translation_checkpoint

    return tiny_translation_checkpoint(tmp_path_factory.mktemp("tr_cli_ckpt"), SHARED_DATA)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("tr_runs")


def small(checkpoint, runs, *extra: str) -> list[str]:
    """8 pairs per direction from FLORES dev, 1 devtest pair per direction (the 20), 4 updates of 2 micro-batches,
    one 256-position bucket, beam 2 for 4 steps, mask events every 2 updates, sparsity 0.36."""
    return [f"--gin.PRETRAINED='{checkpoint}'", f"--gin.DATA_DIR='{FLORES}'",
            "--gin.TranslationTask.source='flores200'", f"--gin.TranslationTask.cache_dir='{runs / 'cache'}'",
            "--gin.MAX_TRAIN_EXAMPLES=8", "--gin.MAX_EVAL_EXAMPLES=1", "--gin.TRAIN_STEPS=4", "--gin.WARMUP_STEPS=1",
            "--gin.UPDATE_FREQUENCY=2", "--gin.SPARSITY=0.36", "--gin.MAX_LENGTH=256", "--gin.EVAL_EVERY=None",
            "--gin.TranslationTask.length_buckets=(256,)", "--gin.TranslationTask.truncate_eval=True",
            "--gin.TranslationTask.beam_size=2", "--gin.TranslationTask.max_len_b=4",
            "--gin.TranslationTask.eval_batch_size=20", "--gin.TrainConfig.progress='off'", *extra]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def check_summary(summary: dict, setting: str, algorithm: str) -> None:
    assert SUMMARY_KEYS <= set(summary) and summary["algorithm"] == algorithm and summary["task"] == setting
    assert summary["model"] == "mbart" and summary["selection"] == "last" and summary["steps"] == 4
    assert summary["metric"] == "bleu" and summary["metrics"] == ["bleu", "sacrebleu", "chrf"]
    assert summary["reported"] == summary["selected"]["bleu"] == summary["final"]["bleu"]
    for name in ("bleu", "sacrebleu", "chrf"):
        assert all(f"{name}/{d}" in summary["final"] for d in td.EVAL_DIRECTIONS)
    target = summary["target_sparsity"]
    assert target == (0.0 if algorithm == "dense" else 1 - 0.8**2 if algorithm == "lth" else 0.36)
    assert abs(summary["actual_sparsity"] - target) <= 0.005, summary["actual_sparsity"]
    leaves = summary["per_leaf_sparsity"]
    if algorithm != "dense":  # spec §8: the shared embedding and both position tables are prunable
        assert {"model/shared/embedding", "model/encoder/embed_positions/embedding",
                "model/decoder/embed_positions/embedding"} <= set(leaves)
        assert not any("final_logits_bias" in k or "layer_norm" in k or k.endswith("bias") for k in leaves)


@pytest.mark.parametrize("setting, algorithm", [
    pytest.param(s, a, marks=() if (s, a) in DEFAULT else pytest.mark.slow)
    for s in ("2to2", "5to5", "10to10") for a in ALGORITHMS])
def test_every_translation_gin_file_runs_to_a_complete_summary(train_main, runs, checkpoint, setting, algorithm):
    workdir = runs / f"{setting}_{algorithm}"
    assert train_main([f"--gin_file=gin/translation_{setting}_{algorithm}.gin", *small(checkpoint, runs),
                       f"--gin.WORKDIR='{workdir}'"]) == 0
    check_summary(read(workdir / "summary.json"), setting, algorithm)


class Killed(BaseException):
    pass


@pytest.mark.slow
def test_killed_run_resumes_at_the_same_batch_and_summary(train_main, runs, checkpoint, monkeypatch):
    """Killed while assembling update 3 (after the evaluation and checkpoint at update 2), then rerun: it resumes at
    the stream position of update 3 and ends with the uninterrupted run's summary."""
    from smc_jax.tasks.translation.task import TranslationTask

    whole, cut = runs / "resume_whole", runs / "resume_cut"
    common = ["--gin_file=gin/translation_2to2_rigl.gin", *small(checkpoint, runs), "--gin.EVAL_EVERY=2"]
    assert train_main([*common, f"--gin.WORKDIR='{whole}'"]) == 0
    original, calls = TranslationTask.make_update, []

    def dying(self, update):
        calls.append(1)
        if len(calls) == 3:
            raise Killed()
        return original(self, update)

    monkeypatch.setattr(TranslationTask, "make_update", dying)
    with pytest.raises(Killed):
        train_main([*common, f"--gin.WORKDIR='{cut}'"])
    monkeypatch.setattr(TranslationTask, "make_update", original)
    assert not (cut / "summary.json").exists()
    assert train_main([*common, f"--gin.WORKDIR='{cut}'"]) == 0
    a, b = read(whole / "summary.json"), read(cut / "summary.json")
    skip = {"wall_time_s", "train_steps_per_s"}
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
    shutil.rmtree(cut)


def test_translation_cli_errors_are_one_line(train_main, runs, checkpoint, capsys):
    for extra, message in ((["--gin.BATCH_SIZE=16"], "MAX_TOKENS"),
                           (["--gin.MAX_TOKENS=64"], "MAX_TOKENS=64 is smaller"),
                           (["--gin.EVAL_DIRECTIONS=('en-xx',)"], "unknown language 'xx'")):
        assert train_main(["--gin_file=gin/translation_2to2_dense.gin", *small(checkpoint, runs), *extra,
                           f"--gin.WORKDIR='{runs / 'bad'}'"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


@pytest.mark.slow
def test_a_tiny_translation_sweep_draws_the_bleu_panel(checkpoint, tmp_path):
    from smc_jax.cli import report, report_tables, sweep

    runs = tmp_path / "runs"
    extra = [b for b in small(checkpoint, tmp_path) if not b.startswith("--gin.SPARSITY")]
    assert sweep.main(["--gin_file=gin/translation_2to2_rigl.gin", "--algorithms=dense,rigl,gmp,lth",
                       "--sparsities=0.2,0.36", f"--workdir={runs}", *extra]) == 0
    assert report.main([str(runs), "--out", str(tmp_path / "report")]) == 0
    (table,) = [t for t in report_tables.build_tables(report.load_summaries([runs])) if t.metric == "bleu"]
    assert table.task_name == "2to2" and table.model == "mbart"
    for algorithm in ("rigl", "gmp", "lth"):
        for sparsity in (0.2, 0.36):
            assert table.value(algorithm, sparsity) is not None
    (per_direction,) = report_tables.direction_tables(report.load_summaries([runs]))
    assert sorted(per_direction.directions) == sorted(td.EVAL_DIRECTIONS)
    assert ("rigl", 0.36) in per_direction.rows and ("lth", 0.2) in per_direction.rows
    text = (tmp_path / "report" / "report.md").read_text()
    assert "### 2to2 / mbart (" in text and " / bleu per direction\n" in text
