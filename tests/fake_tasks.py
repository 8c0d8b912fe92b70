"""Tiny fake tasks for engine tests: linear regression with scripted evaluation results."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from smc_jax.tasks.base import EvalChunk, TaskBase
from smc_jax.train.optim import Optimizer

ADAM = Optimizer(kind="adam", learning_rate=1e-2)


@dataclasses.dataclass
class FakeTask(TaskBase):
    """Epoch-based: 5 batches of 4 rows per epoch; evaluation ``i`` reports ``scores[i]`` as ``acc``."""

    scores: tuple = (90.0, 50.0, 60.0, 55.0)
    fold: int | None = 0
    metric_mode: str = "max"
    selection: str = "best"
    dataset: str = "fake"
    batch_size: int = 4
    lr_scale: float = 1.0
    poison_epoch: int | None = None  # from this epoch on, the third batch of each epoch holds a NaN

    model_name = "linear"
    pretrained = None
    metric = "acc"
    metrics = ("acc", "other")
    num_eval = 10

    def __post_init__(self):
        self.calls = 0
        self.train = list(range(20))

    def init_params(self, key):
        return {"w": jax.random.normal(key, (8, 4)), "b": jnp.zeros(4)}

    def epoch_order(self, seed, epoch):
        return [[seed, epoch, i] for i in range(self.steps_per_epoch)]

    def make_train_batch(self, indices):
        rng = np.random.default_rng(list(indices))
        x = rng.normal(size=(self.batch_size, 8)).astype(np.float32)
        if self.poison_epoch is not None and indices[1] >= self.poison_epoch and indices[2] == 2:
            x[0, 0] = np.nan
        return {"x": x}

    def loss(self, params, batch, key=None):
        return self.lr_scale * jnp.mean((batch["x"] @ params["w"] + params["b"] - 1.0) ** 2)

    def eval_sets(self):
        return {"dev": [EvalChunk(2, {"x": np.ones((4, 8), np.float32)})]}

    def eval_step(self, params, batch):
        return {"y": batch["x"] @ params["w"] + params["b"]}

    def compute_metrics(self, outputs):
        assert outputs["dev"]["y"].shape == (2, 4)  # trimmed to the real rows
        score = self.scores[self.calls]
        self.calls += 1
        return {"acc": score, "other": None if score is None else -score, "num_eval": self.num_eval}

    def config(self):
        return {"scores": self.scores, "fold": self.fold}

    def describe(self):
        return "fake"


class SampledStream:
    """An unbounded stream: batch ``i`` is drawn from ``default_rng([seed, i])``; the position is ``i``."""

    def __init__(self, seed: int, rows: int):
        self.seed, self.rows, self.index = seed, rows, 0

    def __iter__(self):
        return self

    def __next__(self):
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        return {"x": rng.normal(size=(self.rows, 8)).astype(np.float32)}

    def state(self):
        return {"index": self.index}

    def restore(self, state):
        self.index = int(state["index"])


@dataclasses.dataclass
class SampledFakeTask(FakeTask):
    """No epochs: the training stream is an unbounded sampled iterator (as translation's temperature sampling)."""

    @property
    def steps_per_epoch(self):
        return None

    def train_stream(self, seed):
        return SampledStream(seed, self.batch_size)

    def snip_batch(self, seed):
        return next(SampledStream(seed + 1000, self.batch_size))


@dataclasses.dataclass
class MLPTask(TaskBase):
    """A small embedding + MLP classifier on synthetic, learnable data (the label is the median token's
    class), with logical axis names on every parameter: compiles in seconds, and every kernel shards over fsdp."""

    fold: int | None = None
    dataset: str = "mlp"
    batch_size: int = 8
    vocab: int = 128
    width: int = 64
    classes: int = 8
    length: int = 6
    num_train: int = 64

    model_name = "mlp"
    pretrained = None
    metric = "accuracy"
    metrics = ("accuracy",)
    num_eval = 16

    def __post_init__(self):
        rng = np.random.default_rng(0)
        self.tokens = rng.integers(0, self.vocab, (self.num_train + self.num_eval, self.length)).astype(np.int32)
        self.labels = (np.sort(self.tokens, axis=1)[:, self.length // 2] % self.classes).astype(np.int32)
        self.train = list(range(self.num_train))

    def init_params(self, key):
        k = jax.random.split(key, 3)
        return {"embed": {"embedding": 0.5 * jax.random.normal(k[0], (self.vocab, self.width))},
                "hidden": {"kernel": jax.random.normal(k[1], (self.width, self.width)) / self.width ** 0.5,
                           "bias": jnp.zeros(self.width)},
                "out": {"kernel": jax.random.normal(k[2], (self.width, self.classes)) / self.width ** 0.5}}

    def _trace_param_axes(self):
        spec = jax.sharding.PartitionSpec
        return {"embed": {"embedding": spec("vocab", "embed")}, "hidden": {"kernel": spec("embed", "mlp"),
                                                                           "bias": spec("mlp")},
                "out": {"kernel": spec("embed", "vocab")}}

    def _logits(self, params, tokens, key=None):
        x = params["embed"]["embedding"][tokens].mean(axis=1)
        h = jax.nn.relu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
        if key is not None:  # dropout, so the rng is part of the step
            h = jnp.where(jax.random.bernoulli(key, 0.9, h.shape), h / 0.9, 0.0)
        return h @ params["out"]["kernel"]

    def epoch_order(self, seed, epoch):
        order = np.random.default_rng([seed, epoch]).permutation(self.num_train)
        return [order[i:i + self.batch_size].tolist() for i in range(0, self.num_train, self.batch_size)]

    def make_train_batch(self, indices):
        return {"tokens": self.tokens[list(indices)], "labels": self.labels[list(indices)]}

    def loss(self, params, batch, key=None):
        logits = self._logits(params, batch["tokens"], key)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["labels"][:, None], axis=1))

    def eval_sets(self):
        rows = np.arange(self.num_train, self.num_train + self.num_eval)
        return {"dev": [EvalChunk(self.num_eval, {"tokens": self.tokens[rows], "labels": self.labels[rows]})]}

    def eval_step(self, params, batch):
        return {"correct": jnp.argmax(self._logits(params, batch["tokens"]), axis=-1) == batch["labels"]}

    def compute_metrics(self, outputs):
        return {"accuracy": 100.0 * float(np.mean(outputs["dev"]["correct"])), "num_eval": self.num_eval}

    def config(self):
        return {"width": self.width}

    def describe(self):
        return "mlp"
