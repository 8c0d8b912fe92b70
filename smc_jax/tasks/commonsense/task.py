"""Commonsense reasoning as the training engine sees it: CommonsenseQA, WinoGrande and RACE with a pretrained
RoBERTa (or BERT) encoder, faithful to fairseq's RoBERTa recipes (SPEC §1.1).

- CommonsenseQA and RACE are sentence ranking: every choice is its own sequence, the classification head
  (fairseq's ``sentence_classification_head``, one output) scores it, and the loss is the cross-entropy of
  the softmax over the choices. Accuracy: argmax over the choices.
- WinoGrande fills the blank with each option, replaces the option's tokens by ``<mask>`` and scores the
  option with the masked-LM head: the mean log-probability of its tokens. Loss −q + α·max(0, c − q + β)
  (q: the correct option, c: the other); correct when q ≥ c.
- The optimizer is ``Optimizer.*`` (gin/tasks/commonsense.gin): fairseq's Adam(β₁, β₂, ε) with decoupled
  weight decay on every parameter, ``polynomial_decay`` (CSQA, WinoGrande) or a fixed rate (RACE).

Data and text formats live in :mod:`smc_jax.tasks.commonsense.data`. Batches are padded to bucket lengths
and to a fixed number of rows (padded rows weigh nothing), so a step compiles once per bucket.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from smc_jax.tasks.base import EvalChunk, TaskBase
from smc_jax.tasks.batching import bucket_length, check_settings, eval_chunks, load_fast_tokenizer, shuffled_batches
from smc_jax.tasks.commonsense import data

PyTree = Any

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class CommonsenseTask(TaskBase):
    """A commonsense dataset with a pretrained encoder. Every field is a gin knob (``CommonsenseTask.NAME``).

    - ``dataset``: ``csqa`` | ``winogrande`` | ``race``; ``data_dir``: the dataset's folder (``None``:
      ``$SMC_DATA_DIR/<folder>``, else the HF hub dataset); ``train_split`` (``train``), ``eval_split``
      (``validation``: the split ``reported`` is selected on, SPEC Q-C3 fixed: the best evaluation);
      ``test_split`` (RACE: accuracy per level on it, the figure's RACE-M and RACE-H; ``None``: off);
      ``winogrande_size`` (``xs`` … ``xl``), ``race_levels`` (``('middle', 'high')``).
    - ``pretrained``: a RoBERTa/BERT hub id or local checkpoint directory (the paper: ``roberta-large``);
      its tokenizer comes from the same place. ``dtype``: ``float32`` | ``bfloat16`` (compute; params stay
      fp32); ``remat``: recompute each layer in the backward pass; ``dropout`` / ``attention_dropout``
      (``None``: the checkpoint's, 0.1 for RoBERTa).
    - ``batch_size``: questions per update (CSQA 16, WinoGrande 32, RACE 8 = 1 × 8 accumulated);
      ``max_length`` (tokens per sequence, ≤ 512), ``max_option_length`` (RACE: question+option part, 128);
      ``max_train_examples`` / ``max_eval_examples`` (first N; ``None`` = all).
    - WinoGrande: ``margin_alpha`` 5.0, ``margin_beta`` 0.4.
    - ``length_buckets``: the lengths a batch is padded to; ``eval_batch_size``: questions per jitted
      evaluation call. ``fold``: always ``None`` (no cross-validation; the engine passes it).
    """

    dataset: str = "csqa"
    pretrained: str = "roberta-large"
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    test_split: str | None = "test"
    winogrande_size: str = "xl"
    race_levels: tuple[str, ...] = data.RACE_LEVELS
    dtype: str = "float32"
    remat: bool = False
    dropout: float | None = None
    attention_dropout: float | None = None
    batch_size: int = 16
    max_length: int = 512
    max_option_length: int = 128
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    margin_alpha: float = 5.0
    margin_beta: float = 0.4
    length_buckets: tuple[int, ...] = (32, 48, 64, 96, 128, 192, 256, 384, 512)
    eval_batch_size: int = 32
    fold: int | None = None

    family = "commonsense"

    def __post_init__(self):
        if self.fold is not None:
            raise ValueError(f"{self.dataset} has no cross-validation folds; drop FOLD (got {self.fold!r})")
        if self.dataset not in data.DATASETS:
            raise ValueError(f"CommonsenseTask.dataset {self.dataset!r} unknown; choose one of {data.DATASETS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"CommonsenseTask.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        check_settings(self, positive=("batch_size", "max_length", "max_option_length", "eval_batch_size"),
                       optional_positive=("max_train_examples", "max_eval_examples"),
                       fractions=("dropout", "attention_dropout"))
        if not self.pretrained:
            raise ValueError("PRETRAINED must name a RoBERTa/BERT hub id or checkpoint directory "
                             "(the paper: 'roberta-large')")
        self.race_levels = tuple(self.race_levels)
        self._load_model()
        load = functools.partial(data.load_split, self.dataset, data_dir=self.data_dir, size=self.winogrande_size,
                                 levels=self.race_levels)
        self.train = self._encode(load(self.train_split)[: self.max_train_examples])
        if not self.train:
            raise ValueError(f"{self.dataset} {self.train_split} split is empty")
        self.eval_rows = {"accuracy": self._encode(load(self.eval_split)[: self.max_eval_examples])}
        if self.dataset == "race" and self.test_split is not None:
            for level in self.race_levels:
                rows = data.load_split("race", self.test_split, self.data_dir, levels=(level,))
                self.eval_rows[f"{level}_accuracy"] = self._encode(rows[: self.max_eval_examples])
        for name, rows in self.eval_rows.items():
            if not rows or any(r["label"] < 0 for r in rows):
                raise ValueError(f"{self.dataset} evaluation set {name!r} is empty or unlabelled; "
                                 "evaluate on a labelled split (CommonsenseTask.eval_split='validation')")

    # ------------------------------------------------------------------ model and encoding
    def _load_model(self) -> None:
        from smc_jax.models import hf

        self.checkpoint_dir = hf.resolve_checkpoint_dir(self.pretrained)
        config = dict(hf.read_config(self.checkpoint_dir))
        if self.dropout is not None:
            config["hidden_dropout_prob"] = float(self.dropout)
        if self.attention_dropout is not None:
            config["attention_probs_dropout_prob"] = float(self.attention_dropout)
        self.hf_config = config
        self.model_name = str(config.get("model_type"))
        head = "masked_lm" if self.dataset == "winogrande" else "multiple_choice"
        self.module = hf.build_module(config, head, DTYPES[self.dtype], remat=bool(self.remat))
        self.tokenizer = load_fast_tokenizer(self.checkpoint_dir, self.pretrained, "option spans need offsets")
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self.mask_id = self.tokenizer.mask_token_id
        if self.dataset == "winogrande" and self.mask_id is None:
            raise ValueError(f"PRETRAINED={self.pretrained!r}: its tokenizer has no mask token (WinoGrande needs one)")
        self.use_segments = int(config.get("type_vocab_size", 1)) > 1
        limit = int(config.get("max_position_embeddings", 512)) - (2 if self.model_name == "roberta" else 0)
        if self.max_length > limit:
            raise ValueError(f"MAX_LENGTH={self.max_length} exceeds what {self.pretrained!r} supports ({limit})")

    def _encode(self, rows: list) -> list[dict[str, Any]]:
        """Token ids per example: ``{'choices': [(ids, segments), ...], 'label'}`` or WinoGrande's
        ``{'choices': [(query ids, span), (candidate ids, span)], 'label'}``."""
        out = []
        for row in rows:
            if self.dataset == "winogrande":
                e = data.encode_winogrande(row, self.tokenizer, self.max_length)
                out.append({"choices": [(e.query_ids, e.query_span), (e.cand_ids, e.cand_span)], "label": row.label})
            else:
                encoded = data.encode_question(row, self.tokenizer, self.dataset, self.max_length,
                                               self.max_option_length)
                out.append({"choices": [(e.input_ids, e.segment_ids) for e in encoded], "label": row.label})
        return out

    # ------------------------------------------------------------------ what the engine reads
    @property
    def metrics(self) -> tuple[str, ...]:
        if self.dataset == "race" and len(self.eval_rows) > 1:
            return tuple(k for k in self.eval_rows if k != "accuracy")
        return ("accuracy",)

    @property
    def num_eval(self) -> int:
        return len(self.eval_rows["accuracy"])

    def config(self) -> dict[str, Any]:
        """The settings that decide a dense run's result (the dense-workdir hash reads them)."""
        skip = {"data_dir", "eval_batch_size", "length_buckets", "remat", "test_split", "fold"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def describe(self) -> str:
        evals = ", ".join(f"{k} on {len(v)}" for k, v in self.eval_rows.items())
        return (f"{self.dataset}: {len(self.train)} train ({self.train_split}), {evals}; {self.model_name} "
                f"{self.pretrained!r}, {self.dtype}")

    # ------------------------------------------------------------------ batches
    def make_batch(self, examples: Sequence[dict[str, Any]], rows: int) -> dict[str, np.ndarray]:
        """``examples`` padded to ``rows`` rows (weight 0) and one bucket length. Multiple choice:
        ``input_ids``/``attention_mask``/``token_type_ids`` ``[rows, choices, length]``, ``labels``;
        WinoGrande: ``input_ids``, ``attention_mask``, ``span`` ``[rows, 2, length]`` (query, candidate)."""
        if not examples or len(examples) > rows:
            raise ValueError(f"a batch holds 1..{rows} examples, got {len(examples)}")
        num_choices = len(examples[0]["choices"])
        longest = max(len(ids) for e in examples for ids, _ in e["choices"])
        length = bucket_length(longest, self.length_buckets, self.max_length)
        ids = np.full((rows, num_choices, length), self.pad_id, np.int32)
        mask = np.zeros((rows, num_choices, length), np.int32)
        extra = np.zeros((rows, num_choices, length), np.int32)
        labels = np.zeros((rows,), np.int32)
        weights = np.zeros((rows,), np.float32)
        for b, e in enumerate(examples):
            if len(e["choices"]) != num_choices:
                raise ValueError(f"examples with {num_choices} and {len(e['choices'])} choices in one batch")
            for c, (tokens, aux) in enumerate(e["choices"]):
                ids[b, c, : len(tokens)] = tokens
                mask[b, c, : len(tokens)] = 1
                if self.dataset == "winogrande":
                    extra[b, c, aux[0]:aux[1]] = 1
                elif self.use_segments:
                    extra[b, c, : len(aux)] = aux
            labels[b], weights[b] = max(e["label"], 0), 1.0
        key = "span" if self.dataset == "winogrande" else "token_type_ids"
        return {"input_ids": ids, "attention_mask": mask, key: extra, "labels": labels, "weights": weights}

    def epoch_order(self, seed: int, epoch: int) -> list[list[int]]:
        """A fresh shuffle per (seed, epoch), ``batch_size`` questions a batch (the last one padded). SNIP's batch
        is the first of a separate shuffle (fairseq consumes epoch 1's first batch, Q-C9; here every batch is
        still trained on)."""
        return shuffled_batches(len(self.train), self.batch_size, seed, epoch)

    def make_train_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        return self.make_batch([self.train[i] for i in indices], self.batch_size)

    # ------------------------------------------------------------------ model
    def init_params(self, key: jax.Array) -> PyTree:
        """The checkpoint's weights; heads it lacks are newly initialised from ``key``."""
        from smc_jax.models import hf

        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        params = hf.load_params(self.module, self.checkpoint_dir, config=self.hf_config, seed=seed)
        return jax.tree.map(jnp.asarray, params)

    def _trace_param_axes(self) -> PyTree:
        import flax.linen as nn

        from smc_jax.models import hf

        return nn.get_partition_spec(hf.abstract_params(self.module))

    def _scores(self, params: PyTree, batch: dict[str, jax.Array], key: jax.Array | None) -> jax.Array:
        """Per-choice scores ``[rows, choices]``: classification logits, or WinoGrande's mean option log-prob."""
        deterministic = key is None
        rngs = None if deterministic else {"dropout": key}
        if self.dataset != "winogrande":
            segments = batch["token_type_ids"] if self.use_segments else None
            logits = self.module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                       token_type_ids=segments, deterministic=deterministic, rngs=rngs)
            return logits.astype(jnp.float32)
        ids, span = batch["input_ids"], batch["span"]
        rows, choices, length = ids.shape
        masked = jnp.where(span == 1, self.mask_id, ids).reshape(rows * choices, length)
        logits = self.module.apply({"params": params}, masked, batch["attention_mask"].reshape(rows * choices, length),
                                   deterministic=deterministic, rngs=rngs)
        lprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        token = jnp.take_along_axis(lprobs, ids.reshape(rows * choices, length)[..., None], axis=-1)[..., 0]
        span = span.reshape(rows * choices, length).astype(jnp.float32)
        return ((token * span).sum(-1) / jnp.maximum(span.sum(-1), 1.0)).reshape(rows, choices)

    def loss(self, params: PyTree, batch: dict[str, jax.Array], key: jax.Array | None = None) -> jax.Array:
        """Mean over the real rows (fairseq sums and divides the gradient by the sample size): sentence
        ranking cross-entropy, or WinoGrande's margin loss. Dropout on with ``key``, off with ``None``."""
        scores = self._scores(params, batch, key)
        weights = batch["weights"]
        if self.dataset == "winogrande":  # column 0 is the correct option (the query)
            q, c = scores[:, 0], scores[:, 1]
            per_row = -q + self.margin_alpha * jnp.maximum(c - q + self.margin_beta, 0.0)
        else:
            lprobs = jax.nn.log_softmax(scores, axis=-1)
            per_row = -jnp.take_along_axis(lprobs, batch["labels"][:, None], axis=-1)[:, 0]
        return (per_row * weights).sum() / jnp.maximum(weights.sum(), 1.0)

    # ------------------------------------------------------------------ evaluation
    @functools.cached_property
    def _eval_sets(self) -> dict[str, list[EvalChunk]]:
        out = {}
        for name, rows in self.eval_rows.items():
            order = sorted(range(len(rows)), key=lambda i: max(len(ids) for ids, _ in rows[i]["choices"]))
            out[name] = eval_chunks(rows, self.eval_batch_size, self.make_batch, order=order)
        return out

    def eval_sets(self) -> dict[str, list[EvalChunk]]:
        """Per evaluation set (``accuracy``: ``eval_split``; RACE also ``middle_accuracy`` / ``high_accuracy`` on
        ``test_split``), chunks sorted by length (less padding), built once."""
        return self._eval_sets

    def eval_step(self, params: PyTree, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """``correct`` per question: the argmax choice is the label (WinoGrande: the query scores >= the other)."""
        scores = self._scores(params, batch, None)
        if self.dataset == "winogrande":
            return {"correct": scores[:, 0] >= scores[:, 1]}
        return {"correct": jnp.argmax(scores, axis=-1) == batch["labels"]}

    def compute_metrics(self, outputs: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
        """Accuracy (%) on each evaluation set, with ``num_eval``."""
        result: dict[str, float] = {name: 100.0 * int(np.sum(outputs[name]["correct"])) / len(rows)
                                    for name, rows in self.eval_rows.items()}
        result["num_eval"] = self.num_eval
        return result
