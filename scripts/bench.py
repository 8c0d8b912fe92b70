"""Benchmarks (not tests): ``python scripts/bench.py sparsity [--rounds 7] [--scale 1.0]``.

``sparsity``: on a BERT-base-shaped parameter tree (~110M weights, random values; 2-D leaves prunable),
times one global-magnitude prune, one RigL update, and one jitted, donated step of update + apply of
``sparse_optimizer(adamw)`` on a non-update step against plain ``adamw`` (median of interleaved rounds;
compile time reported separately).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

import smc_jax.sparsity as sp


def bert_base_shapes(scale: float = 1.0) -> dict:
    """Parameter shapes of HF ``BertModel`` (bert-base-uncased); ``scale`` shrinks the hidden sizes."""
    h, ff, vocab = int(768 * scale), int(3072 * scale), int(30522 * scale)
    dense = lambda i, o: {"kernel": (i, o), "bias": (o,)}  # noqa: E731
    norm = {"scale": (h,), "bias": (h,)}
    layer = {
        "attention": {
            "self": {"query": dense(h, h), "key": dense(h, h), "value": dense(h, h)},
            "output": {"dense": dense(h, h), "LayerNorm": norm},
        },
        "intermediate": {"dense": dense(h, ff)},
        "output": {"dense": dense(ff, h), "LayerNorm": norm},
    }
    return {
        "embeddings": {
            "word_embeddings": {"embedding": (vocab, h)},
            "position_embeddings": {"embedding": (512, h)},
            "token_type_embeddings": {"embedding": (2, h)},
            "LayerNorm": norm,
        },
        "encoder": {"layer": {str(i): layer for i in range(12)}},
        "pooler": {"dense": dense(h, h)},
    }


def random_tree(shapes: dict, seed: int) -> dict:
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda x: isinstance(x, tuple))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    make = jax.jit(lambda k, shape: 0.02 * jax.random.normal(k, shape), static_argnums=1)
    return jax.tree.unflatten(treedef, [make(k, s) for k, s in zip(keys, leaves)])


def _block(tree):
    jax.block_until_ready(tree)
    return tree


def _time(fn, *args) -> float:
    start = time.perf_counter()
    _block(fn(*args))
    return time.perf_counter() - start


def bench_sparsity(rounds: int, scale: float) -> None:
    params = random_tree(bert_base_shapes(scale), 0)
    grads = random_tree(bert_base_shapes(scale), 1)
    masks = sp.prunable_masks(params)
    n_total = sum(x.size for x in jax.tree.leaves(params))
    print(f"BERT-base-shaped tree: {n_total / 1e6:.1f}M weights, {sp.num_prunable(masks) / 1e6:.1f}M prunable, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)")

    def compile_timed(fn, *args, donate=()):
        start = time.perf_counter()
        compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
        return compiled, time.perf_counter() - start

    prune, prune_compile = compile_timed(lambda p, m: sp.global_magnitude_masks(p, m, 0.9), params, masks)
    print(f"global prune HLO contains a sort: {'sort(' in prune.as_text()}")
    sparse_masks = _block(prune(params, masks))
    rigl, rigl_compile = compile_timed(lambda p, g, m, f: sp.rigl_update(p, g, m, f), params, grads, sparse_masks,
                                       jnp.float32(0.3))
    compile_s = {"global magnitude prune": prune_compile, "RigL update": rigl_compile}
    times = {name: [] for name in compile_s}
    for _ in range(rounds):
        times["global magnitude prune"].append(_time(prune, params, masks))
        times["RigL update"].append(_time(rigl, params, grads, sparse_masks, jnp.float32(0.3)))

    # One jitted, donated step (update + apply) of each optimizer, timed in interleaved rounds.
    algorithm = sp.RigL(sparsity=0.9, update_frequency=10**9)  # a dynamic algorithm on its non-update steps
    sparse_opt = sp.sparse_optimizer(optax.adamw(1e-4), algorithm, sparse_masks, total_steps=10**6)
    # name -> (optimizer, update kwargs): the host hint is what smc_jax.train passes on non-update steps.
    optimizers = {
        "adamw": (optax.adamw(1e-4), {}),
        "sparse RigL, host hint": (sparse_opt, {"is_update_step": False}),
        "sparse RigL, lax.cond": (sparse_opt, {}),
    }
    states, steps = {}, {}
    for name, (opt, kwargs) in optimizers.items():
        def step(p, s, g, opt=opt, kwargs=kwargs):
            updates, s = opt.update(g, s, p, **kwargs)
            return optax.apply_updates(p, updates), s

        states[name] = (jax.tree.map(jnp.copy, params), opt.init(params))
        steps[name], compile_s[name + " step"] = compile_timed(step, *states[name], grads, donate=(0, 1))
        states[name] = _block(steps[name](*states[name], grads))
        times[name + " step"] = []
    for _ in range(rounds):
        for name in optimizers:
            start = time.perf_counter()
            states[name] = _block(steps[name](*states[name], grads))
            times[name + " step"].append(time.perf_counter() - start)

    print(f"\n{'operation':40s} {'median s':>10s} {'min s':>8s} {'compile s':>10s}")
    for name, values in times.items():
        print(f"{name:40s} {statistics.median(values):10.3f} {min(values):8.3f} {compile_s[name]:10.2f}")
    base = statistics.median(times["adamw step"])
    for name in list(optimizers)[1:]:
        ratio = statistics.median(times[name + " step"]) / base
        print(f"non-update step, {name} / plain adamw: {ratio:.3f}x  (median of {rounds} interleaved rounds)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    sparsity = sub.add_parser("sparsity", help="mask operations and the sparse optimizer step on a BERT-base tree")
    sparsity.add_argument("--rounds", type=int, default=7, help="timed rounds per operation (median reported)")
    sparsity.add_argument("--scale", type=float, default=1.0, help="shrink the hidden sizes (smoke runs)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.scale <= 0:
        parser.error("--rounds must be >= 1 and --scale > 0")
    if args.bench == "sparsity":
        bench_sparsity(args.rounds, args.scale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
