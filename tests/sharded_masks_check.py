"""Run by test_sharded.py in a subprocess with 8 fake CPU devices: sharded and unsharded masks agree (every
tie-break: the random tie order is a per-element hash, the same on any mesh)."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import smc_jax.sparsity as sp


def tree(seed):
    keys = jax.random.split(jax.random.key(seed), 4)
    # Rounded values: many exact ties across devices, so the tie pass is exercised.
    rounded = lambda k, shape: jnp.round(jax.random.normal(k, shape) * 4) / 4  # noqa: E731
    return {"emb": rounded(keys[0], (64, 16)), "dense": {"kernel": rounded(keys[1], (32, 24)),
            "bias": jnp.ones(24)}, "small": rounded(keys[2], (8, 8)), "zeros": jnp.zeros((16, 8))}


def shard(t, mesh, spec):
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec if x.ndim == 2 else P())), t)


def same(a, b):
    pairs = zip(sp.mask_items(a), sp.mask_items(b))
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in pairs)


def main():
    assert jax.device_count() == 8, jax.device_count()
    params, grads = tree(0), tree(1)
    grads["emb"] = grads["emb"].at[::2].set(0.0)  # embedding rows without gradient: SNIP/RigL zero ties
    masks = sp.prunable_masks(params)
    sparse = sp.global_magnitude_masks(params, masks, 0.7)
    ops = {
        "global_magnitude": lambda p, g, m: sp.global_magnitude_masks(p, m, 0.37),
        "snip": lambda p, g, m: sp.snip_masks(p, g, m, 0.2, seed=11),
        "snip_position": lambda p, g, m: sp.snip_masks(p, g, m, 0.2, tie_break="position"),
        "snip_faithful": lambda p, g, m: sp.snip_masks(p, g, m, 0.2, tie_break="faithful"),
        "rigl": lambda p, g, m: sp.rigl_update(p, g, sp.global_magnitude_masks(p, m, 0.7), jnp.float32(0.3)),
        "rigl_float64": lambda p, g, m: sp.rigl_update(p, g, sp.global_magnitude_masks(p, m, 0.7), 0.3, seed=5),
        "rigl_faithful": lambda p, g, m: sp.rigl_update(p, g, sp.global_magnitude_masks(p, m, 0.7), 0.3,
                                                        tie_break="faithful"),
        "random": lambda p, g, m: sp.random_masks(jax.random.key(7), m, 0.6),
        "random_uniform": lambda p, g, m: sp.random_layerwise_masks(jax.random.key(7), m, {
            k: 0.3 for k, _ in sp.mask_items(m)}),
    }
    expected = {name: jax.jit(op)(params, grads, masks) for name, op in ops.items()}
    results = {}
    meshes = {
        "fsdp": (Mesh(np.array(jax.devices()), ("fsdp",)), P("fsdp", None)),
        "data_fsdp": (Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "fsdp")), P("fsdp", "data")),
    }
    for mesh_name, (mesh, spec) in meshes.items():
        p, g, m = shard(params, mesh, spec), shard(grads, mesh, spec), shard(masks, mesh, spec)
        for name, op in ops.items():
            fn = jax.jit(op)
            out = fn(p, g, m)
            hlo = fn.lower(p, g, m).compile().as_text()
            results[f"{mesh_name}/{name}"] = {
                "same": same(out, expected[name]),
                "all_gather": "all-gather" in hlo,
                "output_sharded": out["emb"].sharding.spec == spec,
            }
    results["sparse_active"] = int(sum(int(x.sum()) for _, x in sp.mask_items(sparse)))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
