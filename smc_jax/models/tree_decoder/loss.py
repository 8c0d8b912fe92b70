"""The tree decoder's loss: the original's masked cross-entropy, and a training loss whose gradient defers the
decoder's weight gradients to one matmul per kernel after the teacher-forced scan."""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, lengths: jax.Array) -> jax.Array:
    """Σ over real target tokens of −log p(target) / Σ lengths (``components/masked_cross_entropy.py``)."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    valid = jnp.arange(targets.shape[1])[None] < lengths[:, None]
    return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.maximum(jnp.sum(lengths), 1)


def make_loss(model: nn.Module, decoder: str = "decoder") -> Callable[..., jax.Array]:
    """``loss(params, batch, key=None)``: the masked cross-entropy of a tree-decoder ``model`` (dropout on when
    ``key`` is given), whose method ``teacher_forced(batch, deterministic, probes)`` returns logits, targets and
    tapped calls and whose decoder params sit under ``decoder``. Its custom gradient equals autodiff's: the
    decoder's linear layers run under ``stop_gradient`` with a zero probe added to each call's output inside the
    scan, so the scan's transpose yields every step's output gradient instead of adding an outer product into
    each ``[in, out]`` kernel gradient at every step; each kernel's gradient is then one matmul of the stacked
    inputs and probe gradients."""

    def forward(params, batch, key):
        rngs = {} if key is None else {"dropout": key}
        apply = functools.partial(model.apply, method="teacher_forced", deterministic=key is None, rngs=rngs)
        shapes = jax.eval_shape(lambda p: apply({"params": p}, batch, probes="record")[2], params)
        probes = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def tapped(params, probes):
            logits, targets, inputs = apply({"params": params}, batch, probes=probes)
            return masked_cross_entropy(logits, targets, batch["target_lengths"]), inputs

        loss, vjp, inputs = jax.vjp(tapped, params, probes, has_aux=True)
        return loss, (vjp, inputs)

    @jax.custom_vjp
    def loss(params, batch, key=None):
        return forward(params, batch, key)[0]

    def backward(residuals, g):
        vjp, inputs = residuals
        grads, d_probes = vjp(g)
        tree = grads[decoder]
        for name, x in inputs.items():
            path, offset, _ = name.split("|")
            node = functools.reduce(lambda d, k: d[k], path.split("/"), tree)
            d_out = d_probes[name]
            d_kernel = jnp.einsum("ni,no->io", x.reshape(-1, x.shape[-1]), d_out.reshape(-1, d_out.shape[-1]))
            start = int(offset)
            node["kernel"] = node["kernel"].at[start:start + x.shape[-1]].add(d_kernel)
        return grads, None, None

    loss.defvjp(forward, backward)
    return loss
