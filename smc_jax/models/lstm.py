"""LSTMs with PyTorch-style fused kernels, for the GTS and Graph2Tree encoders.

Each layer and direction is its own module (``lstm_l{k}_fwd`` / ``lstm_l{k}_bwd``) holding
``weight_ih`` [in, 4H], ``weight_hh`` [H, 4H], ``bias_ih`` and ``bias_hh`` [4H] with PyTorch's gate order
(input, forget, cell, output) and init (uniform ±1/√H), so per-layer densities mean what they mean for the
original's ``rnn.weight_ih_l*`` tensors (DESIGN.md "Parameter layout"); kernels are the transposes of
PyTorch's. Padded batches behave like ``pack_padded_sequence``: each sequence runs over its own length
(the backward direction from its last real token), outputs are 0 at padded positions and the final state
is the state at the last real token.

The input projection of all time steps is one matmul; only the recurrent part runs in the ``lax.scan``.
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


class LSTMDirection(nn.Module):
    """One layer, one direction. ``__call__(x [B, T, D], lengths [B]) -> (outputs [B, T, H], (h, c))``."""

    hidden: int
    reverse: bool = False
    dtype: jnp.dtype = jnp.float32  # computation dtype; params stay float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        batch, steps, features = x.shape
        h4 = 4 * self.hidden
        init = _torch_uniform(self.hidden)
        w_ih = self.param("weight_ih", nn.with_logical_partitioning(init, ("embed", "mlp")), (features, h4))
        w_hh = self.param("weight_hh", nn.with_logical_partitioning(init, ("hidden", "mlp")), (self.hidden, h4))
        b_ih = self.param("bias_ih", nn.with_logical_partitioning(init, ("mlp",)), (h4,))
        b_hh = self.param("bias_hh", nn.with_logical_partitioning(init, ("mlp",)), (h4,))
        w_ih, w_hh, b_ih, b_hh = (jnp.asarray(p, self.dtype) for p in (w_ih, w_hh, b_ih, b_hh))

        lengths = jnp.asarray(lengths, jnp.int32)
        valid = jnp.arange(steps)[None, :] < lengths[:, None]  # [B, T]
        x = jnp.asarray(x, self.dtype)
        if self.reverse:
            x = reverse_padded(x, lengths)
        projected = x @ w_ih + (b_ih + b_hh)  # every time step's input projection in one matmul

        def step(carry, inputs):
            h, c = carry
            gates_x, keep = inputs
            gates = gates_x + h @ w_hh
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
            keep = keep[:, None]
            h, c = jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)
            return (h, c), jnp.where(keep, h_new, 0)

        zeros = jnp.zeros((batch, self.hidden), self.dtype)
        (h, c), outputs = lax.scan(step, (zeros, zeros), (projected.swapaxes(0, 1), valid.swapaxes(0, 1)))
        outputs = outputs.swapaxes(0, 1)
        if self.reverse:
            outputs = reverse_padded(outputs, lengths)
        return outputs, (h, c)


class LSTM(nn.Module):
    """A stacked (bi)LSTM like ``torch.nn.LSTM(batch_first=True)`` on packed sequences.

    Returns the last layer's outputs [B, T, H] (``[B, T, 2H]``, forward then backward, when
    ``bidirectional``); ``dropout`` applies between layers, as PyTorch's inter-layer dropout.
    """

    hidden: int
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array, deterministic: bool = True) -> jax.Array:
        for layer in range(self.num_layers):
            outputs, _ = LSTMDirection(self.hidden, dtype=self.dtype, name=f"lstm_l{layer}_fwd")(x, lengths)
            if self.bidirectional:
                backward, _ = LSTMDirection(self.hidden, reverse=True, dtype=self.dtype,
                                            name=f"lstm_l{layer}_bwd")(x, lengths)
                outputs = jnp.concatenate([outputs, backward], axis=-1)
            if layer < self.num_layers - 1 and self.dropout > 0:
                outputs = nn.Dropout(self.dropout)(outputs, deterministic=deterministic)
            x = outputs
        return x
