"""Protein property prediction as the training engine sees it: SMC-Bench's ESM-1b fine-tuning (SPEC §1.3,
``spec/protein.md`` §3) on HotProtein (HP-S, HP-S²C2), FLIP meltome (classes or Tm) and TAPE stability.

A batch is ``batch_size`` sequences (SMC-Bench: 3, shuffled each epoch, the last batch short: its padded rows weigh
nothing) padded to a length bucket; the loss is the mean cross-entropy (classes) or squared error (regression;
``'standardized_mse'`` on targets standardised by train's mean and deviation). Each evaluation scores the test split
and, where there is one, the validation split: accuracy (%) for classes, Spearman's rho
(``scipy.stats.spearmanr``, average ranks for ties) for regression; ``select_on`` picks the split whose metric
selects the reported evaluation (``'test'``, SMC-Bench's best test accuracy over epochs; or ``'valid'``), and
``metrics`` lists the test metrics a report tabulates. Data and labels: :mod:`.examples`; the model: :mod:`.head`.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from smc_jax.tasks.base import EvalChunk, TaskBase
from smc_jax.tasks.batching import check_settings, eval_chunks, shuffled_batches
from smc_jax.tasks.protein import examples
from smc_jax.tasks.protein.head import HEAD_INITS, HEAD_PATTERN, PropertyHead, build_encoder, encoder_params, mean_pool
from smc_jax.tasks.protein.tokenizer import ESM_VOCAB, TRUNCATIONS, ProteinTokenizer, resolve_truncation

PyTree = Any
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REGRESSION_LOSSES = ("mse", "standardized_mse")
SELECT_ON = ("test", "valid")
SHUFFLE_SEED = 0  # the permutation of shuffle_train_labels


def spearman(prediction: np.ndarray, target: np.ndarray) -> float:
    """Spearman's rho (``scipy.stats.spearmanr``); NaN when either side is constant."""
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(prediction, target).statistic)


@dataclasses.dataclass
class ProteinTask(TaskBase):
    """A protein dataset with an ESM encoder and SMC-Bench's head. Every field is a gin knob (``ProteinTask.NAME``).

    - ``dataset``: ``hps`` | ``hps2c2`` | ``meltome`` | ``meltome_regression`` | ``stability``; ``data_dir`` (the
      dataset's folder; ``None``: ``$SMC_DATA_DIR/<folder>``, else the hub / FLIP download; HotProtein needs it);
      ``fold`` (``hps2c2``: 0..9). HotProtein: ``num_classes`` (``None``: 5 / 2), ``label_offset``,
      ``split_file`` / ``fasta_dir`` (override the layout), ``fasta_mode`` (``'smc'`` | ``'first_record'``).
      Meltome: ``meltome_split`` (FLIP's ``mixed_split`` | ``human`` | ``human_cell``; the shared early files
      ``clustered_task`` | ``full_task``), ``bins`` (``'quantile'`` | ``'edges'``), ``num_bins`` (3), ``bin_edges``.
      Tables: ``hub_id``, ``dedupe`` (``None``: meltome ``'exact'``, TAPE ``'none'``), ``valid_fraction``
      (``None``: 0.1 for tables without a validation split, 0 for HotProtein), ``valid_seed``.
    - ``pretrained``: an ESM hub id or checkpoint directory; ``None`` builds an ESM from ``model_config``
      (:class:`smc_jax.models.esm.EsmConfig` fields) with random weights. ``dtype`` (compute), ``remat``.
    - Tokens: ``truncation`` (``'smc'``: SMC-Bench's ``toks[:, :1022]``, eos lost on long sequences; ``'esm'``:
      cls + residues + eos), ``max_length`` (tokens; ``None``: 1022 / 1024), ``crop_length`` (residues kept from
      each sequence's start before truncation, for CPU runs; ``None``: all), ``length_buckets``.
    - Head: ``head_hidden`` (512), ``head_init`` (``'torch_uniform'`` | ``'lecun_normal'``); whether it trains is
      the optimizer's (``protein_head_group``). ``regression_loss`` (``'mse'`` | ``'standardized_mse'``).
    - ``select_on`` (``'test'`` | ``'valid'``); ``shuffle_train_labels`` (a control: train labels permuted);
      ``batch_size`` (3), ``eval_batch_size``, ``max_train_examples`` / ``max_eval_examples`` (first N).
    """

    dataset: str = "hps"
    pretrained: str | None = "facebook/esm1b_t33_650M_UR50S"
    model_config: Mapping[str, Any] | None = None
    data_dir: str | None = None
    fold: int | None = None
    num_classes: int | None = None
    label_offset: int = 0
    split_file: str | None = None
    fasta_dir: str | None = None
    fasta_mode: str = "smc"
    meltome_split: str = "mixed_split"
    bins: str = "quantile"
    num_bins: int = 3
    bin_edges: tuple[float, ...] | None = None
    hub_id: str | None = None
    dedupe: str | None = None
    valid_fraction: float | None = None
    valid_seed: int = 0
    truncation: str = "smc"
    max_length: int | None = None
    crop_length: int | None = None
    length_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024)
    head_hidden: int = 512
    head_init: str = "torch_uniform"
    regression_loss: str = "mse"
    select_on: str = "test"
    shuffle_train_labels: bool = False
    dtype: str = "float32"
    remat: bool = False
    batch_size: int = 3
    eval_batch_size: int = 8
    max_train_examples: int | None = None
    max_eval_examples: int | None = None

    family = "protein"

    @classmethod
    def folds(cls, dataset: str) -> int | None:
        spec = examples.DATASETS.get(dataset)
        return None if spec is None else spec.folds

    def __post_init__(self):
        self._check_settings()
        self.spec = examples.DATASETS[self.dataset]
        self._build_encoder()
        self._load_examples()
        self.head = PropertyHead(self.head_hidden, self.classes or 1, self.head_init)

    def _build_encoder(self) -> None:
        encoder = build_encoder(self.pretrained, self.model_config, DTYPES[self.dtype], self.remat)
        self.encoder, self.model_name = encoder, encoder.model_name
        self.esm_config = encoder.module.config
        if self.esm_config.vocab_size < len(ESM_VOCAB):
            raise ValueError(f"the encoder's vocab_size {self.esm_config.vocab_size} is smaller than the ESM "
                             f"alphabet ({len(ESM_VOCAB)} tokens)")
        cap = resolve_truncation(self.truncation, self.max_length)
        if not self.esm_config.rotary and cap > self.esm_config.max_position_embeddings - 2:
            raise ValueError(f"MAX_LENGTH={cap} tokens exceed the encoder's absolute positions "
                             f"({self.esm_config.max_position_embeddings - 2}); lower MAX_LENGTH")

    def _load_examples(self) -> None:
        """The splits, encoded: ``train`` / ``train_y`` and per evaluation split its tokens, labels and targets
        in length order."""
        limits = {"train": self.max_train_examples, "test": self.max_eval_examples}
        loaded = examples.load(
            self.dataset, self.data_dir, fold=self.fold, num_classes=self.num_classes, label_offset=self.label_offset,
            split_file=self.split_file, fasta_dir=self.fasta_dir, fasta_mode=self.fasta_mode,
            meltome_split=self.meltome_split, hub_id=self.hub_id, dedupe=self.dedupe,
            valid_fraction=self.valid_fraction, valid_seed=self.valid_seed, bins=self.bins, num_bins=self.num_bins,
            bin_edges=self.bin_edges, limits=limits if self.spec.source.startswith("hp_") else {})
        self.classes, self.edges = loaded.num_classes, loaded.edges
        splits = loaded.splits
        if "test" not in splits or "train" not in splits:
            raise ValueError(f"{self.dataset}: the data have no {'test' if 'train' in splits else 'train'} split "
                             f"(splits: {', '.join(splits)})")
        if self.select_on == "valid" and "valid" not in splits:
            raise ValueError(f"ProteinTask.select_on='valid' but {self.dataset} has no validation split; set "
                             "ProteinTask.valid_fraction (e.g. 0.1) or select_on='test'")
        self.tokenizer = ProteinTokenizer()
        encode = functools.partial(examples.TokenStore.encode, self.tokenizer, truncation=self.truncation,
                                   max_length=self.max_length, crop_length=self.crop_length)
        train = splits["train"].head(self.max_train_examples)
        if len(train) == 0:
            raise ValueError(f"{self.dataset}: the train split is empty")
        self.train, self.train_y = encode(train), train.labels
        if self.shuffle_train_labels:
            self.train_y = self.train_y[np.random.default_rng(SHUFFLE_SEED).permutation(len(self.train_y))]
        targets = self.train_y.astype(np.float64)
        self.target_mean, self.target_std = float(targets.mean()), float(targets.std()) or 1.0
        self.eval_data: dict[str, dict[str, Any]] = {}
        for name in ("test", "valid"):
            if name in splits:
                split = splits[name].head(self.max_eval_examples)
                if len(split) == 0:
                    raise ValueError(f"{self.dataset}: the {name} split is empty")
                store = encode(split)
                order = np.argsort(store.lengths, kind="stable")  # chunks of similar lengths: less padding
                self.eval_data[name] = {"store": store, "order": order, "labels": split.labels[order],
                                        "targets": loaded.targets[name][: len(split)][order]}
        self.priors = ({name: np.bincount(d["labels"], minlength=self.classes) / len(d["labels"])
                        for name, d in self.eval_data.items()} if self.classes else {})

    def _check_settings(self) -> None:
        if self.dataset not in examples.DATASETS:
            raise ValueError(f"ProteinTask.dataset {self.dataset!r} unknown; choose one of "
                             f"{', '.join(examples.DATASETS)}")
        if self.fold is not None and examples.DATASETS[self.dataset].folds is None:
            raise ValueError(f"{self.dataset} has no cross-validation folds; drop FOLD (got {self.fold!r})")
        choices = {"dtype": tuple(DTYPES), "truncation": TRUNCATIONS, "head_init": HEAD_INITS,
                   "regression_loss": REGRESSION_LOSSES, "select_on": SELECT_ON}
        for field, valid in choices.items():
            if getattr(self, field) not in valid:
                raise ValueError(f"ProteinTask.{field} must be one of {', '.join(valid)}, got {getattr(self, field)!r}")
        check_settings(self, positive=("batch_size", "eval_batch_size", "head_hidden"),
                       optional_positive=("max_train_examples", "max_eval_examples", "crop_length"))
        self.length_buckets = tuple(int(b) for b in self.length_buckets)
        if self.bin_edges is not None:
            self.bin_edges = tuple(float(e) for e in self.bin_edges)

    # ------------------------------------------------------------------ what the engine reads
    @property
    def main_metric(self) -> str:
        return "accuracy" if self.spec.classes else "spearman"

    @property
    def metric(self) -> str:
        return f"{self.select_on}/{self.main_metric}"

    @property
    def metrics(self) -> tuple[str, ...]:
        return ("test/accuracy", "test/spearman") if self.spec.binned else (f"test/{self.main_metric}",)

    @property
    def num_eval(self) -> int:
        return len(self.eval_data[self.select_on]["labels"])

    @property
    def param_groups(self) -> dict[str, str]:
        """``head``: the property head (its optimizer group: ``protein_head_group``); the encoder is ``default``."""
        return {"head": HEAD_PATTERN}

    def config(self) -> dict[str, Any]:
        """The settings that decide a dense run's result (the dense-workdir hash reads them)."""
        skip = {"data_dir", "eval_batch_size", "length_buckets", "remat", "fold"}
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        out["model_config"] = None if self.model_config is None else dict(self.model_config)
        return out

    def describe(self) -> str:
        sizes = ", ".join(f"{len(d['labels'])} {n}" for n, d in self.eval_data.items())
        kind = f"{self.classes} classes" if self.classes else "regression"
        if self.edges is not None:
            kind += f" (bins at {', '.join(f'{e:.4g}' for e in self.edges)})"
        if self.priors:
            kind += "; test priors " + "/".join(f"{p:.2f}" for p in self.priors["test"])
        c = self.esm_config
        source = repr(self.pretrained) if self.pretrained else "random init"
        return (f"{self.dataset}: {len(self.train)} train, {sizes}; {kind}; esm {source} ({c.num_hidden_layers} "
                f"layers, width {c.hidden_size}), head {self.head_hidden} ({self.head_init}), {self.dtype}")

    # ------------------------------------------------------------------ batches
    def _batch(self, store: examples.TokenStore, labels: np.ndarray, indices: Sequence[int], rows: int
               ) -> dict[str, np.ndarray]:
        """Rows ``indices`` of ``store`` padded to ``rows`` rows (weight 0) and a bucket length: ``input_ids``,
        ``attention_mask``, ``labels`` (int32 classes) or ``targets`` (float32), ``weights``."""
        tok = self.tokenizer
        ids, mask = store.batch(indices, rows, self.length_buckets, tok.pad_id, (tok.cls_id, tok.eos_id))
        weights = np.zeros(rows, np.float32)
        weights[: len(indices)] = 1.0
        values = np.zeros(rows, np.int32 if self.classes else np.float32)
        values[: len(indices)] = labels[np.asarray(indices, np.int64)]
        return {"input_ids": ids, "attention_mask": mask, "labels" if self.classes else "targets": values,
                "weights": weights}

    def epoch_order(self, seed: int, epoch: int) -> list[list[int]]:
        """A fresh shuffle per (seed, epoch), ``batch_size`` sequences a batch, the last one short (SMC-Bench's
        DataLoader: shuffle, ``drop_last=False``)."""
        return shuffled_batches(len(self.train), self.batch_size, seed, epoch)

    def make_train_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        return self._batch(self.train, self.train_y, indices, self.batch_size)

    # ------------------------------------------------------------------ model
    def init_params(self, key: jax.Array) -> PyTree:
        """The encoder's checkpoint weights (or a random init) and a new head, both from ``key``."""
        encoder_key, head_key = jax.random.split(key)
        head = jax.jit(self.head.init)(head_key, jnp.zeros((1, self.esm_config.hidden_size), jnp.float32))
        return {"esm": encoder_params(self.encoder, encoder_key), "head": nn.meta.unbox(head["params"])}

    def _trace_param_axes(self) -> PyTree:
        from smc_jax.models import hf

        width = self.esm_config.hidden_size
        head = jax.eval_shape(lambda: self.head.init(jax.random.key(0), jnp.zeros((1, width), jnp.float32)))
        return {"esm": nn.get_partition_spec(hf.abstract_params(self.encoder.module)),
                "head": nn.get_partition_spec(head["params"])}

    def _outputs(self, params: PyTree, batch: Mapping[str, jax.Array], key: jax.Array | None) -> jax.Array:
        """Head outputs ``[rows, C]`` (float32): encoder, mean pooling, head. Dropout on with ``key``."""
        deterministic = key is None
        hidden = self.encoder.module.apply({"params": params["esm"]}, batch["input_ids"], batch["attention_mask"],
                                           deterministic=deterministic,
                                           rngs=None if deterministic else {"dropout": key}).last_hidden_state
        pooled = mean_pool(hidden, batch["input_ids"], batch["attention_mask"])
        return self.head.apply({"params": params["head"]}, pooled).astype(jnp.float32)

    def loss(self, params: PyTree, batch: Mapping[str, jax.Array], key: jax.Array | None = None) -> jax.Array:
        """Mean over the real rows: cross-entropy (classes) or squared error (regression; standardised targets
        under ``'standardized_mse'``)."""
        out = self._outputs(params, batch, key)
        weights = batch["weights"]
        if self.classes:
            per_row = optax.softmax_cross_entropy_with_integer_labels(out, batch["labels"])
        else:
            target = batch["targets"]
            if self.regression_loss == "standardized_mse":
                target = (target - self.target_mean) / self.target_std
            per_row = jnp.square(out[:, 0] - target)
        return (per_row * weights).sum() / jnp.maximum(weights.sum(), 1.0)

    # ------------------------------------------------------------------ evaluation
    @functools.cached_property
    def _eval_sets(self) -> dict[str, list[EvalChunk]]:
        out = {}
        for name, d in self.eval_data.items():
            labels = np.zeros(len(d["order"]), np.int32 if self.classes else np.float32)  # eval_step reads none
            make = functools.partial(self._batch, d["store"], labels)
            out[name] = eval_chunks(list(range(len(d["order"]))), self.eval_batch_size, make, order=d["order"])
        return out

    def eval_sets(self) -> dict[str, list[EvalChunk]]:
        """``test`` and (where the data have one) ``valid``, in chunks sorted by length, built once."""
        return self._eval_sets

    def eval_step(self, params: PyTree, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """``logits`` ``[rows, C]`` (classes) or ``prediction`` ``[rows]`` on the targets' scale (regression)."""
        out = self._outputs(params, batch, None)
        if self.classes:
            return {"logits": out}
        prediction = out[:, 0]
        if self.regression_loss == "standardized_mse":
            prediction = prediction * self.target_std + self.target_mean
        return {"prediction": prediction}

    def compute_metrics(self, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
        """Per split: ``accuracy`` (%) for classes, plus on binned targets ``spearman`` (the expected class under
        the softmax against the raw targets) and ``prior_k`` (the split's class fractions); ``spearman`` and
        ``mse`` for regression. And ``num_eval``."""
        result: dict[str, float] = {}
        for name, d in self.eval_data.items():
            if self.classes:
                logits = np.asarray(outputs[name]["logits"], np.float64)
                result[f"{name}/accuracy"] = 100.0 * float(np.mean(logits.argmax(-1) == d["labels"]))
                if self.spec.binned:
                    probs = np.exp(logits - logits.max(-1, keepdims=True))
                    expected = (probs / probs.sum(-1, keepdims=True)) @ np.arange(self.classes)
                    result[f"{name}/spearman"] = spearman(expected, d["targets"])
                    result.update({f"{name}/prior_{k}": float(p) for k, p in enumerate(self.priors[name])})
            else:
                prediction = np.asarray(outputs[name]["prediction"], np.float64)
                result[f"{name}/spearman"] = spearman(prediction, d["targets"])
                result[f"{name}/mse"] = float(np.mean(np.square(prediction - d["targets"])))
        result["num_eval"] = self.num_eval
        return result
