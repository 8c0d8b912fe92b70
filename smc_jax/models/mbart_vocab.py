"""mBART-25 vocabulary layouts and the explicit conversion between them (spec translation.md §2).

HF-native layout (the checkpoint as stored; ``V = n_spm + 27``, 250027 for cc25): ``<s>`` 0, ``<pad>`` 1,
``</s>`` 2, ``<unk>`` 3, sentencepiece piece ``p >= 3`` at ``p + 1``, the 25 language codes of
:data:`LANG_CODES` (alphabetical) at ``n_spm + 1 + i``, ``<mask>`` at ``n_spm + 26``.

fairseq multilingual layout (``translation_multi_simple_epoch`` with ``lang_tok_style='multilingual'``;
``V = n_spm + 26``): the same ids below ``n_spm + 1``, then ``__xx__`` for the languages of
:data:`FAIRSEQ_LANGS` (``lang_list.txt`` order) at ``n_spm + 1 + i``, no ``<mask>``. fairseq reaches it by
dropping the checkpoint's last row on load, so each ``__xx__`` row starts as the pretrained row of the
alphabetical code with the same id (``__en__`` gets cs_CZ's); :func:`to_fairseq_layout` does exactly that.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from smc_jax.models.hf_files import CheckpointError
from smc_jax.models.mbart import MBartForConditionalGeneration

LANG_CODES = ("ar_AR", "cs_CZ", "de_DE", "en_XX", "es_XX", "et_EE", "fi_FI", "fr_XX", "gu_IN", "hi_IN", "it_IT",
              "ja_XX", "kk_KZ", "ko_KR", "lt_LT", "lv_LV", "my_MM", "ne_NP", "nl_XX", "ro_RO", "ru_RU", "si_LK",
              "tr_TR", "vi_VN", "zh_CN")
FAIRSEQ_LANGS = ("my", "en", "ru", "vi", "ja", "de", "ro", "fr", "fi", "ko", "es", "zh", "it", "ni", "ar", "tr",
                 "hi", "cs", "lt", "lv", "kk", "et", "ne", "si", "gu")
LAYOUTS = {"hf_native": 27, "fairseq": 26}  # rows after the sentencepiece block
BOS, PAD, EOS, UNK = 0, 1, 2, 3


def num_pieces(vocab_size: int, layout: str = "hf_native") -> int:
    """``n_spm``, the sentencepiece model's size, of a vocabulary of ``vocab_size`` rows in ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    n_spm = vocab_size - LAYOUTS[layout]
    if n_spm < 4:
        raise ValueError(f"vocabulary of {vocab_size} rows is too small for the {layout} layout")
    return n_spm


def lang_code_id(code: str, vocab_size: int) -> int:
    """Id of an HF language code (``'fr_XX'``) in the HF-native layout of ``vocab_size`` rows."""
    if code not in LANG_CODES:
        raise ValueError(f"unknown mBART-25 language code {code!r}; known: {', '.join(LANG_CODES)}")
    return num_pieces(vocab_size, "hf_native") + 1 + LANG_CODES.index(code)


def langtok_id(lang: str, vocab_size: int) -> int:
    """Id of fairseq's ``__lang__`` token (``lang`` as ``'fr'``) in the fairseq layout of ``vocab_size`` rows."""
    if lang not in FAIRSEQ_LANGS:
        raise ValueError(f"language {lang!r} is not in fairseq's lang_list; known: {', '.join(FAIRSEQ_LANGS)}")
    return num_pieces(vocab_size, "fairseq") + 1 + FAIRSEQ_LANGS.index(lang)


def to_fairseq_layout(module: MBartForConditionalGeneration, params: dict[str, Any]
                      ) -> tuple[MBartForConditionalGeneration, dict[str, Any]]:
    """``(module, params)`` of an HF-native checkpoint converted to the fairseq multilingual layout: the shared
    embedding and ``final_logits_bias`` truncated by one row (the ``<mask>`` row), the config's ``vocab_size``
    with them. Other params are the same objects."""
    config = module.config
    num_pieces(config.vocab_size, "hf_native")
    vocab = config.vocab_size - 1
    model = dict(params["model"])
    shared = dict(model["shared"])
    shared["embedding"] = shared["embedding"][:vocab]
    model["shared"] = shared
    out = {**params, "model": model, "final_logits_bias": params["final_logits_bias"][:, :vocab]}
    return module.clone(config=dataclasses.replace(config, vocab_size=vocab)), out


def check_tokenizer(tokenizer: Any, vocab_size: int) -> None:
    """One-line :class:`CheckpointError` unless ``tokenizer`` (an HF ``MBartTokenizer``) has the HF-native
    layout of a ``vocab_size``-row checkpoint: ``n_spm + 27`` tokens, language codes and ``<mask>`` where
    :func:`lang_code_id` puts them."""
    size = len(tokenizer)
    if size != vocab_size:
        raise CheckpointError(f"the tokenizer has {size} tokens ({size - 27} sentencepiece pieces + 27) but the "
                              f"checkpoint's vocabulary has {vocab_size} rows: use the checkpoint's own "
                              "sentencepiece.bpe.model")
    expected = {code: lang_code_id(code, vocab_size) for code in LANG_CODES}
    expected["<mask>"] = vocab_size - 1
    found = dict(zip(expected, tokenizer.convert_tokens_to_ids(list(expected))))
    wrong = [f"{k}={found[k]} (expected {v})" for k, v in expected.items() if found[k] != v]
    if tokenizer.pad_token_id != PAD or tokenizer.eos_token_id != EOS:
        wrong.append(f"pad={tokenizer.pad_token_id}, eos={tokenizer.eos_token_id} (expected {PAD}, {EOS})")
    if wrong:
        raise CheckpointError(f"the tokenizer is not in mBART's layout: {'; '.join(wrong[:4])}")
