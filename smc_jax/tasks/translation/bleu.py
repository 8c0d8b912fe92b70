"""BLEU as SMC-Bench's fairseq-generate scores it, and the honest sacreBLEU / chrF beside it (spec translation.md §5).

- :func:`fairseq_bleu`: fairseq's ``BLEU4`` (the C scorer ``libbleu``) on the strings fairseq builds: whitespace
  words of the sentencepiece-decoded hypothesis and of the spm round-tripped reference (unk rendered ``<unk>`` in
  the hypothesis, ``<<unk>>`` in the reference), case-sensitive, no smoothing; an empty line counts as the one token
  ``</s>``. Computed with sacreBLEU's ``tokenize='none'``, ``smooth_method='none'`` on those words.
- :func:`honest_scores`: sacreBLEU on the detokenised hypothesis against the raw reference (``13a``; ``zh`` for
  Chinese; ``ja-mecab`` for Japanese when ``sacrebleu[ja]`` is installed, else ``char``), with its signature, and chrF.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

UNK_REF_SENTINEL = "\x00unk\x00"  # a reference word that never matches (libbleu maps ref unk ids to -999)


def _words(line: str) -> str:
    words = re.sub(r"\s+", " ", line).strip()
    return words if words else "</s>"


def fairseq_bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """fairseq's corpus BLEU4 of the strings fairseq-generate scores (module docstring)."""
    import sacrebleu

    hyp = [_words(h) for h in hyps]
    ref = [" ".join(UNK_REF_SENTINEL if w == "<unk>" else w for w in _words(r).split(" ")) for r in refs]
    metric = sacrebleu.metrics.BLEU(tokenize="none", smooth_method="none", force=True, effective_order=False)
    return float(metric.corpus_score(hyp, [ref]).score)


def sacrebleu_tokenizer(lang: str) -> str:
    """sacreBLEU's tokenizer for a target language: ``zh``; ``ja-mecab`` when importable else ``char``; ``13a``."""
    if lang == "zh":
        return "zh"
    if lang == "ja":
        try:
            import ipadic  # noqa: F401
            import MeCab  # noqa: F401
            return "ja-mecab"
        except ImportError:
            return "char"
    return "13a"


def honest_scores(hyps: Sequence[str], refs: Sequence[str], lang: str) -> dict[str, Any]:
    """``{'sacrebleu', 'chrf', 'signature'}`` of detokenised hypotheses against raw references in ``lang``."""
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU(tokenize=sacrebleu_tokenizer(lang))
    score = bleu.corpus_score(list(hyps), [list(refs)]).score
    chrf = sacrebleu.metrics.CHRF().corpus_score(list(hyps), [list(refs)]).score
    return {"sacrebleu": float(score), "chrf": float(chrf), "signature": str(bleu.get_signature())}


class Detokenizer:
    """Strings from model ids: ``pieces[id]`` is each id's symbol (pieces, specials, language tokens)."""

    def __init__(self, pieces: Sequence[str], special: np.ndarray, unk_id: int):
        self.pieces = np.asarray(pieces, dtype=object)
        self.special = np.asarray(special, bool)
        self.unk_id = int(unk_id)

    def fairseq(self, ids: np.ndarray, unk: str) -> str:
        """fairseq's ``string(ids, 'sentencepiece')``: symbols joined, spaces dropped, ``\u2581`` -> space."""
        symbols = [unk if i == self.unk_id else self.pieces[i] for i in np.asarray(ids).tolist()]
        return "".join(symbols).replace(" ", "").replace("\u2581", " ").strip()

    def plain(self, ids: np.ndarray) -> str:
        """The detokenised text: special ids dropped, pieces joined."""
        ids = np.asarray(ids)
        ids = ids[~self.special[ids]]
        return "".join(self.pieces[ids].tolist()).replace("\u2581", " ").strip()
