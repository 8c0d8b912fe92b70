"""The model side of the translation task: mBART from a checkpoint (or built from a config with a sentencepiece
tokenizer trained on the training text), the two vocabulary layouts, the training forward and the beam search."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from smc_jax.models import mbart_vocab as mv
from smc_jax.tasks.translation import data

PyTree = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class TranslationModel:
    """Model knobs of :class:`~smc_jax.tasks.translation.task.TranslationTask`.

    ``pretrained``: an mBART hub id or directory (the paper: ``facebook/mbart-large-cc25``), its tokenizer from the
    same place; ``None``: an mBART built from ``model_config`` (HF ``MBartConfig`` fields) with random weights and a
    unigram sentencepiece tokenizer of ``spm_vocab_size`` pieces trained on the training text (cached).
    ``input_format``: ``fairseq`` (the paper's; vocabulary cut to ``n_spm + 26`` rows, ``__xx__`` tokens) or
    ``hf_native`` (cc25's own layout and language codes). ``dropout`` / ``attention_dropout`` override the config.
    """

    pretrained: str | None = "facebook/mbart-large-cc25"
    model_config: Mapping[str, Any] | None = None
    spm_vocab_size: int = 8000
    input_format: str = "fairseq"
    dropout: float | None = 0.3
    attention_dropout: float | None = 0.1
    dtype: str = "float32"
    remat: bool = False

    # ------------------------------------------------------------------ construction
    def load_model(self, training_text: Callable[[], list[str]]) -> None:
        from transformers import AutoTokenizer

        from smc_jax.models import hf
        from smc_jax.models.mbart import MBartConfig, MBartForConditionalGeneration

        if self.dtype not in DTYPES:
            raise ValueError(f"TranslationTask.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        overrides = {k: float(v) for k, v in (("dropout", self.dropout), ("attention_dropout", self.attention_dropout))
                     if v is not None}
        if self.pretrained:
            self.checkpoint_dir = hf.resolve_checkpoint_dir(self.pretrained)
            self.hf_config = dict(hf.read_config(self.checkpoint_dir))
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.checkpoint_dir))
            mv.check_tokenizer(self.tokenizer, int(self.hf_config["vocab_size"]))
            self.hf_module = hf.build_module({**self.hf_config, **overrides}, None, DTYPES[self.dtype],
                                             remat=bool(self.remat))
            self.tokenizer_key = data.tokenizer_hash(self.checkpoint_dir)
            config = self.hf_module.config
        else:
            if not self.model_config:
                raise ValueError("PRETRAINED=None needs TranslationTask.model_config (MBartConfig fields)")
            spm_dir = self._train_tokenizer(training_text)
            self.tokenizer = AutoTokenizer.from_pretrained(str(spm_dir))
            self.checkpoint_dir, self.hf_config, self.hf_module = None, None, None
            self.tokenizer_key = data.tokenizer_hash(spm_dir)
            config = MBartConfig(**{**dict(self.model_config), **overrides, "vocab_size": len(self.tokenizer)})
        vocab = config.vocab_size - (1 if self.input_format == "fairseq" else 0)
        self.module = MBartForConditionalGeneration(dataclasses.replace(config, vocab_size=vocab),
                                                    dtype=DTYPES[self.dtype], remat=bool(self.remat))
        self.vocab_size = vocab
        self.n_spm = mv.num_pieces(vocab, "fairseq" if self.input_format == "fairseq" else "hf_native")
        self.model_name = "mbart"

    def _train_tokenizer(self, training_text: Callable[[], list[str]]) -> Path:
        """A unigram sentencepiece model on the training text (spec §2's recipe), cached by the text's hash."""
        import sentencepiece as spm
        from transformers import MBartTokenizer

        lines = training_text()
        digest = hashlib.sha256("\n".join(lines).encode() + str(self.spm_vocab_size).encode()).hexdigest()[:16]
        folder = Path(getattr(self, "cache_dir", None) or data.default_cache_dir()) / f"spm-{digest}"
        if not (folder / "tokenizer.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
            spm.SentencePieceTrainer.train(
                input=str(folder / "corpus.txt"), model_prefix=str(folder / "sentencepiece.bpe"),
                vocab_size=int(self.spm_vocab_size), model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2)
            (folder / "corpus.txt").unlink()
            MBartTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
        return folder

    # ------------------------------------------------------------------ vocabulary
    @property
    def max_positions(self) -> int:
        return int(self.module.config.max_position_embeddings)

    def encode(self, lines: list[str]) -> list[list[int]]:
        """Piece ids (model ids, no special tokens) of raw lines."""
        return self.tokenizer(lines, add_special_tokens=False)["input_ids"]

    def lang_id(self, lang: str) -> int:
        """``__lang__`` (fairseq) or the cc25 language code (hf_native) id."""
        if self.input_format == "fairseq":
            return mv.langtok_id(lang, self.vocab_size)
        return mv.lang_code_id(data.MBART_CODES[lang], self.vocab_size)

    def symbols(self) -> list[str]:
        """Every id's symbol: pieces, ``<s> <pad> </s> <unk>``, ``__xx__`` (fairseq) or language codes."""
        pieces = self.tokenizer.convert_ids_to_tokens(list(range(self.n_spm + 1)))
        pieces[:4] = ["<s>", "<pad>", "</s>", "<unk>"]
        if self.input_format == "fairseq":
            return pieces + [f"__{x}__" for x in mv.FAIRSEQ_LANGS]
        return pieces + list(mv.LANG_CODES) + ["<mask>"]

    def special_ids(self) -> np.ndarray:
        special = np.zeros(self.vocab_size, bool)
        special[:4] = True
        special[self.n_spm + 1:] = True
        return special

    # ------------------------------------------------------------------ params and computation
    def init_params(self, key: jax.Array) -> PyTree:
        """The checkpoint's weights (cut to the fairseq layout), or a random init from ``key``."""
        import flax.linen as nn

        from smc_jax.models import hf

        if self.hf_module is None:
            variables = self.module.init(key, *self.module.dummy_inputs())
            return nn.meta.unbox(variables["params"])
        params = hf.load_params(self.hf_module, self.checkpoint_dir, config=self.hf_config)
        if self.input_format == "fairseq":
            _, params = mv.to_fairseq_layout(self.hf_module, params)
        return jax.tree.map(jnp.asarray, params)

    def _trace_param_axes(self) -> PyTree:
        import flax.linen as nn

        from smc_jax.models import hf

        return nn.get_partition_spec(hf.abstract_params(self.module))

    def forward(self, params: PyTree, batch: Mapping[str, jax.Array], key: jax.Array | None) -> jax.Array:
        """Teacher-forced logits ``[rows, width, vocab]`` (dropout on with ``key``)."""
        deterministic = key is None
        out = self.module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                batch["decoder_input_ids"], (batch["decoder_input_ids"] != mv.PAD).astype(jnp.int32),
                                deterministic=deterministic, rngs=None if deterministic else {"dropout": key})
        return out.logits

    def generate(self, params: PyTree, batch: Mapping[str, jax.Array]) -> Any:
        from smc_jax.models.decoding import BeamSearchConfig, generate

        config = BeamSearchConfig(beam_size=int(self.beam_size), len_penalty=float(self.len_penalty),
                                  max_len=min(int(self.max_len_b), self.max_positions - 1))
        return generate(self.module, params, batch["input_ids"], batch["attention_mask"], batch["start_ids"],
                        batch.get("prefix"), config=config)
