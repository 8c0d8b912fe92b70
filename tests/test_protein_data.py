"""Protein data layer: the ESM tokenizer against HF's EsmTokenizer and on tricky strings, both truncation modes,
HotProtein pickles + FASTA files written here, FLIP meltome and TAPE stability from the shared files (counts as their
SOURCE.md / spec give them), the validation carve and the quantile bins, and the hub-schema loaders on local files
(no network)."""

import pickle
import zipfile

import numpy as np
import pytest
from conftest import SHARED_DATA

from smc_jax.tasks.protein import data, hotprotein, hub, records
from smc_jax.tasks.protein.tokenizer import ESM_VOCAB, ProteinTokenizer, esm_hf_tokenizer, write_vocab

MELTOME = SHARED_DATA / "flip_meltome_early"
TAPE = SHARED_DATA / "tape_stability"
needs_meltome = pytest.mark.skipif(not MELTOME.is_dir(), reason=f"{MELTOME} not found")
needs_tape = pytest.mark.skipif(not TAPE.is_dir(), reason=f"{TAPE} not found")

# spec/protein.md §2, id: token
SPEC_VOCAB = ("<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>").split()
RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO.-"


@pytest.fixture(autouse=True)
def _no_data_root(monkeypatch):
    monkeypatch.delenv("SMC_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def tok():
    return ProteinTokenizer()


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    pytest.importorskip("transformers")
    return esm_hf_tokenizer(tmp_path_factory.mktemp("vocab"))


# --------------------------------------------------------------------------------------------- tokenizer


def test_vocabulary_is_the_spec_alphabet(tok):
    assert list(ESM_VOCAB) == SPEC_VOCAB and len(tok) == 33
    assert (tok.cls_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 32)


def test_ids_equal_esm_tokenizer_on_in_vocabulary_strings(tok, hf):
    assert tok.encode("MKTAYU").tolist() == [0, 20, 15, 11, 5, 19, 26, 2] == hf("MKTAYU")["input_ids"]
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list(RESIDUES), size=rng.integers(1, 60))) for _ in range(200)]
    ours = tok.encode_batch(seqs, truncation="esm", max_length=1024)
    assert [o.tolist() for o in ours] == hf(seqs)["input_ids"]
    ids, mask = tok.pad(ours[:5])
    theirs = hf(seqs[:5], padding=True)
    assert ids.tolist() == theirs["input_ids"] and mask.tolist() == theirs["attention_mask"]
    assert ids.dtype == np.int32 and ours[0].dtype == np.int32


def test_normalisation_of_case_unknowns_and_whitespace(tok, hf):
    assert tok.encode("mktayu").tolist() == tok.encode("MKTAYU").tolist()
    assert len(hf("mktayu")["input_ids"]) == 3  # HF: the lower-case run collapses into one <unk>
    # B, U, Z, O are residues of the vocabulary; J is not, nor are * and digits: one X per character
    assert tok.encode("BUZO").tolist() == [0, 25, 26, 27, 28, 2]
    assert tok.encode("b*J").tolist() == [0, 25, 24, 24, 2]
    assert hf("b*J")["input_ids"] == [0, 3, 2]
    assert tok.encode("AJJJ9A").tolist() == [0, 5, 24, 24, 24, 24, 5, 2]
    assert tok.encode(" M K\nT\t\r").tolist() == [0, 20, 15, 11, 2]
    assert tok.normalize("mk jé-.") == "MKXX-."
    assert tok.decode(tok.pad([tok.encode("mkj")], length=6)[0]) == "<cls>MKX<eos>"
    unk = ProteinTokenizer(unknown=None)
    assert unk.encode("AJ*").tolist() == [0, 5, 3, 3, 2]


def test_truncation_modes_at_a_small_max_length(tok, hf):
    # smc: the first max_length tokens of cls + residues + eos (a cut row loses eos); esm: cls + residues + eos
    assert tok.encode("ACDEFG", truncation="smc", max_length=5).tolist() == [0, 5, 23, 13, 9]
    assert tok.encode("ACDE", truncation="smc", max_length=5).tolist() == [0, 5, 23, 13, 9]
    assert tok.encode("ACD", truncation="smc", max_length=5).tolist() == [0, 5, 23, 13, 2]
    assert tok.encode("ACDEFG", truncation="esm", max_length=5).tolist() == [0, 5, 23, 13, 2]
    assert tok.encode("ACDEFG", truncation="esm", max_length=5).tolist() == hf(
        "ACDEFG", truncation=True, max_length=5)["input_ids"]
    batch = tok.encode_batch(["ACDEFG", "AC", "ACD", "ACDE"], truncation="smc", max_length=5)
    assert [b.tolist() for b in batch] == [[0, 5, 23, 13, 9], [0, 5, 23, 2], [0, 5, 23, 13, 2], [0, 5, 23, 13, 9]]
    ids, mask = tok.pad(batch, length=6)
    assert ids[1].tolist() == [0, 5, 23, 2, 1, 1] and mask[1].tolist() == [1, 1, 1, 1, 0, 0]
    long = "A" * 1100
    smc, esm = tok.encode(long), tok.encode(long, truncation="esm")
    assert len(smc) == 1022 and smc[-1] == 5 and len(esm) == 1024 and esm[-1] == 2


def test_tokenizer_errors(tok):
    with pytest.raises(ValueError, match=r"protein sequence 'P2' is empty.*drop it"):
        tok.encode_batch(["MK", " \n"], names=["P1", "P2"])
    with pytest.raises(ValueError, match="unknown truncation 'fair'"):
        tok.encode("MK", truncation="fair")
    with pytest.raises(ValueError, match="max_length must be >= 3"):
        tok.encode("MK", max_length=2)
    with pytest.raises(ValueError, match="more than the padded length 3"):
        tok.pad([tok.encode("MKT")], length=3)
    with pytest.raises(ValueError, match="lacks <eos>"):
        ProteinTokenizer(["<cls>", "<pad>", "<unk>", "A"])


def test_vocab_file_round_trip(tmp_path, hf):
    path = write_vocab(cache_dir=tmp_path)
    assert path.read_text().split() == SPEC_VOCAB and write_vocab(cache_dir=tmp_path) == path
    hf.save_pretrained(tmp_path / "ckpt")
    assert ProteinTokenizer.from_pretrained(tmp_path / "ckpt").tokens == ESM_VOCAB
    with pytest.raises(ValueError, match="cannot load the tokenizer"):
        ProteinTokenizer.from_pretrained(tmp_path / "nothing")


# -------------------------------------------------------------------------------------------- HotProtein


def _hotprotein(root, split_file, fasta_dir, train, test, fastas):
    """Write a split pickle ({name: label} dicts for train/test) and FASTA files {name: text}."""
    (root / fasta_dir).mkdir(parents=True, exist_ok=True)
    table = {"train_names": list(train), "train_labels": list(train.values()),
             "test_names": list(test), "test_labels": list(test.values())}
    (root / split_file).write_bytes(pickle.dumps(table))
    for name, text in fastas.items():
        (root / fasta_dir / f"{name}.fasta").write_text(text)


def test_hotprotein_reads_as_smc_bench(tmp_path):
    fastas = {"p1": ">p1 desc\nMKT\nAYU\n", "p2": ">p2\nmkv\n", "p3": ">p3\nAC\n>p3b\nDE\n", "p4": ">x\nGG\n"}
    _hotprotein(tmp_path, "S/S_target_classification.pkl", "S/S_target",
                {"p1": 1.0, "p2": 3.7, "p3": 0.0}, {"p4": 4.0}, fastas)
    splits = hotprotein.load_hotprotein("hp_s", tmp_path)
    assert list(splits) == ["train", "test"]
    train = splits["train"]
    assert train.names.tolist() == ["p1", "p2", "p3"] and train.labels.dtype == np.int64
    assert train.labels.tolist() == [1, 3, 0] and splits["test"].labels.tolist() == [4]
    # first line dropped, the rest joined: a second record's header joins the sequence (SMC-Bench's reader)
    assert train.sequences.tolist() == ["MKTAYU", "mkv", "AC>p3bDE"]
    first = hotprotein.load_hotprotein("hp_s", tmp_path, fasta_mode="first_record")["train"]
    assert first.sequences.tolist() == ["MKTAYU", "mkv", "AC"]
    shifted = hotprotein.load_hotprotein("hp_s", tmp_path, label_offset=-1, num_classes=6)["train"]
    assert shifted.labels.tolist() == [2, 4, 1]
    targets = hotprotein.load_hotprotein("hp_s", tmp_path, regression=True)["train"]
    assert targets.labels.tolist() == [1.0, 3.7, 0.0]
    few = hotprotein.load_hotprotein("hp_s", tmp_path, limits={"train": 2})
    assert len(few["train"]) == 2 and len(few["test"]) == 1
    carved = hotprotein.load_hotprotein("hp_s", tmp_path, valid_fraction=0.34, valid_seed=1)
    assert len(carved["train"]) == 2 and len(carved["valid"]) == 1


def test_hotprotein_errors(tmp_path):
    _hotprotein(tmp_path, "S/S_target_classification.pkl", "S/S_target", {"p1": 1.0, "gone": 2.0}, {"p2": 5.0},
                {"p1": ">p1\nMK\n", "p2": ">p2\nMK\n"})
    with pytest.raises(ValueError, match=r"no FASTA file for 'gone' \(expected .*S_target/gone\.fasta\)"):
        hotprotein.load_hotprotein("hp_s", tmp_path)
    assert len(hotprotein.load_hotprotein("hp_s", tmp_path, limits={"train": 1, "test": 0})["train"]) == 1
    message = r"'p2' has label 5\.0, which is class 5 after label_offset=0, outside \[0, 5\)"
    with pytest.raises(ValueError, match=message):
        hotprotein.load_split_pickle(tmp_path / "S/S_target_classification.pkl", tmp_path / "S/S_target", "test",
                                     num_classes=5)
    with pytest.raises(ValueError, match="class -1 after label_offset=2"):
        hotprotein.load_split_pickle(tmp_path / "S/S_target_classification.pkl", tmp_path / "S/S_target", "train",
                                     num_classes=5, label_offset=2, limit=1)
    with pytest.raises(ValueError, match="Google Drive"):
        hotprotein.load_hotprotein("hp_s")
    with pytest.raises(ValueError, match=r"hp_s2c2 needs fold 0\.\.9"):
        hotprotein.load_hotprotein("hp_s2c2", tmp_path)
    _hotprotein(tmp_path, "d1/d1_3_classification.pkl", "d1/d1_fasta_clean", {"a": 1.0}, {"b": 0.0},
                {"a": ">a\nMK\n", "b": ">b\nKM\n"})
    assert hotprotein.load_hotprotein("hp_s2c2", tmp_path, fold=3)["train"].labels.tolist() == [1]
    with pytest.raises(ValueError, match=r"d1_1_classification\.pkl not found .*has: d1_3_classification\.pkl"):
        hotprotein.load_hotprotein("hp_s2c2", tmp_path, fold=1)
    with pytest.raises(ValueError, match="hp_s has no folds"):
        hotprotein.load_hotprotein("hp_s", tmp_path, fold=0)


# ----------------------------------------------------------------------------------------------- meltome


@needs_meltome
def test_meltome_early_clustered_task():
    raw = data.read_meltome_csv(MELTOME / "clustered_task.csv")
    assert {s: len(v) for s, v in raw.items()} == {"train": 2940, "test": 1504}
    splits = data.load_meltome(MELTOME, meltome_split="clustered_task")
    test = splits["test"]
    assert len(test) == 752 and len(set(test.sequences)) == 752  # every test row appeared twice
    assert len(splits["train"]) + len(splits["valid"]) == 2940 and len(splits["valid"]) == 294
    seqs = {s: set(v.sequences) for s, v in splits.items()}
    assert not (seqs["train"] & seqs["valid"] or seqs["train"] & seqs["test"] or seqs["valid"] & seqs["test"])
    again = data.load_meltome(MELTOME, meltome_split="clustered_task")
    assert again["valid"].names.tolist() == splits["valid"].names.tolist()
    other = data.load_meltome(MELTOME, meltome_split="clustered_task", valid_seed=1)
    assert other["valid"].names.tolist() != splits["valid"].names.tolist()
    assert len(data.load_meltome(MELTOME, meltome_split="clustered_task", dedupe="none")["test"]) == 1504
    assert splits["train"].labels.dtype == np.float64 and 38 < splits["train"].labels.min() < 70


@needs_meltome
def test_meltome_replicates_never_straddle_train_and_valid():
    full = data.load_meltome(MELTOME / "full_task.csv", dedupe="none")
    assert len(full["train"]) + len(full["valid"]) == 5251 and "test" not in full
    assert len(set(full["valid"].sequences)) == 341  # round(0.1 * 3413 distinct sequences)
    assert not set(full["train"].sequences) & set(full["valid"].sequences)
    mean = data.load_meltome(MELTOME / "full_task.csv", dedupe="mean", valid_fraction=0.0)
    assert len(mean["train"]) == 3413


@needs_meltome
def test_meltome_bins_fit_on_train():
    splits = data.load_meltome(MELTOME, meltome_split="clustered_task", valid_fraction=0.0)
    edges = data.bin_edges(splits["train"].labels)
    np.testing.assert_allclose(edges, [49.1, 53.2], atol=0.05)  # spec: train tertile edges
    classes, fitted = data.binned(splits)
    np.testing.assert_array_equal(fitted, edges)
    counts = np.bincount(classes["train"].labels, minlength=3)
    assert counts.sum() == 2940 and counts.max() - counts.min() <= 1
    priors = data.class_priors(classes["test"].labels, 3)
    assert priors.sum() == pytest.approx(1.0) and priors.min() > 0.2
    np.testing.assert_array_equal(data.apply_bins([40.0, 49.1, 50.0, 53.2, 60.0], [49.1, 53.2]), [0, 1, 1, 2, 2])
    explicit = data.bin_edges(None, "edges", edges=(45.0, 55.0))
    assert data.apply_bins(splits["train"].labels, explicit).max() == 2
    hp = np.bincount(data.apply_bins(splits["train"].labels, data.HOTPROTEIN_EDGES), minlength=5)
    assert hp[:2].sum() == 0 and hp[2] + hp[3] == 2940  # human Tm: mostly two of the five bins occupied
    with pytest.raises(ValueError, match="must increase strictly"):
        data.bin_edges(None, "edges", edges=(50.0, 50.0))
    with pytest.raises(ValueError, match="num_bins must be >= 2"):
        data.bin_edges(splits["train"].labels, num_bins=1)
    with pytest.raises(ValueError, match="unknown bin scheme"):
        data.bin_edges(splits["train"].labels, "kmeans")


def test_meltome_csv_errors_and_flip_validation_flag(tmp_path):
    bad = tmp_path / "mixed_split.csv"
    bad.write_text("sequence,tm,set\nMKT,50.0,train\n")
    with pytest.raises(ValueError, match=r"mixed_split\.csv: no 'target' column \(it has: sequence, tm, set\)"):
        data.load_meltome(tmp_path)
    flip = tmp_path / "human.csv"
    flip.write_text("sequence,target,set,validation\nMKT,50.0,train,\nMKV,51.0,train,True\nMKA,52.0,test,\n"
                    "MKC,53.0,train,\n")
    splits = data.load_meltome(tmp_path, meltome_split="human")
    assert {s: v.sequences.tolist() for s, v in splits.items()} == {"train": ["MKT", "MKC"], "valid": ["MKV"],
                                                                    "test": ["MKA"]}
    assert splits["valid"].names.tolist() == ["human:1"]
    with pytest.raises(ValueError, match=r"no clustered_task\.csv .*has human, mixed_split\); set meltome_split"):
        data.load_meltome(tmp_path, meltome_split="clustered_task")
    with pytest.raises(ValueError, match="unknown meltome_split"):
        data.load_meltome(tmp_path, meltome_split="atlas")


@needs_meltome
def test_meltome_resolves_under_smc_data_dir(monkeypatch):
    monkeypatch.setenv("SMC_DATA_DIR", str(SHARED_DATA))
    assert len(data.load_splits("meltome", meltome_split="clustered_task")["test"]) == 752
    with pytest.raises(ValueError, match=r"flip_meltome_early has clustered_task, full_task"):
        data.load_meltome()


def test_flip_zip_extraction_without_network(tmp_path, monkeypatch):
    folder = tmp_path / "protein" / "flip_meltome"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "splits.zip", "w") as z:
        z.writestr("splits/human.csv", "sequence,target,set\nMKT,50.0,train\nMKV,40.0,test\n")
        z.writestr("__MACOSX/splits/._human.csv", "junk")
    path = hub.flip_meltome_csv("human", cache_dir=tmp_path)
    assert path == folder / "human.csv" and data.read_meltome_csv(path)["test"].sequences.tolist() == ["MKV"]
    with pytest.raises(ValueError, match=r"holds no human_cell\.csv \(it has: human\)"):
        hub.flip_meltome_csv("human_cell", cache_dir=tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="HF_DATASETS_OFFLINE is set"):
        hub.flip_meltome_csv("mixed_split", cache_dir=tmp_path / "empty")


# ---------------------------------------------------------------------------------------- TAPE stability


@needs_tape
def test_tape_stability_shared_files(tok):
    splits = data.load_tape_stability(TAPE)
    assert {s: len(v) for s, v in splits.items()} == {"train": 53614, "valid": 2512, "test": 12851}
    assert set(np.unique(splits["train"].lengths)) == {43, 50} and set(np.unique(splits["valid"].lengths)) == {50}
    assert splits["test"].labels.mean() == pytest.approx(1.00, abs=0.01)
    assert splits["train"].names[0] == "stability.train:0"
    assert len(data.load_tape_stability(TAPE, dedupe="mean")["train"]) == 53571
    encoded = tok.encode_batch(splits["valid"].sequences)
    assert all(len(e) == 52 and e[0] == 0 and e[-1] == 2 for e in encoded)
    head = splits["train"].head(10)
    assert len(head) == 10 and head.names[9] == "stability.train:9"


def test_tape_missing_split_file(tmp_path):
    (tmp_path / "stability.train.csv").write_text("seq,label\nMKT,0.5\n")
    with pytest.raises(ValueError, match=r"no stability\.valid\.csv \(it has: stability\.train\)"):
        data.load_tape_stability(tmp_path)
    with pytest.raises(ValueError, match="unknown protein dataset 'fluorescence'"):
        data.load_splits("fluorescence")


# ------------------------------------------------------------------------------------- hub-schema loaders


def test_hub_schema_loaders_on_local_files(tmp_path):
    pd = pytest.importorskip("pandas")
    cache = tmp_path / "hf_cache"
    ai4 = tmp_path / "ai4"  # AI4Protein/TAPE_Stability: train/valid/test csv, aa_seq + label
    ai4.mkdir()
    for split, rows in {"train": [("MKT", 0.5), ("MKV", 1.5)], "valid": [("MKA", 0.1)], "test": [("MKC", 2.0)]}.items():
        pd.DataFrame(rows, columns=["aa_seq", "label"]).to_csv(ai4 / f"{split}.csv", index=False)
    splits = data.load_tape_stability(hub_id=str(ai4), cache_dir=cache)
    assert {s: v.sequences.tolist() for s, v in splits.items()} == {"train": ["MKT", "MKV"], "valid": ["MKA"],
                                                                    "test": ["MKC"]}
    assert splits["train"].labels.tolist() == [0.5, 1.5]
    sap = tmp_path / "sap"  # SaProtHub: one dataset.csv, structure-aware sequences, a stage column
    sap.mkdir()
    pd.DataFrame({"protein": ["M#KdTp", "AvCd", "GgGg", "LpLp"], "label": [40.5, 50.0, 60.0, 45.0],
                  "stage": ["train", "valid", "test", "train"]}).to_csv(sap / "dataset.csv", index=False)
    melt = data.load_meltome(hub_id=str(sap), cache_dir=cache)
    assert {s: v.sequences.tolist() for s, v in melt.items()} == {"train": ["MKT", "LL"], "valid": ["AC"],
                                                                  "test": ["GG"]}
    parquet = tmp_path / "parquet" / "data"  # a parquet export with split-named files
    parquet.mkdir(parents=True)
    pd.DataFrame({"seq": ["MK", "AA", "CC", "DD"], "label": [1.0, 2.0, 3.0, 4.0]}).to_parquet(
        parquet / "train-00000-of-00001.parquet")
    pd.DataFrame({"seq": ["EE"], "label": [5.0]}).to_parquet(parquet / "test-00000-of-00001.parquet")
    carved = data.load_tape_stability(hub_id=str(parquet.parent), cache_dir=cache, valid_fraction=0.25)
    assert [len(carved[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    flip = tmp_path / "flip.jsonl"  # FLIP columns in a json-lines file: set + validation flag
    flip.write_text('{"sequence": "MKT", "target": 50.0, "set": "train", "validation": null}\n'
                    '{"sequence": "MKV", "target": 51.0, "set": "train", "validation": true}\n'
                    '{"sequence": "MKA", "target": 52.0, "set": "test", "validation": null}\n')
    table = hub.load_table(str(flip), cache_dir=cache)
    assert {s: v.sequences.tolist() for s, v in table.items()} == {"train": ["MKT"], "valid": ["MKV"], "test": ["MKA"]}
    odd = tmp_path / "odd.csv"
    pd.DataFrame({"residues": ["MK"], "y": [1.0]}).to_csv(odd, index=False)
    with pytest.raises(ValueError, match=r"no sequence column \(looked for sequence, .*it has: residues, y\)"):
        hub.load_table(str(odd), cache_dir=cache)
    named = hub.load_table(str(odd), sequence_column="residues", label_column="y", cache_dir=cache)
    assert named["train"].sequences.tolist() == ["MK"] and named["train"].labels.tolist() == [1.0]


def test_hub_id_offline_is_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=r"could not load protein data 'AI4Protein/TAPE_Stability' .*set DATA_DIR"):
        hub.load_table("AI4Protein/TAPE_Stability", cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- records


def test_records_dedupe_and_carve():
    split = records.ProteinSplit(["a", "b", "c", "d", "e"], ["MK", "MK", "MK", "AC", "DE"], [1.0, 1.0, 3.0, 2.0, 4.0])
    assert records.dedupe(split, "exact").names.tolist() == ["a", "c", "d", "e"]
    mean = records.dedupe(split, "mean")
    assert mean.names.tolist() == ["a", "d", "e"] and mean.labels.tolist() == [pytest.approx(5 / 3), 2.0, 4.0]
    train, valid = records.carve_validation(split, 0.34, seed=0)
    assert len(set(valid.sequences)) == 1 and not set(train.sequences) & set(valid.sequences)
    assert len(train) + len(valid) == 5
    taken = split.take(np.array([4, 0]))
    assert taken.names.tolist() == ["e", "a"] and split.lengths.tolist() == [2, 2, 2, 2, 2]
    classes = records.ProteinSplit(["a"], ["MK"], [2])
    assert classes.is_classification and not split.is_classification
    with pytest.raises(ValueError, match="dedupe='mean' averages regression targets"):
        records.dedupe(classes, "mean")
    with pytest.raises(ValueError, match=r"valid_fraction must be in \[0, 1\)"):
        records.carve_validation(split, 1.0, 0)
