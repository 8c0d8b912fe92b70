"""LSTMs with PyTorch-style fused kernels, for the GTS and Graph2Tree encoders.

Each layer and direction is its own module (``lstm_l{k}_fwd`` / ``lstm_l{k}_bwd``) holding
``weight_ih`` [in, 4H], ``weight_hh`` [H, 4H], ``bias_ih`` and ``bias_hh`` [4H] with PyTorch's gate order
(input, forget, cell, output) and init (uniform ±1/√H), so per-layer densities mean what they mean for the
original's ``rnn.weight_ih_l*`` tensors (DESIGN.md "Parameter layout"); kernels are the transposes of
PyTorch's. Padded batches behave like ``pack_padded_sequence``: each sequence runs over its own length
(the backward direction from its last real token), outputs are 0 at padded positions and the final state
is the state at the last real token.

Speed (all directions of a layer run in one loop):

- the input projections of every time step are one matmul outside the recurrence;
- the recurrence runs only ``max(lengths)`` steps of a ``lax.fori_loop`` (no work on a batch's padding);
- :func:`lstm_recurrence` has a custom VJP: the backward pass is a reverse loop that only propagates
  ``dh``/``dc`` and stores each step's gate gradients; the weight gradient is then one matmul over all
  steps (``h_{t-1}^T dG``) instead of a per-step accumulation into a ``[H, 4H]`` buffer.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _torch_uniform(hidden: int):
    bound = 1.0 / math.sqrt(hidden)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def reverse_padded(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Reverse each sequence of ``x`` [B, T, ...] within its length; padded positions stay in place."""
    t = jnp.arange(x.shape[1])[None, :]
    source = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
    return jnp.take_along_axis(x, source.reshape(source.shape + (1,) * (x.ndim - 2)), axis=1)


def _gates(g: jax.Array, hidden: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    return (jax.nn.sigmoid(g[..., :hidden]), jax.nn.sigmoid(g[..., hidden:2 * hidden]),
            jnp.tanh(g[..., 2 * hidden:3 * hidden]), jax.nn.sigmoid(g[..., 3 * hidden:]))


def _forward(gates_x, w_hh, lengths):
    steps, batch, h4 = gates_x[0].shape
    hidden = h4 // 4
    zeros = jnp.zeros((batch, hidden), gates_x[0].dtype)
    per_direction = lambda shape: tuple(jnp.zeros(shape, zeros.dtype) for _ in w_hh)  # noqa: E731
    buffers = dict(out=per_direction((steps, batch, hidden)), h_prev=per_direction((steps, batch, hidden)),
                   c_prev=per_direction((steps, batch, hidden)), acts=per_direction((steps, batch, h4)))

    def body(t, carry):
        hs, cs, buf = carry
        keep = (t < lengths)[:, None]
        new = dict(out=[], h_prev=list(hs), c_prev=list(cs), acts=[], h=[], c=[])
        for d, w in enumerate(w_hh):  # directions are independent: separate matmuls, no stacked weights
            i, f, g, o = _gates(gates_x[d][t] + hs[d] @ w, hidden)
            c_new = f * cs[d] + i * g
            h_new = o * jnp.tanh(c_new)
            new["out"].append(jnp.where(keep, h_new, 0))
            new["acts"].append(jnp.concatenate([i, f, g, o], axis=-1))
            new["h"].append(jnp.where(keep, h_new, hs[d]))
            new["c"].append(jnp.where(keep, c_new, cs[d]))
        buf = {k: tuple(b.at[t].set(v) for b, v in zip(buf[k], new[k])) for k in buf}
        return tuple(new["h"]), tuple(new["c"]), buf

    n = jnp.max(lengths)
    hs, cs, buf = lax.fori_loop(0, n, body, ((zeros,) * len(w_hh), (zeros,) * len(w_hh), buffers))
    return (buf["out"], hs, cs), (buf["h_prev"], buf["c_prev"], buf["acts"], w_hh, lengths)


@jax.custom_vjp
def lstm_recurrence(gates_x: tuple[jax.Array, ...], w_hh: tuple[jax.Array, ...],
                    lengths: jax.Array) -> tuple[tuple[jax.Array, ...], ...]:
    """The recurrent part of one or more independent LSTM directions, run in one loop.

    Per direction ``d``: ``gates_x[d]`` [T, B, 4H] (input projections plus biases, time-major, the
    direction's steps in its own order) and ``w_hh[d]`` [H, 4H]; ``lengths`` [B]: step ``t`` of row ``b``
    runs while ``t < lengths[b]``. Returns per-direction tuples ``(outputs [T, B, H]`` (0 from each row's
    length on), ``h``, ``c`` [B, H]) (the final state is the state at each row's last real step).
    """
    return _forward(gates_x, w_hh, lengths)[0]


def _backward(residuals, cotangents):
    h_prev, c_prev, acts, w_hh, lengths = residuals
    d_out, dh_final, dc_final = cotangents
    hidden = w_hh[0].shape[0]
    n = jnp.max(lengths)
    w_t = tuple(w.T for w in w_hh)  # [4H, H]: dG @ W^T as a plain row-major matmul

    def body(k, carry):
        dhs, dcs, d_gates = carry
        t = n - 1 - k
        keep = (t < lengths)[:, None]
        new_dh, new_dc, new_dg = [], [], []
        for d in range(len(w_hh)):
            a = acts[d][t]
            i, f, g, o = (a[:, j * hidden:(j + 1) * hidden] for j in range(4))
            cp = c_prev[d][t]
            tc = jnp.tanh(f * cp + i * g)
            dh_t = dhs[d] + d_out[d][t]
            dc_new = dcs[d] + dh_t * o * (1 - tc * tc)
            dg = jnp.concatenate([dc_new * g * i * (1 - i), dc_new * cp * f * (1 - f),
                                  dc_new * i * (1 - g * g), dh_t * tc * o * (1 - o)], axis=-1)
            dg = jnp.where(keep, dg, 0)
            new_dg.append(d_gates[d].at[t].set(dg))
            new_dh.append(jnp.where(keep, dg @ w_t[d], dhs[d]))
            new_dc.append(jnp.where(keep, dc_new * f, dcs[d]))
        return tuple(new_dh), tuple(new_dc), tuple(new_dg)

    zeros = tuple(jnp.zeros_like(a) for a in acts)
    _, _, d_gates = lax.fori_loop(0, n, body, (tuple(dh_final), tuple(dc_final), zeros))
    # every step's weight gradient in one matmul per direction
    d_w_hh = tuple(jnp.einsum("tbh,tbg->hg", hp, dg) for hp, dg in zip(h_prev, d_gates))
    return d_gates, d_w_hh, None


lstm_recurrence.defvjp(_forward, _backward)


def _declare(module: nn.Module, features: int, hidden: int) -> tuple[jax.Array, ...]:
    """``weight_ih`` [F, 4H], ``weight_hh`` [H, 4H], ``bias_ih``, ``bias_hh`` [4H] of one direction."""
    h4 = 4 * hidden
    init = _torch_uniform(hidden)
    return (module.param("weight_ih", nn.with_logical_partitioning(init, ("embed", "mlp")), (features, h4)),
            module.param("weight_hh", nn.with_logical_partitioning(init, ("hidden", "mlp")), (hidden, h4)),
            module.param("bias_ih", nn.with_logical_partitioning(init, ("mlp",)), (h4,)),
            module.param("bias_hh", nn.with_logical_partitioning(init, ("mlp",)), (h4,)))


def run_directions(x: jax.Array, lengths: jax.Array, weights: list[tuple[jax.Array, ...]], reverse: list[bool],
                   dtype=jnp.float32) -> list[tuple[jax.Array, tuple[jax.Array, jax.Array]]]:
    """Run LSTM directions over ``x`` [B, T, F] together; ``(outputs [B, T, H], (h, c))`` per direction."""
    lengths = jnp.asarray(lengths, jnp.int32)
    x = jnp.asarray(x, dtype)
    gates_x, w_hh = [], []
    for (w_ih, weight_hh, b_ih, b_hh), r in zip(weights, reverse):
        inputs = reverse_padded(x, lengths) if r else x
        bias = jnp.asarray(b_ih, dtype) + jnp.asarray(b_hh, dtype)
        gates_x.append(jnp.einsum("btf,fg->tbg", inputs, jnp.asarray(w_ih, dtype)) + bias)  # all steps at once
        w_hh.append(jnp.asarray(weight_hh, dtype))
    outputs, h, c = lstm_recurrence(tuple(gates_x), tuple(w_hh), lengths)
    results = []
    for d, r in enumerate(reverse):
        out = outputs[d].swapaxes(0, 1)
        results.append((reverse_padded(out, lengths) if r else out, (h[d], c[d])))
    return results


class LSTMDirection(nn.Module):
    """One layer, one direction. ``__call__(x [B, T, D], lengths [B]) -> (outputs [B, T, H], (h, c))``."""

    hidden: int
    reverse: bool = False
    dtype: jnp.dtype = jnp.float32  # computation dtype; params stay float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        weights = _declare(self, x.shape[-1], self.hidden)
        return run_directions(x, lengths, [weights], [self.reverse], self.dtype)[0]


class _DirectionWeights(nn.Module):
    """The parameters of one direction (named like :class:`LSTMDirection`'s), for fused layers."""

    hidden: int

    @nn.compact
    def __call__(self, features: int) -> tuple[jax.Array, ...]:
        return _declare(self, features, self.hidden)


class LSTM(nn.Module):
    """A stacked (bi)LSTM like ``torch.nn.LSTM(batch_first=True)`` on packed sequences.

    Returns the last layer's outputs [B, T, H] (``[B, T, 2H]``, forward then backward, when
    ``bidirectional``); ``dropout`` applies between layers, as PyTorch's inter-layer dropout. Both
    directions of a layer run in one recurrence.
    """

    hidden: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array, deterministic: bool = True) -> jax.Array:
        names = ["fwd", "bwd"] if self.bidirectional else ["fwd"]
        for layer in range(self.num_layers):
            weights = [_DirectionWeights(self.hidden, name=f"lstm_l{layer}_{n}")(x.shape[-1]) for n in names]
            results = run_directions(x, lengths, weights, [n == "bwd" for n in names], self.dtype)
            outputs = jnp.concatenate([out for out, _ in results], axis=-1)
            if layer < self.num_layers - 1 and self.dropout > 0:
                outputs = nn.Dropout(self.dropout)(outputs, deterministic=deterministic)
            x = outputs
        return x
