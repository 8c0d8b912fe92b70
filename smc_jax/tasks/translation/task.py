"""Multilingual translation as the training engine sees it: mBART-25 fine-tuned on English-centric directions
(``2to2``, ``5to5``, ``10to10``; SPEC §1.4, spec translation.md), BLEU over the evaluation directions.

Training: temperature sampling over directions with virtual epochs, max-tokens batches of bucketed shapes, each
update ``grad_accum_steps`` stacked micro-batches of one bucket (the engine runs them one after another), fairseq's
label-smoothed NLL summed over the update and divided by its total target tokens, dropout on. Evaluation: beam
search (:func:`smc_jax.models.decoding.generate`) in the engine's jitted eval step; fairseq BLEU4, sacreBLEU and
chrF per direction on the host. ``reported`` is the last evaluation (the paper's protocol).

Data and the token cache are :mod:`~smc_jax.tasks.translation.data`; batching :mod:`~.batching`; BLEU :mod:`~.bleu`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from smc_jax.models.losses import label_smoothed_nll
from smc_jax.models.mbart_vocab import EOS, PAD, UNK
from smc_jax.tasks.base import EvalChunk, TaskBase
from smc_jax.tasks.batching import bucket_length, check_settings
from smc_jax.tasks.translation import batching as tb
from smc_jax.tasks.translation import data
from smc_jax.tasks.translation.bleu import Detokenizer, fairseq_bleu, honest_scores
from smc_jax.tasks.translation.model import TranslationModel

PyTree = Any
DEFAULT_SPLITS = {"opus100": ("train", "test"), "flores200": ("dev", "devtest"), "tatoeba": ("test", "test"),
                  "local": ("train", "test")}


@dataclasses.dataclass
class TranslationTask(TranslationModel, TaskBase):
    """Every field is a gin knob (``TranslationTask.NAME``).

    - ``setting``: ``2to2`` | ``5to5`` | ``10to10`` (training directions); ``eval_directions``: ``None`` = the 20
      of the paper, else a tuple like ``('en-fr', 'fr-en')``; ``source``: ``opus100`` (hub, or parquet under
      ``data_dir``) | ``flores200`` | ``tatoeba`` | ``local`` (OPUS-100 release text files); ``train_split`` /
      ``eval_split`` (``None``: the source's train/test); ``extra_eval_splits``: more splits evaluated and
      reported as ``<split>/...`` metrics (first ``extra_eval_max_examples`` pairs per direction; ``None``: all);
      ``max_train_examples`` / ``max_eval_examples`` count pairs per direction; ``train_directions`` replaces the
      setting's directions (experiments; the run keeps the setting's name).
    - Model (:class:`~smc_jax.tasks.translation.model.TranslationModel`): ``pretrained`` or ``model_config``,
      ``input_format``, dropouts, ``dtype``, ``remat``, ``spm_vocab_size``.
    - Recipe: ``max_tokens`` (per device, as fairseq's per GPU), ``grad_accum_steps`` (must equal
      ``TrainConfig.grad_accum_steps``), ``max_length`` (longest sentence in positions; longer training pairs are
      dropped, longer evaluation sources an error unless ``truncate_eval``), ``temperature``, ``label_smoothing``,
      ``length_buckets``. ``batch_size`` exists only to say that ``MAX_TOKENS`` replaces it.
    - Decoding: ``beam_size``, ``len_penalty``, ``max_len_b`` (fairseq's ``max_len_a`` is 0), ``eval_batch_size``.
    """

    setting: str = "2to2"
    source: str = "opus100"
    data_dir: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    extra_eval_splits: tuple[str, ...] = ()
    extra_eval_max_examples: int | None = None
    train_directions: tuple[str, ...] | None = None
    eval_directions: tuple[str, ...] | None = None
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    cache_dir: str | None = None
    max_tokens: int = 1024
    grad_accum_steps: int = 2
    batch_size: int | None = None
    max_length: int = 1024
    temperature: float = 1.5
    label_smoothing: float = 0.2
    length_buckets: tuple[int, ...] = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
    truncate_eval: bool = False
    beam_size: int = 5
    len_penalty: float = 1.0
    max_len_b: int = 200
    eval_batch_size: int = 32
    fold: int | None = None

    family = "translation"
    metric = "bleu"
    metrics = ("bleu", "sacrebleu", "chrf")
    selection = "last"
    param_groups = {"final_logits_bias": "final_logits_bias"}

    def __post_init__(self):
        if self.fold is not None:
            raise ValueError(f"translation has no cross-validation folds; drop FOLD (got {self.fold!r})")
        if self.batch_size is not None:
            raise ValueError("translation batches by tokens: set MAX_TOKENS (per device) and GRAD_ACCUM_STEPS, "
                             f"not BATCH_SIZE (got {self.batch_size})")
        if self.input_format not in tb.FORMATS:
            raise ValueError(f"INPUT_FORMAT {self.input_format!r} unknown; choose one of {', '.join(tb.FORMATS)}")
        check_settings(self, positive=("max_tokens", "grad_accum_steps", "max_length", "beam_size",
                                       "eval_batch_size"),
                       optional_positive=("max_train_examples", "max_eval_examples"),
                       fractions=("dropout", "attention_dropout", "label_smoothing"))
        self.directions = data.setting_directions(self.setting)
        if self.train_directions is not None:
            self.directions = tuple(data.parse_direction(d) for d in self.train_directions)
        names = data.EVAL_DIRECTIONS if self.eval_directions is None else tuple(self.eval_directions)
        self.eval_dirs = tuple(data.parse_direction(d) for d in names)
        if not self.eval_dirs:
            raise ValueError("EVAL_DIRECTIONS is empty")
        train_split, eval_split = DEFAULT_SPLITS.get(self.source, ("train", "test"))
        self.train_split = self.train_split or train_split
        self.eval_split = self.eval_split or eval_split
        self.extra_eval_splits = tuple(self.extra_eval_splits)
        self.folder = data.resolve_data_dir(self.source, self.data_dir)
        self.load_model(self._training_text)
        limit = min(self.max_length, self.max_positions)
        buckets = sorted({b for b in self.length_buckets if b < limit} | {limit})
        self.buckets = tuple(buckets)
        if self.max_tokens < self.buckets[-1]:
            raise ValueError(f"MAX_TOKENS={self.max_tokens} is smaller than the longest allowed sentence "
                             f"({self.buckets[-1]} positions, MAX_LENGTH / the model's positions): raise MAX_TOKENS "
                             "or lower MAX_LENGTH")
        self.cache = data.TokenCache(self.cache_dir or data.default_cache_dir(), self.tokenizer_key)
        self._build_train()
        self.eval_rows = {self.eval_split: self._build_eval(self.eval_split)}
        for split in self.extra_eval_splits:
            self.eval_rows[split] = self._build_eval(split, self.extra_eval_max_examples)

    # ------------------------------------------------------------------ data
    def _bitext(self, lang: str, split: str, limit: int | None, binding: str) -> data.Bitext:
        return data.load_bitext(self.source, self.folder, lang, split, self.cache, self.encode, limit, binding)

    def _training_text(self) -> list[str]:
        """Raw training lines of every language (the tokenizer of a run from random init is trained on them)."""
        langs = sorted({d.other for d in self.directions})
        lines: list[str] = []
        for lang in langs:
            if self.source == "opus100":
                en, x = data.opus100_columns(data.load_opus100(lang, self.train_split, self.folder, "SETTING"),
                                             lang, self.max_train_examples)
            else:
                en, x = data.read_text_bitext(self.source, self.folder, lang, self.train_split, "SETTING")
                en, x = en[:self.max_train_examples], x[:self.max_train_examples]
            lines += list(en) + list(x)
        return lines

    def _tables(self, directions, split: str, limit: int | None, binding: str, keep_text: bool):
        """One token array of every side and, per direction, the source/target sentence ids."""
        langs = sorted({d.other for d in directions})
        bitexts = {lang: self._bitext(lang, split, limit, binding) for lang in langs}
        parts = [a for lang in langs for a in (bitexts[lang].en, bitexts[lang].x)]
        texts, starts = data.concat_arrays(parts)
        tables = []
        for d in directions:
            k = langs.index(d.other)
            n = len(bitexts[d.other].en)
            en, x = starts[2 * k] + np.arange(n), starts[2 * k + 1] + np.arange(n)
            tables.append((en, x) if d.src == "en" else (x, en))
        return texts, tables, bitexts

    def _build_train(self) -> None:
        texts, tables, _ = self._tables(self.directions, self.train_split, self.max_train_examples, "SETTING",
                                        keep_text=False)
        lengths = texts.lengths + 2  # a language token and </s> on each side
        srcs, tgts, self.train_sizes = [], [], []
        for d, (src, tgt) in zip(self.directions, tables):
            size = np.maximum(lengths[src], lengths[tgt])
            keep = size <= self.buckets[-1]  # fairseq drops over-long training pairs
            srcs.append(src[keep])
            tgts.append(tgt[keep])
            if not keep.any():
                raise ValueError(f"direction {d.name}: no {self.train_split} pair fits MAX_LENGTH={self.max_length}")
            self.train_sizes.append(int(keep.sum()))
        self.train_texts = texts
        self.dir_start = np.concatenate([[0], np.cumsum(self.train_sizes)]).astype(np.int64)
        self.train_src, self.train_tgt = np.concatenate(srcs), np.concatenate(tgts)
        self.train_size = np.maximum(lengths[self.train_src], lengths[self.train_tgt])
        self.train_tgt_len = lengths[self.train_tgt]
        self.dir_src_tok = np.asarray([self.lang_id(d.src) for d in self.directions], np.int64)
        self.dir_tgt_tok = np.asarray([self.lang_id(d.tgt) for d in self.directions], np.int64)
        self.probs = tb.temperature_probs(self.train_sizes, self.temperature)

    def _build_eval(self, split: str, limit: int | None = None) -> dict[str, Any]:
        binding = "EVAL_DIRECTIONS"
        limit = self.max_eval_examples if split == self.eval_split else limit
        texts, tables, bitexts = self._tables(self.eval_dirs, split, limit, binding, True)
        src = np.concatenate([t[0] for t in tables])
        tgt = np.concatenate([t[1] for t in tables])
        direction = np.concatenate([np.full(len(t[0]), k) for k, t in enumerate(tables)])
        refs = [list(bitexts[d.other].x_text if d.tgt != "en" else bitexts[d.other].en_text)
                for d in self.eval_dirs]
        src_len = texts.lengths[src] + 2
        if not self.truncate_eval and src_len.max() > self.buckets[-1]:
            raise ValueError(f"a {split} source has {int(src_len.max())} positions, more than MAX_LENGTH allows "
                             f"({self.buckets[-1]}); set TranslationTask.truncate_eval=True to cut it")
        return {"texts": texts, "src": src, "tgt": tgt, "direction": direction, "refs": refs,
                "order": np.argsort(src_len, kind="stable")}

    # ------------------------------------------------------------------ what the engine reads
    @classmethod
    def configured_name(cls, bindings: Mapping[str, Any]) -> str:
        return str(bindings.get("setting", cls.__dataclass_fields__["setting"].default))

    @property
    def name(self) -> str:
        return self.setting

    @property
    def steps_per_epoch(self) -> None:
        return None

    @property
    def num_eval(self) -> int:
        return int(len(self.eval_rows[self.eval_split]["src"]))

    def config(self) -> dict[str, Any]:
        skip = {"data_dir", "cache_dir", "eval_batch_size", "length_buckets", "remat", "fold", "extra_eval_splits",
                "extra_eval_max_examples"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def describe(self) -> str:
        sizes = ", ".join(f"{d.name} {n}" for d, n in zip(self.directions, self.train_sizes))
        return (f"{self.setting} ({self.source} {self.train_split}: {sizes}); eval {self.eval_split} on "
                f"{len(self.eval_dirs)} directions ({self.num_eval} pairs); {self.model_name} "
                f"{self.pretrained or 'from config'}, {self.input_format}")

    # ------------------------------------------------------------------ training batches
    def plan(self, seed: int, epoch: int) -> list[tb.Update]:
        """The updates of virtual epoch ``epoch``."""
        rng = np.random.default_rng([int(seed), int(epoch), 15])
        d, i = tb.sample_epoch(self.train_sizes, self.probs, rng)
        return tb.plan_updates(d, i, self.train_size[self.dir_start[d] + i], self.buckets, self.max_tokens,
                               self.grad_accum_steps, rng)

    def make_update(self, update: tb.Update) -> dict[str, np.ndarray]:
        """The model inputs of an update; every row carries ``ntokens_scale`` = the update's target tokens over
        ``grad_accum_steps`` (the engine averages micro-batch losses, so each divides its sum by it). In a
        multi-process run this process assembles only its block of rows (the others stay pad rows)."""
        real = update.direction >= 0
        gid = np.where(real, self.dir_start[np.maximum(update.direction, 0)] + update.index, 0)
        ntokens = float(np.sum(np.where(real, self.train_tgt_len[gid], 0)))
        if jax.process_count() > 1:
            block = len(real) // jax.process_count()
            mine = np.zeros_like(real)
            mine[jax.process_index() * block:(jax.process_index() + 1) * block] = True
            real = real & mine
        d = np.maximum(update.direction, 0)
        src = np.where(real, self.train_src[gid], -1)
        tgt = np.where(real, self.train_tgt[gid], -1)
        out = tb.encode_rows(self.input_format, self.train_texts, src, tgt, self.dir_src_tok[d], self.dir_tgt_tok[d],
                             update.width)
        out["ntokens_scale"] = np.full(len(real), max(ntokens, 1.0) / self.grad_accum_steps, np.float32)
        return out

    def train_stream(self, seed: int) -> tb.SampledStream:
        return tb.SampledStream(self.plan, self.make_update, seed)

    def snip_batch(self, seed: int) -> dict[str, np.ndarray]:
        return self.make_update(self.plan(seed, self.SNIP_EPOCH)[0])

    def loss(self, params: PyTree, batch: Mapping[str, jax.Array], key: jax.Array | None = None) -> jax.Array:
        """fairseq's label-smoothed NLL summed over the micro-batch's target tokens, divided by ``ntokens_scale``."""
        logits = self.forward(params, batch, key)
        sums = label_smoothed_nll(logits, batch["labels"], self.label_smoothing, PAD)
        return sums.loss / batch["ntokens_scale"][0]

    # ------------------------------------------------------------------ evaluation
    @functools.cached_property
    def _eval_sets(self) -> dict[str, list[EvalChunk]]:
        out = {}
        for split, rows in self.eval_rows.items():
            order, chunks = rows["order"], []
            lengths = rows["texts"].lengths[rows["src"]] + 2
            for s in range(0, len(order), self.eval_batch_size):
                part = order[s:s + self.eval_batch_size]
                width = bucket_length(int(lengths[part].max()), self.buckets, self.buckets[-1])
                chunks.append(EvalChunk(len(part), self._eval_batch(rows, part, width)))
            out[split] = chunks
        return out

    def _eval_batch(self, rows: Mapping[str, Any], part: np.ndarray, width: int) -> dict[str, np.ndarray]:
        n = self.eval_batch_size
        src = np.full(n, -1, np.int64)
        src[:len(part)] = rows["src"][part]
        d = np.zeros(n, np.int64)
        d[:len(part)] = rows["direction"][part]
        src_tok = np.asarray([self.lang_id(x.src) for x in self.eval_dirs], np.int64)[d]
        tgt_tok = np.asarray([self.lang_id(x.tgt) for x in self.eval_dirs], np.int64)[d]
        out = tb.encode_rows(self.input_format, rows["texts"], src, None, src_tok, tgt_tok, width)
        if self.input_format == "fairseq":
            out["start_ids"] = np.full(n, EOS, np.int32)
            out["prefix"] = tgt_tok[:, None].astype(np.int32)
        else:
            out["start_ids"] = tgt_tok.astype(np.int32)
        return out

    def eval_sets(self) -> dict[str, list[EvalChunk]]:
        """One set per evaluation split: every evaluation direction's pairs, sorted by source length."""
        return self._eval_sets

    def eval_step(self, params: PyTree, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Beam search: ``tokens`` ``[rows, max_len + 1]`` and ``lengths`` of the best hypothesis per row."""
        out = self.generate(params, batch)
        return {"tokens": out.tokens, "lengths": out.lengths}

    def compute_metrics(self, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
        """Per direction ``bleu/<dir>`` (fairseq BLEU4), ``sacrebleu/<dir>``, ``chrf/<dir>``; their means over the
        evaluated directions (``bleu``, ``sacrebleu``, ``chrf``); non-main splits prefixed ``<split>/``."""
        result: dict[str, Any] = {}
        detok = self.detokenizer
        for split, rows in self.eval_rows.items():
            prefix = "" if split == self.eval_split else f"{split}/"
            tokens, lengths = outputs[split]["tokens"], outputs[split]["lengths"]
            hyp_ids = [None] * len(rows["order"])
            for j, example in enumerate(rows["order"]):
                hyp_ids[example] = tokens[j, :lengths[j]]
            texts, sigs = rows["texts"], set()
            means: dict[str, list[float]] = {"bleu": [], "sacrebleu": [], "chrf": []}
            for k, d in enumerate(self.eval_dirs):
                idx = np.flatnonzero(rows["direction"] == k)
                strip = {EOS, int(self.lang_id(d.tgt))}
                hyps = [np.asarray([t for t in hyp_ids[i].tolist() if t not in strip], np.int64) for i in idx]
                refs = [texts.tokens[texts.offsets[t]:texts.offsets[t + 1]] for t in rows["tgt"][idx]]
                bleu = fairseq_bleu([detok.fairseq(h, "<unk>") for h in hyps],
                                    [detok.fairseq(r, "<<unk>>") for r in refs])
                honest = honest_scores([detok.plain(h) for h in hyps], [rows["refs"][k][i - idx[0]] for i in idx],
                                       d.tgt)
                sigs.add(honest["signature"])
                for name, value in (("bleu", bleu), ("sacrebleu", honest["sacrebleu"]), ("chrf", honest["chrf"])):
                    result[f"{prefix}{name}/{d.name}"] = value
                    means[name].append(value)
            for name, values in means.items():
                result[f"{prefix}{name}"] = float(np.mean(values))
            result[f"{prefix}sacrebleu_signatures"] = " | ".join(sorted(sigs))
        result["num_eval"] = self.num_eval
        return result

    @functools.cached_property
    def detokenizer(self) -> Detokenizer:
        return Detokenizer(self.symbols(), self.special_ids(), UNK)
