"""Batched beam search with fairseq ``SequenceGenerator`` semantics, jitted, for encoder-decoder models.

:func:`beam_search` runs over any step function; :func:`generate` wires in an encoder-decoder (mBART) so that the
encoder output and every layer's cross-attention keys/values are computed once per sentence and shared by its
beams, and each beam's self-attention keys/values stay in its cache slot (a step re-orders only a small
ancestry table, not the cache). Per step ``t = 0 .. max_len`` (fairseq, spec §4):

1. ``lp = log_softmax(logits)`` (float32); ``lp[pad] = -inf`` (``ban_pad``); ``lp[unk] -= unk_penalty``; at
   ``t == max_len`` every token but EOS is ``-inf`` (EOS keeps its log-prob; ``forced_eos='zero'`` gives it 0, as
   HF's ``ForcedEOSTokenLogitsProcessor``). While ``t < prefix length`` (and ``t < max_len``) only the forced
   prefix token keeps its log-prob (a pad in the prefix forces nothing); else while ``t < min_len`` EOS is ``-inf``.
2. Candidates ``cum[beam] + lp`` over beams x vocabulary; initial ``cum = [0, -inf, ...]`` (only beam 0 expands at
   ``t = 0``); the top ``2K``.
3. Finite-score EOS candidates among the top ``K`` ranks are finalised in rank order while the sentence holds fewer
   than ``K`` hypotheses: score ``cum / (t + 1) ** len_penalty`` (``t + 1`` generated tokens, forced prefix and EOS
   included, the start token not). A sentence is done at ``K`` hypotheses or at ``t == max_len``.
4. The first ``K`` candidates that are not a finite-score EOS continue (unnormalised cumulative scores).
   The loop (a ``lax.while_loop``) ends when every sentence is done; the answer is the best of the first ``K``
   finished hypotheses (ties: the earlier one).

``beam_size=1`` is greedy decoding. HF ``generate(num_beams=K, early_stopping=True, length_penalty=...,
min_new_tokens=1, max_new_tokens=max_len + 1, forced_eos_token_id=eos, decoder_start_token_id=start)`` gives the
same tokens with ``ban_pad=False, forced_eos='zero'`` (or with HF's ``suppress_tokens=[pad]`` and ``ban_pad=True``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from smc_jax.models.layers import materialized

PyTree = Any
StepFn = Callable[[jax.Array, jax.Array, PyTree], tuple[jax.Array, PyTree]]
FORCED_EOS = ("model", "zero")


@dataclasses.dataclass(frozen=True)
class BeamSearchConfig:
    """Search settings (hashable: a static argument of the jitted :func:`generate`); fairseq's defaults.

    ``max_len``: the last step (fairseq ``min(max_len_a * src_len + max_len_b, max_positions - 1)``), so at most
    ``max_len + 1`` tokens are generated; ``min_len``: EOS is banned at steps ``t < min_len``.
    """

    beam_size: int = 5
    max_len: int = 200
    len_penalty: float = 1.0
    min_len: int = 1
    unk_penalty: float = 0.0
    eos_id: int = 2
    pad_id: int = 1
    unk_id: int = 3
    ban_pad: bool = True
    forced_eos: str = "model"

    def __post_init__(self):
        if self.beam_size < 1 or self.max_len < 0:
            raise ValueError(f"beam_size must be >= 1 and max_len >= 0, got {self.beam_size}, {self.max_len}")
        if self.min_len > self.max_len:
            raise ValueError(f"min_len {self.min_len} > max_len {self.max_len}: no hypothesis could end")
        if self.forced_eos not in FORCED_EOS:
            raise ValueError(f"forced_eos {self.forced_eos!r}: use one of {FORCED_EOS}")


class BeamSearchOutput(NamedTuple):
    """Per sentence: the best finished hypothesis and all finished ones (``K`` slots, best not first)."""

    tokens: jax.Array  # [batch, max_len + 1] generated tokens (forced prefix and EOS included), pad after
    lengths: jax.Array  # [batch] number of generated tokens (EOS included)
    scores: jax.Array  # [batch] normalised score cum / length ** len_penalty
    positional_scores: jax.Array  # [batch, max_len + 1] per-token log-probs, 0 after the end
    finished_tokens: jax.Array  # [batch, beam, max_len + 1]
    finished_scores: jax.Array  # [batch, beam] (-inf where a slot is empty)
    steps: jax.Array  # decoder steps run (the loop stops once every sentence is done)


# ------------------------------------------------------------------------------------------------ helpers


def gather_beams(tree: PyTree, beams: jax.Array) -> PyTree:
    """Every ``[batch, beam, ...]`` leaf of ``tree`` re-indexed along the beam axis by ``beams``
    ``[batch, new_beam]``."""
    def take(x):
        index = beams.reshape(beams.shape + (1,) * (x.ndim - 2))
        return jnp.take_along_axis(x, index, axis=1)

    return jax.tree.map(take, tree)


def flatten_beams(x: jax.Array) -> jax.Array:
    """``[batch, beam, ...]`` -> ``[batch * beam, ...]`` (a sentence's beams consecutive)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def unflatten_beams(x: jax.Array, beam_size: int) -> jax.Array:
    """``[batch * beam, ...]`` -> ``[batch, beam, ...]``."""
    return x.reshape(x.shape[0] // beam_size, beam_size, *x.shape[1:])


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``length`` (error past the largest)."""
    for b in sorted(buckets):
        if b >= length:
            return int(b)
    raise ValueError(f"length {length} exceeds the largest bucket {max(buckets)}")


def pad_to_bucket(input_ids: np.ndarray, attention_mask: np.ndarray, buckets: Sequence[int], pad_id: int = 1,
                  rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad a batch to the bucket of its longest row (and to ``rows`` rows, padding rows all pad with mask
    0), so a jitted search compiles once per bucket."""
    n, length = input_ids.shape
    rows = n if rows is None else rows
    if rows < n:
        raise ValueError(f"batch of {n} rows does not fit rows={rows}")
    width = bucket_length(int(np.asarray(attention_mask).sum(1).max(initial=1)), buckets)
    ids = np.full((rows, width), pad_id, dtype=np.int32)
    mask = np.zeros((rows, width), dtype=np.int32)
    keep = min(length, width)
    ids[:n, :keep], mask[:n, :keep] = input_ids[:, :keep], attention_mask[:, :keep]
    return ids, mask


# ---------------------------------------------------------------------------------------------- the search


def _step_log_probs(logits: jax.Array, t: jax.Array, prefix: jax.Array, config: BeamSearchConfig) -> jax.Array:
    """Step 1 of the module docstring: ``[batch, beam, vocab]`` log-probs with fairseq's masks."""
    c = config
    lp = jax.nn.log_softmax(materialized(logits.astype(jnp.float32)), axis=-1)
    vocab = jnp.arange(lp.shape[-1])
    ninf = jnp.float32(-jnp.inf)
    if c.ban_pad:
        lp = jnp.where(vocab == c.pad_id, ninf, lp)
    if c.unk_penalty:
        lp = lp - jnp.where(vocab == c.unk_id, jnp.float32(c.unk_penalty), 0.0)
    eos = vocab == c.eos_id
    eos_value = lp if c.forced_eos == "model" else jnp.zeros_like(lp)
    lp = jnp.where(t == c.max_len, jnp.where(eos, eos_value, ninf), lp)
    num_prefix = prefix.shape[1]
    if num_prefix:
        forced = jnp.take(prefix, jnp.minimum(t, num_prefix - 1), axis=1)[:, None, None]  # [batch, 1, 1]
        apply = (t < num_prefix) & (t < c.max_len) & (forced != c.pad_id)
        lp_forced = jnp.where(apply, jnp.where(vocab == forced, lp, ninf), lp)
        lp_min = jnp.where((t < c.min_len) & eos, ninf, lp)
        return jnp.where((t < num_prefix) & (t < c.max_len), lp_forced, lp_min)
    return jnp.where((t < c.min_len) & eos, ninf, lp)


class _State(NamedTuple):
    t: jax.Array
    seqs: jax.Array  # [B, K, L + 1] col 0 the start token
    step_lp: jax.Array  # [B, K, L] per-token log-probs
    cum: jax.Array  # [B, K]
    fin_seqs: jax.Array  # [B, K, L]
    fin_lp: jax.Array  # [B, K, L]
    fin_scores: jax.Array  # [B, K]
    fin_len: jax.Array  # [B, K] generated tokens (EOS included)
    fin_count: jax.Array  # [B]
    done: jax.Array  # [B]
    cache: PyTree


def beam_search(step_fn: StepFn, cache: PyTree, start_ids: jax.Array, config: BeamSearchConfig,
                prefix: jax.Array | None = None,
                reorder: Callable[[PyTree, jax.Array], PyTree] = gather_beams) -> BeamSearchOutput:
    """fairseq's beam search (module docstring) over ``step_fn(tokens [B, K], t, cache) -> (logits [B, K, V],
    cache)``, which scores the next token of every beam given its token at step ``t`` (``t = 0``: the start
    token). ``cache``: the per-beam state, re-indexed with the beams each step by ``reorder(cache, beams [B, K])``
    (default :func:`gather_beams`: every leaf ``[B, K, ...]``); state shared by a sentence's beams belongs in
    ``step_fn``'s closure. ``start_ids``: ``[B]``; ``prefix``:
    ``[B, P]`` forced first tokens (pad: not forced). Call it inside ``jax.jit``."""
    c = config
    K, L = c.beam_size, c.max_len + 1
    start_ids = jnp.asarray(start_ids, jnp.int32)
    B = start_ids.shape[0]
    prefix = jnp.zeros((B, 0), jnp.int32) if prefix is None else jnp.asarray(prefix, jnp.int32)
    ninf = jnp.float32(-jnp.inf)
    seqs = jnp.full((B, K, L + 1), c.pad_id, jnp.int32).at[:, :, 0].set(start_ids[:, None])
    state = _State(
        t=jnp.int32(0), seqs=seqs, step_lp=jnp.zeros((B, K, L), jnp.float32),
        cum=jnp.full((B, K), ninf).at[:, 0].set(0.0), fin_seqs=jnp.full((B, K, L), c.pad_id, jnp.int32),
        fin_lp=jnp.zeros((B, K, L), jnp.float32), fin_scores=jnp.full((B, K), ninf),
        fin_len=jnp.zeros((B, K), jnp.int32), fin_count=jnp.zeros((B,), jnp.int32), done=jnp.zeros((B,), bool),
        cache=cache)
    rank = jnp.arange(2 * K)

    def body(s: _State) -> _State:
        logits, cache = step_fn(s.seqs[:, :, s.t], s.t, s.cache)
        lp = _step_log_probs(logits, s.t, prefix, c)
        vocab = lp.shape[-1]
        # the barrier keeps XLA from folding top_k's slices into their users, which turns the CPU's TopK
        # into a full sort of the [B, K * vocab] scores
        top, index = jax.lax.optimization_barrier(
            jax.lax.top_k((s.cum[:, :, None] + lp).reshape(B, K * vocab), 2 * K))
        beam, token = index // vocab, index % vocab
        token_lp = jnp.take_along_axis(lp.reshape(B, K * vocab), index, axis=1)
        is_eos = (token == c.eos_id) & jnp.isfinite(top)
        # finalise: EOS among the top K ranks, in rank order, into the free slots
        eos_ok = is_eos & (rank < K)[None] & ~s.done[:, None]
        slot = s.fin_count[:, None] + jnp.cumsum(eos_ok, axis=1) - 1
        accept = eos_ok & (slot < K)
        slot = jnp.where(accept, slot, K)[:, :K]  # K: dropped by the scatter
        head_beam, head_token = beam[:, :K], token[:, :K]
        hyp = jnp.take_along_axis(s.seqs[:, :, 1:], head_beam[:, :, None], axis=1)
        hyp = jnp.where(jnp.arange(L) == s.t, head_token[:, :, None], hyp)
        hyp = jnp.where(jnp.arange(L) > s.t, c.pad_id, hyp)
        hyp_lp = jnp.take_along_axis(s.step_lp, head_beam[:, :, None], axis=1)
        hyp_lp = jnp.where(jnp.arange(L) == s.t, token_lp[:, :K, None], jnp.where(jnp.arange(L) > s.t, 0.0, hyp_lp))
        score = top[:, :K] / (s.t + 1).astype(jnp.float32) ** jnp.float32(c.len_penalty)
        rows = jnp.arange(B)[:, None]
        fin_seqs = s.fin_seqs.at[rows, slot].set(hyp, mode="drop")
        fin_lp = s.fin_lp.at[rows, slot].set(hyp_lp, mode="drop")
        fin_scores = s.fin_scores.at[rows, slot].set(score, mode="drop")
        fin_len = s.fin_len.at[rows, slot].set(jnp.broadcast_to(s.t + 1, slot.shape), mode="drop")
        fin_count = s.fin_count + accept.sum(1, dtype=jnp.int32)
        done = s.done | (fin_count >= K) | (s.t >= c.max_len)
        # continue: the first K ranks that are not a finite-score EOS
        order = jnp.argsort(is_eos.astype(jnp.int32), axis=1, stable=True)[:, :K]
        new_beam = jnp.take_along_axis(beam, order, axis=1)
        new_token = jnp.take_along_axis(token, order, axis=1)
        seqs = jnp.take_along_axis(s.seqs, new_beam[:, :, None], axis=1).at[:, :, s.t + 1].set(new_token)
        step_lp = jnp.take_along_axis(s.step_lp, new_beam[:, :, None], axis=1)
        step_lp = step_lp.at[:, :, s.t].set(jnp.take_along_axis(token_lp, order, axis=1))
        return _State(s.t + 1, seqs, step_lp, jnp.take_along_axis(top, order, axis=1), fin_seqs, fin_lp,
                      fin_scores, fin_len, fin_count, done, reorder(cache, new_beam))

    def cond(s: _State) -> jax.Array:
        return (s.t <= c.max_len) & ~jnp.all(s.done)

    s = jax.lax.while_loop(cond, body, state)
    best = jnp.argmax(s.fin_scores, axis=1)[:, None]
    pick = lambda x: jnp.take_along_axis(x, best.reshape(best.shape + (1,) * (x.ndim - 2)), axis=1)[:, 0]  # noqa
    return BeamSearchOutput(pick(s.fin_seqs), pick(s.fin_len), pick(s.fin_scores), pick(s.fin_lp), s.fin_seqs,
                            s.fin_scores, s.t)


# ------------------------------------------------------------------------------------ encoder-decoder glue


@functools.partial(jax.jit, static_argnames=("module", "config"))
def generate(module: Any, params: PyTree, input_ids: jax.Array, attention_mask: jax.Array, start_ids: jax.Array,
             prefix: jax.Array | None = None, *, config: BeamSearchConfig) -> BeamSearchOutput:
    """Beam search (``config``) with an encoder-decoder ``module`` that has ``encode(ids, mask)``,
    ``cross_kv(encoder_hidden)`` and ``decode(ids, cache_index, cache, cross_kv, mask) -> (logits, cache)``
    methods and a ``config`` for :func:`~smc_jax.models.mbart.init_cache` (:class:`~smc_jax.models.mbart.
    MBartForConditionalGeneration`); each beam's self-attention keys/values stay in its cache slot, and a step
    re-orders only the cache's ancestry table. ``input_ids``/``attention_mask``: ``[B, S]`` sources (pad them to length
    buckets with :func:`pad_to_bucket`); ``start_ids``: ``[B]`` or a scalar (the decoder start token:
    ``</s>`` in fairseq's format, the target language code in HF's); ``prefix``: ``[B, P]`` forced tokens."""
    from smc_jax.models.mbart import init_cache

    variables = {"params": params}
    batch, K = input_ids.shape[0], config.beam_size
    encoder = module.apply(variables, input_ids, attention_mask, method="encode")
    cross = module.apply(variables, encoder, method="cross_kv")
    cache = init_cache(module.config, batch, config.max_len + 1, encoder.dtype, beams=K)

    def step(tokens, t, cache):
        logits, cache = module.apply(variables, flatten_beams(tokens)[:, None], t, cache, cross, attention_mask,
                                     method="decode")
        return unflatten_beams(logits[:, 0], K), cache

    def reorder(cache, beams):  # the keys/values stay in their slots: only the ancestry follows the beams
        return cache._replace(ancestry=gather_beams(cache.ancestry, beams))

    start_ids = jnp.broadcast_to(jnp.asarray(start_ids, jnp.int32), (batch,))
    return beam_search(step, cache, start_ids, config, prefix, reorder)
