"""GTS (Xie & Sun 2019, as in the SVAMP code, SPEC §1.2): an embedding (learned, or a pretrained encoder's last
hidden state), a 2-layer biLSTM, and the tree decoder of :mod:`smc_jax.models.tree_decoder`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from smc_jax.models.lstm import LSTM
from smc_jax.models.tree_decoder import DecoderParams, beam_search, masked_cross_entropy, teacher_forced


class GTS(nn.Module):
    """GTS: embedding -> 2-layer biLSTM -> tree decoder. The embedding is learned (the GTS(S) setting) or a
    pretrained BERT/RoBERTa encoder's last hidden state (``pretrained_encoder``, its params under
    ``pretrained_name``, e.g. ``roberta/encoder/layer/0/...``; SPEC §1.2, the paper's RoBERTa-base setting).

    ``encode`` gives the encoder outputs (both directions summed) and the problem vector: the forward
    output at each problem's last real token plus the backward output at its first. (The original reads the
    forward output at the batch's last position, which is padding, hence 0, for every shorter problem in a
    training batch; evaluation runs one problem at a time and does not see it. Fixed here.)
    ``encode_batch`` is what the decoder reads (here ``encode`` of the batch's inputs; Graph2Tree adds its graph
    module). ``teacher_forced`` runs the decoder over the target prefix sequences as one ``lax.scan``;
    ``beam_search`` decodes like the original's ``evaluate_tree``, batched. Train with
    :func:`smc_jax.models.tree_decoder.make_loss` (the same loss as ``__call__``, with the decoder's weight
    gradients computed outside the scan).
    """

    vocab_size: int
    num_ops: int
    num_generate: int
    unk_id: int
    hidden: int = 512
    embedding_size: int = 768
    num_layers: int = 2
    dropout: float = 0.5
    pretrained_encoder: nn.Module | None = None  # called as (input_ids, attention_mask, deterministic=...)
    pretrained_name: str = "roberta"

    def setup(self):
        if self.pretrained_encoder is None:
            self.embedding = nn.Embed(
                self.vocab_size, self.embedding_size,
                embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")))
        else:  # registered under its family's name, so masking rules read roberta/... or bert/...
            setattr(self, self.pretrained_name, self.pretrained_encoder.clone())
        self.encoder = LSTM(self.hidden, self.num_layers, bidirectional=True, dropout=self.dropout)
        self.em_dropout = nn.Dropout(self.dropout)
        self.decoder = DecoderParams(self.hidden, self.num_ops, self.num_generate, self.embedding_size)

    def encode(self, input_ids, lengths, deterministic: bool = True):
        """input_ids [B, S] (padded past ``lengths``), lengths [B] -> (encoder_outputs [B, S, H], problem [B, H])."""
        if self.pretrained_encoder is None:
            embedded = jnp.where((input_ids == 0)[..., None], 0.0, self.embedding(input_ids))  # padding_idx=0
        else:
            attention_mask = (jnp.arange(input_ids.shape[1])[None] < lengths[:, None]).astype(jnp.int32)
            embedded = getattr(self, self.pretrained_name)(input_ids, attention_mask, deterministic=deterministic)
        outputs = self.encoder(self.em_dropout(embedded, deterministic=deterministic), lengths, deterministic)
        forward, backward = outputs[..., : self.hidden], outputs[..., self.hidden:]
        last = jnp.maximum(lengths - 1, 0)
        problem = forward[jnp.arange(input_ids.shape[0]), last] + backward[:, 0]
        return forward + backward, problem

    def encode_batch(self, batch: dict, deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        """The encoder outputs [B, S, H] and problem vectors [B, H] the decoder reads, from ``batch``'s inputs."""
        return self.encode(batch["input_ids"], batch["lengths"], deterministic)

    def declare(self, batch: dict) -> None:
        """Create every parameter without running the decoder (``init(key, batch, method='declare')``: the
        same values as an init through ``__call__``, at a fraction of its cost): the encoder on ``batch`` and
        the decoder's parameter declarations."""
        self.decoder()
        self.encode_batch(batch, deterministic=True)

    def teacher_forced(self, batch: dict, deterministic: bool = True,
                       probes: Any = None) -> tuple[jax.Array, jax.Array, dict]:
        """Logits [B, L, ops + G + N], the targets they are scored against (UNK resolved) [B, L], and the tapped
        linear calls (:func:`smc_jax.models.tree_decoder.teacher_forced`, which documents ``batch``)."""
        p = self.decoder()
        encoder_outputs, problem = self.encode_batch(batch, deterministic)
        rng = None if deterministic or self.dropout <= 0 else self.make_rng("dropout")
        return teacher_forced(p, encoder_outputs, problem, batch, num_ops=self.num_ops, num_generate=self.num_generate,
                              unk_id=self.unk_id, dropout=self.dropout, rng=rng, probes=probes,
                              drop_numbers=lambda x: self.em_dropout(x, deterministic=deterministic))

    def beam_search(self, batch: dict, beam_size: int = 5, max_length: int = 45) -> dict:
        """The original ``evaluate_tree`` beam search, batched over problems and beams
        (:func:`smc_jax.models.tree_decoder.beam_search`)."""
        encoder_outputs, problem = self.encode_batch(batch, deterministic=True)
        return beam_search(self.decoder(), encoder_outputs, problem, batch, num_ops=self.num_ops,
                           num_generate=self.num_generate, beam_size=beam_size, max_length=max_length)

    def __call__(self, batch: dict, deterministic: bool = True) -> jax.Array:
        """The masked cross-entropy of the original: summed over target tokens, divided by their total."""
        logits, targets, _ = self.teacher_forced(batch, deterministic)
        return masked_cross_entropy(logits, targets, batch["target_lengths"])
