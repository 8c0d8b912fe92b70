"""The protein model around a sequence encoder: the encoder (ESM-1b / ESM-2 from a checkpoint, or an ESM built from
a config with random weights), mean pooling over residues and SMC-Bench's property head.

Params are ``{'esm': <the encoder's, HF names>, 'head': {dense, layer_norm, out_proj}}``. The head sees only the
pooled vector ``[batch, width]``, so a per-residue structure encoder (ESM-IF1's GVP-Transformer, out of scope) can
take the place of ``esm`` by returning ``[batch, length, width]`` features and the tokens to pool.

- Pooling (SMC-Bench, Q-P6): the mean of the last hidden state over tokens with id >= 2 (``<eos>``, ``<unk>`` and
  ``<mask>`` kept; ``<cls>`` and padding excluded), divided by each row's count.
- Head: ``Linear(d, hidden) -> LayerNorm(hidden, eps 1e-5) -> ReLU -> Linear(hidden, C)`` (C = classes, 1 for
  regression). ``init_scheme='torch_uniform'`` (faithful) draws every Linear weight and bias from U(±1/sqrt(fan_in)) as
  ``torch.nn.Linear`` does (LayerNorm: ones and zeros); ``'lecun_normal'`` is Flax's default (zero biases).
- SMC-Bench never steps the head's optimizer (Q-P1), so the faithful head stays at its random init:
  :func:`protein_head_group` is the head's optimizer group, frozen unless ``trainable``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

HEAD_INITS = ("torch_uniform", "lecun_normal")
POOL_MIN_ID = 2  # fair-esm's representation mean: tokens with id >= 2 (eos, unk, residues, mask)
HEAD_PATTERN = r"head/.*"
# SPEC §2.3, SMC-Bench's torch-prune protein scripts: each layer's q/k/v/attention-output and fc1/fc2 kernels.
# With every >= 2-D weight prunable (MaskRules.min_ndim = 2) that is: all but the embeddings and the head.
EMB_HEADS = (r"esm/embeddings/.*", HEAD_PATTERN)


def torch_uniform(fan_in: int, axes: tuple[str | None, ...]) -> Any:
    """``torch.nn.Linear``'s default init for a weight or bias of a layer with ``fan_in`` inputs:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), with logical axes ``axes``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nn.with_logical_partitioning(init, axes)


class PropertyHead(nn.Module):
    """SMC-Bench's head on the pooled representation: ``dense`` -> ``layer_norm`` -> ReLU -> ``out_proj``."""

    hidden: int = 512
    num_outputs: int = 2
    init_scheme: str = "torch_uniform"
    eps: float = 1e-5

    @nn.compact
    def __call__(self, pooled: jax.Array) -> jax.Array:
        width = pooled.shape[-1]

        def dense(features: int, fan_in: int, axes: tuple[str | None, str | None], name: str) -> nn.Dense:
            if self.init_scheme == "torch_uniform":
                kernel, bias = torch_uniform(fan_in, axes), torch_uniform(fan_in, (axes[1],))
            else:
                kernel = nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)
                bias = nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],))
            return nn.Dense(features, kernel_init=kernel, bias_init=bias, name=name)

        x = dense(self.hidden, width, ("embed", "hidden"), "dense")(pooled)
        x = nn.LayerNorm(epsilon=self.eps, name="layer_norm",
                         scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("hidden",)),
                         bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("hidden",)))(x)
        return dense(self.num_outputs, self.hidden, ("hidden", None), "out_proj")(nn.relu(x))


def mean_pool(hidden: jax.Array, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """float32 mean of ``hidden`` ``[batch, length, width]`` over the real tokens with id >= 2 of each row."""
    keep = ((input_ids >= POOL_MIN_ID) & (attention_mask > 0)).astype(jnp.float32)[..., None]
    total = (hidden.astype(jnp.float32) * keep).sum(1)
    return total / jnp.maximum(keep.sum(1), 1.0)


def protein_head_group(trainable: bool = False, learning_rate: float = 2e-2, weight_decay: float = 0.01
                       ) -> dict[str, Any]:
    """The head's ``Optimizer.groups`` entry (gin: ``Optimizer.groups = {'head': @protein_head_group()}``):
    frozen (SMC-Bench, Q-P1) unless ``trainable``; then AdamW at ``learning_rate`` (SMC-Bench's ``--lr`` 2e-2)
    and ``weight_decay`` under the run's schedule."""
    if not trainable:
        return {"frozen": True}
    return {"learning_rate": float(learning_rate), "weight_decay": float(weight_decay)}


class Encoder(NamedTuple):
    """The sequence encoder: its module, the checkpoint directory (``None``: built from a config, random weights),
    its HF config dict and its model name (``summary.json["model"]``)."""

    module: nn.Module
    checkpoint_dir: str | None
    config: dict[str, Any]
    model_name: str


def build_encoder(pretrained: str | os.PathLike | None, model_config: Mapping[str, Any] | None, dtype: Any,
                  remat: bool) -> Encoder:
    """The ESM encoder of ``pretrained`` (a hub id or checkpoint directory), or, with ``pretrained=None``, one built
    from ``model_config`` (:class:`smc_jax.models.esm.EsmConfig` fields, e.g. ``{'hidden_size': 64,
    'num_hidden_layers': 2, 'num_attention_heads': 4}``). One-line errors for another model type."""
    from smc_jax.models import esm, hf

    if pretrained is None:
        if not model_config:
            raise ValueError("PRETRAINED is None: set ProteinTask.model_config (the sizes of an ESM built from "
                             "scratch, e.g. {'hidden_size': 64, 'num_hidden_layers': 2, 'num_attention_heads': 4}) "
                             "or PRETRAINED (e.g. 'facebook/esm2_t6_8M_UR50D')")
        try:
            config = esm.EsmConfig(**dict(model_config))
        except TypeError as err:
            raise ValueError(f"ProteinTask.model_config: {err}; fields: "
                             f"{', '.join(f.name for f in esm.EsmConfig.__dataclass_fields__.values())}") from None
        module = esm.EsmModel(config, dtype=dtype, remat=bool(remat))
        return Encoder(module, None, {"model_type": "esm", **dict(model_config)}, "esm")
    if model_config:
        raise ValueError("set either PRETRAINED or ProteinTask.model_config (a model built from scratch), not both")
    directory = hf.resolve_checkpoint_dir(str(pretrained))
    config = dict(hf.read_config(directory))
    if config.get("model_type") != "esm":
        raise ValueError(f"PRETRAINED={str(pretrained)!r} is a {config.get('model_type')!r} checkpoint; the protein "
                         "task needs an ESM one (e.g. 'facebook/esm1b_t33_650M_UR50S', 'facebook/esm2_t6_8M_UR50D')")
    module = hf.build_module(config, None, dtype, checkpoint_dir=directory, remat=bool(remat))
    return Encoder(module, str(directory), config, "esm")


def encoder_params(encoder: Encoder, key: jax.Array) -> Any:
    """The encoder's starting params: the checkpoint's, or a random init drawn from ``key`` with HF's ESM
    distributions (normal(``initializer_range``) kernels and embeddings, zero biases, unit LayerNorm scales)."""
    from smc_jax.models import hf

    if encoder.checkpoint_dir is not None:
        return jax.tree.map(jnp.asarray, hf.load_params(encoder.module, encoder.checkpoint_dir,
                                                        config=encoder.config))
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    std = float(encoder.module.config.initializer_range)

    def leaf(path: Any, spec: Any) -> jax.Array:
        name = getattr(path[-1], "key", str(path[-1]))
        if name in ("kernel", "embedding"):
            value = rng.standard_normal(spec.shape) * std
        else:
            value = np.full(spec.shape, 1.0 if name == "scale" else 0.0)
        return jnp.asarray(value, spec.dtype)

    return jax.tree_util.tree_map_with_path(leaf, nn.meta.unbox(hf.abstract_params(encoder.module)))
