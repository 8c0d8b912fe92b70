"""The tree decoder of GTS and Graph2Tree: cells, teacher forcing, beam search and loss, reading only an
encoder's outputs [B, S, H] and problem vector [B, H] (DESIGN.md "Tree decoders under jit").

- :mod:`.cells`: the original's ``Prediction``, ``GenerateNode`` and ``Merge`` as pure functions of a
  parameter dict (and as Flax modules), and :class:`DecoderParams`, which declares their parameters;
- :mod:`.teacher_forcing`: one ``lax.scan`` over the target prefix positions, driven by a host schedule;
- :mod:`.beam_search`: the original's ``evaluate_tree``, batched over problems and beams;
- :mod:`.loss`: the masked cross-entropy and :func:`make_loss`, its training loss with deferred weight gradients.
"""

from smc_jax.models.tree_decoder.beam_search import beam_search
from smc_jax.models.tree_decoder.cells import (
    NEG_INF,
    PLAIN,
    DecoderParams,
    GenerateNode,
    LinearParams,
    Merge,
    Prediction,
    StepOps,
    torch_uniform,
)
from smc_jax.models.tree_decoder.loss import make_loss, masked_cross_entropy
from smc_jax.models.tree_decoder.teacher_forcing import decoder_step, teacher_forced

__all__ = ["NEG_INF", "PLAIN", "DecoderParams", "GenerateNode", "LinearParams", "Merge", "Prediction", "StepOps",
           "beam_search", "decoder_step", "make_loss", "masked_cross_entropy", "teacher_forced", "torch_uniform"]
