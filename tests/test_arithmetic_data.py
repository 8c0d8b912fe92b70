import hashlib
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA

from smc_jax.tasks.arithmetic import data as A

SHARED = SHARED_DATA
ARITHMETIC = SHARED / "arithmetic"
needs_data = pytest.mark.skipif(not ARITHMETIC.is_dir(), reason=f"no shared data at {ARITHMETIC}")


def problem(question, numbers, equation):
    return A.preprocess(question, numbers, equation)


# ------------------------------------------------------------------------------ preprocessing


def test_preprocess_replaces_numbers_and_records_positions():
    p = problem("He has number0 books on number1 shelves .", "56.0 9.0", "* number0 number1")
    assert p.tokens == ("He", "has", "NUM", "books", "on", "NUM", "shelves", ".")
    assert p.num_pos == (2, 5)
    assert p.numbers == ("56.0", "9.0")
    assert p.equation == ("*", "N0", "N1")


def test_vocab_generate_numbers_count_train_and_dev_operators_from_train():
    train = [problem("a number0", "1", "* number0 100.0")] * 3
    train += [problem("b number0 number1", "1 2", "+ number0 number1")]
    dev = [problem("c number0 number1 number2", "1 2 3", "/ number0 100.0")] * 2 + [problem("d", "", "- 7.0 2.0")]
    vocab = A.build_vocab(train, dev)
    # 100.0 appears 3 + 2 = 5 times (a generate number); 7.0 and 2.0 once; '/' and '-' only in dev
    assert vocab.output_words == ("*", "+", "100.0", "N0", "N1", "N2", "UNK")
    assert vocab.num_start == 2 and vocab.copy_nums == 3 and vocab.generate_nums == ("100.0",)
    assert vocab.input_words == ("PAD", "NUM", "UNK", "a", "b")
    assert A.build_vocab(train, dev, dev_words=True).input_words[-2:] == ("c", "d")


def test_encode_unknown_constants_go_to_unk_with_a_num_stack():
    vocab = A.build_vocab([problem("x number0", "1", "+ number0 100.0")] * 5, [problem("y", "1 2", "+ 1 2")])
    example = A.encode(problem("x zz number0 number1", "3.0 3.0", "3.0 + number0"), vocab)
    assert example.input_ids == (3, 2, 1, 1)  # 'zz' is unknown
    assert example.target_ids == (vocab.output_index["UNK"], vocab.output_index["+"], vocab.output_index["N0"])
    assert example.num_stack == ((0, 1),)
    unknown_operator = A.encode(problem("x number0", "5.0", "* number0 number0"), vocab)
    assert unknown_operator.num_stack == ((0,),)  # an operator unseen in train is UNK too, as in the original
    other = A.encode(problem("x number0", "5.0", "+ number0 9.0"), vocab)
    assert other.num_stack == ((0,),)  # no number equals 9.0: every number is a candidate


def test_epoch_batches_shuffle_cut_and_sort_by_length():
    lengths = np.arange(10)
    batches = A.epoch_batches(10, 4, seed=1, epoch=0, lengths=lengths)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert all(list(lengths[b]) == sorted(lengths[b], reverse=True) for b in batches)
    again = A.epoch_batches(10, 4, seed=1, epoch=0, lengths=lengths)
    assert all((a == b).all() for a, b in zip(batches, again))
    other = A.epoch_batches(10, 4, seed=1, epoch=1)
    assert not all(set(a) == set(b) for a, b in zip(batches, other))


# ---------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("tokens, value", [
    (["-", "5", "3"], 2.0),
    (["/", "+", "1", "2", "4"], 0.75),
    (["*", "50%", "8"], 4.0),
    (["+", "1(1/2)", "1"], 2.5),
    (["/", "3/4", "2"], 0.375),
    (["/", "1", "0"], None),
    (["+", "1"], None),
    (["*", "2", "3", "4"], None),
    (["^", "2", "3"], None),  # the original's '^' branch rejects every power
])
def test_compute_prefix_expression(tokens, value):
    assert A.compute_prefix_expression(tokens) == (None if value is None else pytest.approx(value))


def test_number_values_never_run_code():
    with pytest.raises(ValueError):
        A.number_value("__import__('os')")


def test_scoring_rules():
    vocab = A.build_vocab([problem("q number0 number1", "1 2", "- number0 number1")] * 5
                          + [problem("q", "", "+ 1 1"), problem("q", "", "* 1 1"), problem("q", "", "/ 1 1")],
                          [problem("q", "1 2 3 4 5 6", "+ 1 1")])
    assert vocab.copy_nums == 6
    ids = vocab.output_index
    example = A.encode(problem("q number0 number1", "6.0 2.0", "- number0 number1"), vocab)
    assert A.score([ids["-"], ids["N0"], ids["N1"]], example, vocab) == (True, True)  # rule 1
    assert A.score([ids["-"], ids["N1"], ids["N0"]], example, vocab) == (False, False)
    same_value = A.encode(problem("q number0 number1", "6.0 2.0", "* number0 number1"), vocab)
    assert A.score([ids["*"], ids["N1"], ids["N0"]], same_value, vocab) == (True, False)  # rule 4: value only
    assert A.score([ids["+"], ids["N0"], ids["N0"]], same_value, vocab) == (True, False)  # 12 == 12
    equal_numbers = A.encode(problem("q number0 number1", "3.0 3.0", "+ number0 number1"), vocab)
    assert A.score([ids["+"], ids["N1"], ids["N0"]], equal_numbers, vocab) == (True, True)  # rule 3: strings
    assert A.score([ids["-"], ids["N0"], ids["N5"]], example, vocab) == (False, False)  # N5 out of range
    assert A.score([ids["/"], ids["N0"], ids["-"], ids["N1"], ids["N1"]], example, vocab) == (False, False)
    assert A.score([ids["-"], ids["N0"]], example, vocab) == (False, False)  # malformed
    metrics = A.accuracy([[ids["-"], ids["N0"], ids["N1"]], [ids["*"], ids["N1"], ids["N0"]]], [example, same_value],
                         vocab)
    assert metrics["value_accuracy"] == 100.0 and metrics["equation_accuracy"] == 50.0 and metrics["num_eval"] == 2


def test_unk_targets_resolve_through_the_num_stack():
    vocab = A.build_vocab([problem("q number0", "1", "+ number0 number0")] * 5, [problem("q", "1 2", "+ 1 1")])
    example = A.encode(problem("q number0 number1", "4.0 7.0", "+ number0 7.0"), vocab)
    ids = vocab.output_index
    assert example.num_stack == ((1,),)
    assert A.score([ids["+"], ids["N0"], ids["N1"]], example, vocab) == (True, True)


# ------------------------------------------------------------------------------- real files


@needs_data
@pytest.mark.parametrize("dataset, fold, sizes", [("mawps", 0, (1537, 384)), ("asdiv", 4, (951, 266)),
                                                  ("svamp", None, (3138, 1000))])
def test_real_splits(dataset, fold, sizes):
    root = A.resolve_data_dir(ARITHMETIC, dataset)
    train = A.load_problems(A.split_path(root, dataset, fold, "train"))
    dev = A.load_problems(A.split_path(root, dataset, fold, "dev"))
    assert (len(train), len(dev)) == sizes
    vocab = A.build_vocab(train, dev)
    assert vocab.output_words[:vocab.num_start] and set(vocab.output_words[:vocab.num_start]) <= set("+-*/")
    assert vocab.copy_nums == max(len(p.numbers) for p in train + dev)
    encoded = [A.encode(p, vocab) for p in dev]
    assert all(len(e.num_pos) == len(e.numbers) for e in encoded)
    # the gold equations score (nearly) perfectly; a UNK-bearing gold id sequence is not a valid prediction
    metrics = A.accuracy([e.target_ids for e in encoded], encoded, vocab)
    assert metrics["value_correct"] == sum(1 for e in encoded if not e.num_stack)


@needs_data
def test_mawps_fold0_vocabulary():
    root = A.resolve_data_dir(ARITHMETIC, "mawps")
    train = A.load_problems(A.split_path(root, "mawps", 0, "train"))
    dev = A.load_problems(A.split_path(root, "mawps", 0, "dev"))
    vocab = A.build_vocab(train, dev)
    assert vocab.output_words == ("-", "+", "*", "/", "0.5", "3.0", "100.0", "12.0", "0.01", "0.1", "1.0", "4.0",
                                  "7.0", "N0", "N1", "N2", "N3", "N4", "N5", "N6", "UNK")


def test_packaged_archive_holds_exactly_the_checksummed_files():
    with tarfile.open(A.PACKAGED_ARCHIVE, "r:xz") as tar:
        members = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar}
    assert members == A.SHA256
    assert (A.PACKAGED_ARCHIVE.parent / "SVAMP_LICENSE").read_text().startswith("MIT License")


@needs_data
def test_packaged_files_equal_the_shared_copy():
    with tarfile.open(A.PACKAGED_ARCHIVE, "r:xz") as tar:
        for member in tar:
            assert tar.extractfile(member).read() == (ARITHMETIC / member.name).read_bytes(), member.name


@pytest.fixture
def packaged(tmp_path, monkeypatch):
    """The packaged data extracted into a fresh cache (no $SMC_DATA_DIR)."""
    monkeypatch.delenv("SMC_DATA_DIR", raising=False)
    monkeypatch.setenv("SMC_CACHE_DIR", str(tmp_path / "cache"))
    return A.resolve_data_dir(None, "mawps")


@needs_data
def test_packaged_data_is_the_default_and_loads(packaged, tmp_path):
    assert packaged.is_relative_to(tmp_path / "cache" / "arithmetic")
    digest = hashlib.sha256(A.PACKAGED_ARCHIVE.read_bytes()).hexdigest()
    assert packaged.name == f"svamp_data-{digest[:16]}"  # keyed by the archive: a new one never mixes in
    assert [p.name for p in packaged.parent.iterdir()] == [packaged.name]  # no temporary folder left behind
    for split in ("train", "dev"):
        ours = A.load_problems(A.split_path(packaged, "mawps", 0, split))
        assert ours == A.load_problems(A.split_path(ARITHMETIC, "mawps", 0, split))
        assert len(ours) == {"train": 1537, "dev": 384}[split]
    assert A.resolve_data_dir(None, "svamp") == packaged  # a second call reuses the extraction


def test_corrupted_extraction_names_the_folder_to_delete(packaged):
    path = packaged / "cv_mawps" / "fold0" / "dev.csv"
    payload = bytearray(path.read_bytes())
    payload[100] ^= 1
    path.write_bytes(bytes(payload))
    with pytest.raises(ValueError) as err:
        A.resolve_data_dir(None, "mawps")
    message = str(err.value)
    assert "\n" not in message and f"in {packaged} is corrupted (cv_mawps/fold0/dev.csv" in message
    assert "delete that folder" in message
    shutil.rmtree(packaged)
    assert A.resolve_data_dir(None, "mawps") == packaged and A._corrupt_file(packaged) is None


def test_concurrent_extraction_keeps_the_winner(tmp_path):
    target = tmp_path / "svamp_data-x"
    A._extract(A.PACKAGED_ARCHIVE, target)
    A._extract(A.PACKAGED_ARCHIVE, target)  # lost the race: its rename fails, the first folder stays
    assert A._corrupt_file(target) is None and [p.name for p in tmp_path.iterdir()] == [target.name]


@needs_data
def test_smc_data_dir_beats_the_package_and_data_dir_beats_both(tmp_path, monkeypatch):
    monkeypatch.setenv("SMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SMC_DATA_DIR", str(SHARED))
    assert A.resolve_data_dir(None, "mawps") == ARITHMETIC
    own = tmp_path / "own"
    (own / "cv_mawps" / "fold0").mkdir(parents=True)
    assert A.resolve_data_dir(own, "mawps") == own
    assert not (tmp_path / "cache").exists()  # the package was never extracted
    with pytest.raises(ValueError, match=r"DATA_DIR '.*own' has no mawps-asdiv-a_svamp/ folder for svamp.*laid out"):
        A.resolve_data_dir(own, "svamp")
    with pytest.raises(ValueError, match=r"missing data file cv_mawps/fold0/train.csv in .*own; .*laid out like"):
        A.split_path(own, "mawps", 0, "train")
    monkeypatch.setenv("SMC_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"has no cv_mawps/ folder for mawps.*unset \$SMC_DATA_DIR"):
        A.resolve_data_dir(None, "mawps")


def test_bad_dataset_fold_and_split():
    with pytest.raises(ValueError, match="unknown arithmetic dataset 'gsm8k'; choose one of: mawps, asdiv, svamp"):
        A.split_path(Path("."), "gsm8k", 0, "train")
    with pytest.raises(ValueError, match="FOLD must be 0..4 or 'all'"):
        A.split_path(Path("."), "mawps", 7, "train")
    with pytest.raises(ValueError, match="leave FOLD unset"):
        A.split_path(Path("."), "svamp", 0, "train")
    with pytest.raises(ValueError, match="split must be 'train' or 'dev'"):
        A.split_path(Path("."), "mawps", 0, "test")
