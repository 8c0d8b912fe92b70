"""BLEU: fairseq's BLEU4 equals a direct port of its C scorer on random corpora (empty lines and unknown words
included); the honest variant is sacreBLEU's own numbers; strings are built from ids as fairseq builds them."""

import math
from collections import Counter

import numpy as np
import pytest

sacrebleu = pytest.importorskip("sacrebleu")

from smc_jax.tasks.translation.bleu import Detokenizer, fairseq_bleu, honest_scores, sacrebleu_tokenizer  # noqa: E402


def libbleu(hyps, refs):
    """fairseq's ``bleu`` scorer: words (+ </s>) mapped to ids by ``encode_line``, trailing </s> trimmed but never
    the first token, reference unk ids never match, clipped n-gram counts, no smoothing."""
    vocab = {"<unk>": 3, "</s>": 2}
    unk, eos = 3, 2

    def ids(line):
        words = " ".join(line.split()).split(" ") if line.split() else []
        out = [vocab.setdefault(w, len(vocab) + 4) for w in words] + [eos]
        while len(out) > 1 and out[-1] == eos:
            out.pop()
        return out

    reflen = predlen = 0
    match, count = [0] * 4, [0] * 4
    for h, r in zip(hyps, refs):
        ht, rt = ids(h), [-999 if t == unk else t for t in ids(r)]
        reflen, predlen = reflen + len(rt), predlen + len(ht)
        for n in range(1, 5):
            hc = Counter(tuple(ht[i:i + n]) for i in range(len(ht) - n + 1))
            rc = Counter(tuple(rt[i:i + n]) for i in range(len(rt) - n + 1))
            count[n - 1] += max(0, len(ht) - n + 1)
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
    p = [m / c if c else 0.0 for m, c in zip(match, count)]
    if min(p) == 0:
        return 0.0
    bp = min(1.0, math.exp(1 - reflen / predlen))
    return bp * math.exp(sum(math.log(x) for x in p) / 4) * 100


def random_corpus(rng, n, words):
    lines = []
    for _ in range(n):
        k = int(rng.integers(0, 12))
        lines.append(" ".join(rng.choice(words, size=k)) if k else "")
    return lines


def test_fairseq_bleu_equals_a_port_of_libbleu():
    rng = np.random.default_rng(0)
    words = np.array("a b c d e f g <unk> <<unk>> , . x".split())
    nonzero = 0
    for trial in range(150):
        n = int(rng.integers(1, 12))
        refs = random_corpus(rng, n, words)
        hyps = [r if rng.random() < 0.4 else h for r, h in zip(refs, random_corpus(rng, n, words))]
        want, got = libbleu(hyps, refs), fairseq_bleu(hyps, refs)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12), (hyps, refs)
        nonzero += want > 0
    assert nonzero > 20
    assert fairseq_bleu([""], [""]) == pytest.approx(libbleu([""], [""]))


def test_honest_variant_is_sacrebleus_own():
    hyps, refs = ["The cat sat on the mat.", "Hello, world!"], ["The cat sat on a mat.", "Hello world!"]
    got = honest_scores(hyps, refs, "fr")
    assert got["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert "tok:13a" in got["signature"]
    zh = honest_scores(["我们有一只猫"], ["我们有一只狗"], "zh")
    assert "tok:zh" in zh["signature"]
    assert zh["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(["我们有一只猫"], [["我们有一只狗"]],
                                                                  tokenize="zh").score)
    assert sacrebleu_tokenizer("ja") in ("ja-mecab", "char") and sacrebleu_tokenizer("de") == "13a"


def test_strings_from_ids_as_fairseq_builds_them():
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "\u2581Hel", "lo", "\u2581world", ".", "__en__"]
    special = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1], bool)
    detok = Detokenizer(pieces, special, 3)
    ids = np.array([4, 5, 3, 6, 7])
    assert detok.fairseq(ids, "<unk>") == "Hello<unk> world."
    assert detok.fairseq(ids, "<<unk>>") == "Hello<<unk>> world."
    assert detok.plain(ids) == "Hello world."
