"""Multilingual translation: mBART-25 on English-centric directions (SPEC §1.4, spec translation.md)."""

from smc_jax.tasks.translation.task import TranslationTask

__all__ = ["TranslationTask"]
