"""The arithmetic-reasoning task as the training engine sees it: GTS or Graph2Tree on MAWPS, ASDiv-A or SVAMP.

:class:`ArithmeticTask` loads one train/dev pair (one fold of a cross-validated dataset), builds the
vocabularies and the model (``model``: ``'gts'`` or ``'graph2tree'``), and gives the engine what
:class:`smc_jax.tasks.base.Task` asks: initial params, the shuffled padded batches of each epoch, the loss, the
``embedding`` parameter group of SPEC §1.2's optimizer, and the beam-search evaluation scored with the SVAMP
rules (value and equation accuracy). Data and scoring live in :mod:`smc_jax.tasks.arithmetic.data`, Graph2Tree's
graphs in :mod:`.graphs` (built once per example), padded batches in :mod:`.batches`, the networks in
:mod:`smc_jax.models.gts` and :mod:`smc_jax.models.graph2tree`.

Batches are padded to bucket lengths (inputs, targets) and to a fixed batch size, so the train step
compiles once per bucket pair; padded rows have target length 0 and weigh nothing in the loss.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from smc_jax.models.graph2tree import Graph2Tree
from smc_jax.models.gts import GTS
from smc_jax.models.tree_decoder import make_loss
from smc_jax.models.tree_schedule import example_schedule
from smc_jax.tasks.arithmetic import data, graphs
from smc_jax.tasks.arithmetic.batches import input_batch, make_batch, packed_size
from smc_jax.tasks.base import EvalChunk, TaskBase
from smc_jax.tasks.batching import bucket_length, check_settings, eval_chunks, load_fast_tokenizer

PyTree = Any


@dataclasses.dataclass
class ArithmeticTask(TaskBase):
    """GTS or Graph2Tree on one arithmetic dataset (and fold). Every field is a gin knob (``ArithmeticTask.NAME``).

    - ``dataset``: ``mawps`` | ``asdiv`` | ``svamp``; ``fold``: 0–4 for the cross-validated two, ``None``
      for ``svamp`` (``'all'`` is expanded by the engine); ``data_dir``: ``None`` = ``$SMC_DATA_DIR/arithmetic``,
      else the data shipped in the package (``resolve_data_dir``).
    - ``pretrained``: ``None`` = learned embeddings (GTS(S)); a BERT/RoBERTa hub id or local checkpoint
      directory (the paper: ``roberta-base``) = that encoder's last hidden state feeds the LSTM (SPEC §1.2:
      the words joined with spaces, tokenised with the checkpoint's tokenizer, ``<s> … </s>``), trained in
      the ``embedding`` parameter group; ``number_positions``: ``'aligned'`` (each number's first sub-token)
      or ``'original'`` (the word indices used on the sub-token sequence, SPEC Q-A3).
    - ``batch_size`` (SPEC: 4 for CV datasets, 8 for SVAMP), ``max_train_examples`` /
      ``max_eval_examples`` (first N rows; ``None`` = all).
    - ``model``: ``'gts'`` (:class:`smc_jax.models.gts.GTS`) or ``'graph2tree'``
      (:class:`smc_jax.models.graph2tree.Graph2Tree`, bound from the ``MODEL`` macro of ``gin/models/*.gin``);
      ``hidden`` 512, ``embedding_size`` 768, ``num_layers`` 2, ``dropout`` 0.5; ``gcn_dropout`` (Graph2Tree's
      graph module, 0.3). Graph2Tree's graphs (:mod:`.graphs`) are built once per example: over the words for
      learned embeddings, over the sub-tokens for a pretrained encoder, with numbers at ``number_positions``.
    - the optimizer is ``Optimizer.*`` (gin/tasks/arithmetic.gin: SPEC §1.2's Adam with L2, StepLR per epoch);
      the parameter group ``embedding`` is the learned embedding or the pretrained encoder.
    - decoding: ``beam_size`` 5, ``max_output_length`` 45, ``eval_batch_size`` problems per jitted call.
    - ``show_train_accuracy``: also decode the training set after every epoch (the original always does;
      off by default).
    - padding: ``input_buckets``, ``target_buckets`` (lengths a batch is padded to; the decoder runs every
      step of its target bucket, so the common short targets get buckets of their own).
    """

    dataset: str = "mawps"
    fold: int | None = 0
    data_dir: str | None = None
    pretrained: str | None = None
    number_positions: str = "aligned"
    batch_size: int = 4
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    hidden: int = 512
    embedding_size: int = 768
    num_layers: int = 2
    dropout: float = 0.5
    beam_size: int = 5
    max_output_length: int = 45
    eval_batch_size: int = 128
    input_buckets: tuple[int, ...] = (32, 48, 64, 96, 128)
    target_buckets: tuple[int, ...] = (5, 7, 9, 16, 32, 48)
    show_train_accuracy: bool = False
    model: str = "gts"
    gcn_dropout: float = 0.3

    family = "arithmetic"
    MODELS = ("gts", "graph2tree")
    default_model = "gts"  # runs of other models carry the model in their names
    metric = "value_accuracy"
    metrics = ("value_accuracy", "equation_accuracy")

    def __post_init__(self):
        if self.number_positions not in data.NUMBER_POSITIONS:
            raise ValueError(f"ArithmeticTask.number_positions must be one of {data.NUMBER_POSITIONS}, "
                             f"got {self.number_positions!r}")
        check_settings(self, positive=("batch_size", "hidden", "embedding_size", "num_layers", "beam_size",
                                       "max_output_length", "eval_batch_size"),
                       optional_positive=("max_train_examples", "max_eval_examples"),
                       fractions=("dropout", "gcn_dropout"))
        if self.model not in self.MODELS:
            raise ValueError(f"ArithmeticTask.model (MODEL) must be one of {self.MODELS}, got {self.model!r}")
        root = data.resolve_data_dir(self.data_dir, self.dataset)
        train = data.load_problems(data.split_path(root, self.dataset, self.fold, "train"))
        dev = data.load_problems(data.split_path(root, self.dataset, self.fold, "dev"))
        # over the whole files, so subsets share one vocabulary
        self.vocab = data.build_vocab(train, dev, dev_words=self.pretrained is not None)
        encoder, self.pad_id = self._load_pretrained()
        train, dev = train[: self.max_train_examples], dev[: self.max_eval_examples]
        encode = functools.partial(data.encode, vocab=self.vocab, tokenizer=self.tokenizer,
                                   number_positions=self.number_positions)
        self.train = [encode(p) for p in train]
        self.dev = [encode(p) for p in dev]
        self.train_graphs = self.dev_graphs = None  # Graph2Tree: each example's graph edges
        if self.model == "graph2tree":
            self.train_graphs = [graphs.example_edges(p, e, self.tokenizer) for p, e in zip(train, self.train)]
            self.dev_graphs = [graphs.example_edges(p, e, self.tokenizer) for p, e in zip(dev, self.dev)]
        self.merge_depth = max([1] + [len(c) for e in self.train
                                      for c in example_schedule(e.target_ids, self.vocab.num_start)[2]])
        settings = dict(
            vocab_size=len(self.vocab.input_words), num_ops=self.vocab.num_start,
            num_generate=len(self.vocab.generate_nums), unk_id=self.vocab.output_index["UNK"],
            hidden=self.hidden, embedding_size=self.embedding_size, num_layers=self.num_layers,
            dropout=self.dropout, pretrained_encoder=encoder, pretrained_name=self.pretrained_name)
        self.network = (Graph2Tree(**settings, gcn_dropout=self.gcn_dropout) if self.model == "graph2tree"
                        else GTS(**settings))

    @property
    def model_name(self) -> str:
        """``summary.json["model"]``: ``'gts'`` or ``'graph2tree'``."""
        return self.model

    @classmethod
    def configured_model(cls, bindings: dict[str, Any]) -> str:
        """The model a configuration's ``ArithmeticTask`` bindings choose, without loading anything."""
        return str(bindings.get("model", cls.default_model))

    def _load_pretrained(self) -> tuple[nn.Module | None, int]:
        """The pretrained encoder module (its params kept for :meth:`init_params`) and the input padding id."""
        self.tokenizer, self.pretrained_params, self.pretrained_name = None, None, "roberta"
        if self.pretrained is None:
            return None, 0
        from smc_jax.models import hf

        directory = hf.resolve_checkpoint_dir(self.pretrained)
        encoder, self.pretrained_params = hf.from_pretrained(str(directory))
        self.pretrained_name = hf.read_config(directory)["model_type"]
        self.tokenizer = load_fast_tokenizer(directory, self.pretrained, "number positions need character offsets")
        return encoder, int(self.tokenizer.pad_token_id or 0)

    # ------------------------------------------------------------------ what the engine reads
    @classmethod
    def folds(cls, dataset: str = "mawps") -> int | None:
        """How many folds ``FOLD='all'`` expands to; ``None`` for single-split datasets."""
        return data.NUM_FOLDS if data.DATASETS[dataset][1] else None

    @property
    def num_eval(self) -> int:
        return len(self.dev)

    @property
    def param_groups(self) -> dict[str, str]:
        """``embedding``: the learned embedding or the pretrained encoder (SPEC §1.2's second Adam group)."""
        return {"embedding": f"(embedding|{re.escape(self.pretrained_name)})/.*"}

    def config(self) -> dict[str, Any]:
        """The settings that decide a dense run's result (the dense-workdir hash reads them)."""
        skip = {"data_dir", "eval_batch_size", "show_train_accuracy"}  # (pretrained and its settings count)
        if self.model == "gts":  # GTS's settings as before the model choice existed (the same dense-run hash)
            skip |= {"model", "gcn_dropout"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}

    def describe(self) -> str:
        fold = "" if self.fold is None else f" fold {self.fold}"
        inputs = (f"{len(self.vocab.input_words)} words" if self.pretrained is None else
                  f"{self.pretrained_name} encoder {self.pretrained!r}, {self.number_positions} number positions")
        return (f"{self.dataset}{fold}: {self.model}, {len(self.train)} train / {len(self.dev)} dev problems, "
                f"{inputs}, {len(self.vocab.output_words)} output tokens")

    # ------------------------------------------------------------------ batches
    def make_train_batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
        examples = [self.train[i] for i in indices]
        target_length = bucket_length(max(len(e.target_ids) for e in examples), self.target_buckets)
        # a prefix expression of length T closes at most (T - 1) // 2 sub-trees with one number
        depth = max(1, min(self.merge_depth, (target_length - 1) // 2))
        edges = None if self.train_graphs is None else [self.train_graphs[i] for i in indices]
        return make_batch(examples, self.vocab, self.batch_size,
                          bucket_length(max(len(e.input_ids) for e in examples), self.input_buckets), target_length,
                          depth, self.pad_id, edges)

    def epoch_order(self, seed: int, epoch: int) -> list[list[int]]:
        """SPEC §1.2 step 6: the original's shuffled batching (the same for a resumed run)."""
        return data.epoch_batches(len(self.train), self.batch_size, seed, epoch, [len(e.input_ids) for e in self.train])

    # ------------------------------------------------------------------ model
    def init_params(self, key: jax.Array) -> PyTree:
        params = nn.meta.unbox(self.network.init(key, self._example_batch(), method="declare"))["params"]
        if self.pretrained_params is not None:  # the checkpoint's weights replace the random ones
            name = self.pretrained_name
            fresh, loaded = jax.tree.map(jnp.shape, params[name]), jax.tree.map(jnp.shape, self.pretrained_params)
            if fresh != loaded:
                raise ValueError(f"PRETRAINED={self.pretrained!r}: the loaded {name} params do not match the module's")
            params = {**params, name: jax.tree.map(jnp.asarray, self.pretrained_params)}
        return params

    def _example_batch(self) -> dict[str, jax.Array]:
        """The first training examples as one batch: the shapes ``init`` traces."""
        return jax.tree.map(jnp.asarray, self.make_train_batch(range(min(self.batch_size, len(self.train)))))

    def _trace_param_axes(self) -> PyTree:
        batch = self._example_batch()
        return nn.get_partition_spec(jax.eval_shape(lambda k: self.network.init(k, batch, method="declare"),
                                                    jax.random.key(0)))["params"]

    @functools.cached_property
    def _loss(self):
        return make_loss(self.network)

    def loss(self, params: PyTree, batch: dict[str, jax.Array], key: jax.Array | None = None) -> jax.Array:
        """Masked cross-entropy with dropout on (``key``) or off (``None``); its gradient computes the decoder's
        weight gradients outside the step loop (:func:`smc_jax.models.tree_decoder.make_loss`)."""
        return self._loss(params, batch, key)

    # ------------------------------------------------------------------ evaluation
    def _chunks(self, examples: Sequence[data.Encoded], edges: Sequence[np.ndarray] | None) -> list[EvalChunk]:
        """``examples`` (with their graph ``edges``, Graph2Tree) in chunks of ``eval_batch_size`` rows, all padded to
        one input length (Graph2Tree's also to one number of real-token positions)."""
        length = bucket_length(max(len(e.input_ids) for e in examples), self.input_buckets)
        pairs = list(zip(examples, edges if edges is not None else [None] * len(examples)))
        size = min(self.eval_batch_size, len(examples))
        packed = None  # Graph2Tree: its graph module's position-wise layers on the real tokens only
        if edges is not None:
            packed = packed_size([examples[i:i + size] for i in range(0, len(examples), size)], size, length)

        def make(chunk: list, rows: int) -> dict[str, np.ndarray]:
            return input_batch([e for e, _ in chunk], rows, length, self.vocab.copy_nums, self.pad_id,
                               None if edges is None else [g for _, g in chunk], packed)

        return eval_chunks(pairs, size, make)

    @functools.cached_property
    def _eval_sets(self) -> dict[str, list[EvalChunk]]:
        sets = {"dev": self._chunks(self.dev, self.dev_graphs)}
        if self.show_train_accuracy:
            sets["train"] = self._chunks(self.train, self.train_graphs)
        return sets

    def eval_sets(self) -> dict[str, list[EvalChunk]]:
        """``dev`` (and ``train`` with ``show_train_accuracy``: the original decodes the training set every epoch;
        off by default, it costs more than the dev evaluation). Built once: the sets never change."""
        return self._eval_sets

    def eval_step(self, params: PyTree, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Beam-search token ids (``tokens``, ``length``) of a chunk."""
        out = self.network.apply({"params": params}, batch, method="beam_search", beam_size=self.beam_size,
                                 max_length=self.max_output_length)
        return {"tokens": out["tokens"], "length": out["length"]}

    @staticmethod
    def _predictions(outputs: dict[str, np.ndarray]) -> list[list[int]]:
        return [list(map(int, t[:n])) for t, n in zip(outputs["tokens"], outputs["length"])]

    def compute_metrics(self, outputs: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
        """Value and equation accuracy (%) on the dev split with ``num_eval`` and the correct counts (SVAMP's
        rules); with ``show_train_accuracy`` also ``train_value_accuracy`` and ``train_equation_accuracy``."""
        result = data.accuracy(self._predictions(outputs["dev"]), self.dev, self.vocab)
        if "train" in outputs:
            train = data.accuracy(self._predictions(outputs["train"]), self.train, self.vocab)
            result.update(train_value_accuracy=train["value_accuracy"],
                          train_equation_accuracy=train["equation_accuracy"])
        return result
