"""Sequence losses shared by the encoder-decoder models.

:func:`label_smoothed_nll` is fairseq's ``label_smoothed_cross_entropy`` (spec translation.md §3): per non-pad
target token ``y`` with float32 log-probs ``lp``, ``nll = -lp[y]``, ``smooth = -sum_v lp[v]`` over all ``V``
classes, ``eps_i = eps / (V - 1)`` and ``loss = (1 - eps - eps_i) * nll + eps_i * smooth``: cross-entropy
against ``1 - eps`` on ``y`` and ``eps / (V - 1)`` on every other class (``optax.smooth_labels`` spreads
``eps / V`` over all classes including ``y``: not the same). Pad targets contribute nothing. The log-probs are
never materialised: ``lp[v] = logits[v] - logsumexp(logits)``, so only the logits ``[tokens, V]`` are held.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossSums(NamedTuple):
    """Sums over the non-pad target tokens (normalise by ``ntokens`` over the whole effective batch)."""

    loss: jax.Array  # label-smoothed loss, summed
    nll_loss: jax.Array  # plain negative log-likelihood, summed
    ntokens: jax.Array  # number of non-pad target tokens (int32)


def label_smoothed_nll(logits: jax.Array, targets: jax.Array, epsilon: float, pad_id: int = 1) -> LossSums:
    """fairseq's label-smoothed NLL of ``logits`` ``[..., V]`` against ``targets`` ``[...]`` (module docstring),
    summed over the tokens whose target is not ``pad_id``; computed in float32."""
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    lse = jax.nn.logsumexp(logits, axis=-1)
    nll = lse - jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    smooth = vocab * lse - jnp.sum(logits, axis=-1)
    eps_i = epsilon / (vocab - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    keep = targets != pad_id
    zero = jnp.zeros((), jnp.float32)
    return LossSums(jnp.sum(jnp.where(keep, loss, zero)), jnp.sum(jnp.where(keep, nll, zero)),
                    jnp.sum(keep, dtype=jnp.int32))
