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
