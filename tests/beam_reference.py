"""A plain NumPy, one-sentence-at-a-time port of fairseq's SequenceGenerator loop (spec translation.md §4), used
only by the tests to pin :func:`smc_jax.models.decoding.beam_search`, and a toy scorer both can run."""

from __future__ import annotations

import numpy as np

NINF = np.float32(-np.inf)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    shifted = x - x.max(-1, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))).astype(np.float32)


def reference(score, start: int, prefix: list[int], cfg) -> list[tuple[list[int], float, list[float]]]:
    """Finished hypotheses ``(tokens, normalised score, positional scores)`` of one sentence, best first (a stable
    sort: ties keep finishing order). ``score(hypotheses) -> logits [K, V]`` for the ``K`` current hypotheses
    ``[start, ...]`` (all of one length); ``cfg``: a :class:`~smc_jax.models.decoding.BeamSearchConfig`."""
    K = cfg.beam_size
    beams = [[start] for _ in range(K)]
    cum = np.full(K, NINF, np.float32)
    cum[0] = 0.0
    pos = [[] for _ in range(K)]
    finished = []
    for t in range(cfg.max_len + 1):
        lp = log_softmax(np.asarray(score(beams)))
        V = lp.shape[1]
        if cfg.ban_pad:
            lp[:, cfg.pad_id] = NINF
        lp[:, cfg.unk_id] -= np.float32(cfg.unk_penalty)
        if t >= cfg.max_len:
            eos = lp[:, cfg.eos_id].copy() if cfg.forced_eos == "model" else np.zeros(K, np.float32)
            lp[:] = NINF
            lp[:, cfg.eos_id] = eos
        if t < len(prefix) and t < cfg.max_len:
            if prefix[t] != cfg.pad_id:
                keep = lp[:, prefix[t]].copy()
                lp[:] = NINF
                lp[:, prefix[t]] = keep
        elif t < cfg.min_len:
            lp[:, cfg.eos_id] = NINF
        cand = (cum[:, None] + lp).reshape(-1)
        order = np.argsort(-cand, kind="stable")[: 2 * K]
        values, beam, token = cand[order], order // V, order % V
        is_eos = (token == cfg.eos_id) & np.isfinite(values)
        for r in range(K):
            if is_eos[r] and len(finished) < K:
                hyp = beams[beam[r]][1:] + [cfg.eos_id]
                score_r = values[r] / np.float32(t + 1) ** np.float32(cfg.len_penalty)
                finished.append((hyp, float(score_r), pos[beam[r]] + [float(lp[beam[r], token[r]])]))
        if len(finished) == K or t == cfg.max_len:
            break
        keep = [r for r in range(2 * K) if not is_eos[r]][:K]
        beams = [beams[beam[r]] + [int(token[r])] for r in keep]
        pos = [pos[beam[r]] + [float(lp[beam[r], token[r]])] for r in keep]
        cum = values[keep].astype(np.float32)
    return sorted(finished, key=lambda f: -f[1])


class ToyScorer:
    """Logits that depend on the sentence and on every token so far through a rolling hash (JAX and NumPy agree
    exactly: table look-ups and one addition). EOS is boosted so hypotheses end at different steps."""

    MOD = 1009

    def __init__(self, vocab: int = 16, sentences: int = 3, rows: int = 61, eos: int = 2, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.table = (2.0 * rng.standard_normal((rows, vocab))).astype(np.float32)
        self.table[:, eos] += np.float32(0.5)
        self.bias = rng.standard_normal((sentences, vocab)).astype(np.float32)

    def hash(self, tokens: list[int]) -> int:
        h = 0
        for tok in tokens:
            h = (h * 31 + tok + 1) % self.MOD
        return h

    def numpy(self, sentence: int):
        return lambda beams: np.stack([self.table[self.hash(b) % len(self.table)] + self.bias[sentence]
                                       for b in beams])

    def jax_step(self):
        """``(step_fn, initial per-beam cache)`` factory for :func:`~smc_jax.models.decoding.beam_search`."""
        import jax.numpy as jnp

        table, bias = jnp.asarray(self.table), jnp.asarray(self.bias)

        def step(tokens, t, h):
            h = (h * 31 + tokens + 1) % self.MOD
            return table[h % table.shape[0]] + bias[: tokens.shape[0], None, :], h

        return step
