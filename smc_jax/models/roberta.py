"""RoBERTa: the RoBERTa side of the BERT family in :mod:`smc_jax.models.bert` (positions counted from the
padding, fairseq's classification head, ``lm_head``, parameters under ``roberta/``)."""

from smc_jax.models.bert import (
    EncoderConfig,
    RobertaClassificationHead,
    RobertaForMaskedLM,
    RobertaForMultipleChoice,
    RobertaForSequenceClassification,
    RobertaLMHead,
    RobertaModel,
    roberta_position_ids,
)

__all__ = [
    "EncoderConfig",
    "RobertaClassificationHead",
    "RobertaForMaskedLM",
    "RobertaForMultipleChoice",
    "RobertaForSequenceClassification",
    "RobertaLMHead",
    "RobertaModel",
    "roberta_position_ids",
]
