"""Benchmarks (not tests): ``python scripts/bench.py sparsity|gts``.

``gts``: GTS(S) on MAWPS fold 0 at SPEC §1.2's settings (batch 4, hidden 512, beam 5, max length 45): the
training throughput of the real train step (the engine's jitted, donated step with the sparse optimizer)
in problems/s, and the beam-search evaluation of the whole dev split in problems/s, for dense, static
sparse 0.5 (Random (Before)) and RigL 0.5 (its mask-update step timed on its own and added at its real
frequency). Every distinct batch shape is compiled first; compile time is reported separately; figures
are medians of ``--rounds`` rounds (a round: ``--round_steps`` consecutive batches of the epoch order, run
for every configuration in turn, so machine drift hits them alike); a timing waits for the whole step.

``sparsity``: on a BERT-base-shaped parameter tree (~110M weights, random values; 2-D leaves prunable),
times one global-magnitude prune, one RigL update, and one jitted, donated step of update + apply of
``sparse_optimizer(adamw)`` on a non-update step against plain ``adamw`` (median of interleaved rounds;
compile time reported separately).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import smc_jax.sparsity as sp

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arithmetic"


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


def _gts_algorithm(name: str, update_frequency: int) -> sp.Algorithm:
    if name == "dense":
        return sp.Dense()
    if name == "static":
        return sp.RandomBefore(sparsity=0.5)
    if name == "rigl":
        return sp.RigL(sparsity=0.5, update_frequency=update_frequency)
    raise ValueError(f"unknown configuration {name!r}: use dense, static or rigl")


def bench_gts(args: argparse.Namespace) -> None:
    from smc_jax.tasks.arithmetic_task import ArithmeticTask
    from smc_jax.train.trainer import MaskRules, init_state, train_step

    task = ArithmeticTask(dataset="mawps", fold=0, data_dir=args.data_dir, hidden=args.hidden,
                          embedding_size=args.embedding_size, max_eval_examples=args.max_eval)
    problems = len(task.train)
    steps_per_epoch = task.steps_per_epoch
    total = steps_per_epoch * args.epochs
    print(f"{task.describe()}; batch {task.batch_size}, hidden {task.hidden}, beam {task.beam_size}; "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} CPU(s)")
    # the gin rules of gin/tasks/arithmetic.gin
    rules = MaskRules(exclude=("decoder/predict/embedding_weight",), exclude_for={"rigl": (".*merge.*",)})
    params0 = task.init_params(jax.random.key(0))
    order = [b for epoch in range(args.rounds + 1) for b in task.train_batches(6174, epoch)]
    configs = {}
    for name in args.configs.split(","):  # build and compile every configuration first
        algorithm = _gts_algorithm(name, args.update_frequency)
        masks = algorithm.init_masks(params0, rules.masks(params0, algorithm.name), key=jax.random.key(1))
        tx = sp.sparse_optimizer(task.optimizer(steps_per_epoch), algorithm, masks, total)
        state = init_state(sp.apply_masks(params0, masks), tx, seed=0)
        run_step = train_step(task, tx)

        compile_started = time.perf_counter()  # one step of every batch shape (plus an update step)
        shapes = {}
        for batch in order:
            shapes.setdefault(tuple(v.shape for v in batch.values()), batch)
        for batch in shapes.values():
            state, loss = run_step(state, batch, False)
        if algorithm.dynamic:
            state, loss = run_step(state, order[0], True)
        jax.block_until_ready(state)  # the whole step, not just the loss (the update may run after it)
        compile_s = time.perf_counter() - compile_started
        update_s = None
        if algorithm.dynamic:  # the update step's extra cost over a plain step, on one batch
            timed = []
            for hint in (True, False) * 3:
                start = time.perf_counter()
                state = run_step(state, order[0], hint)[0]
                jax.block_until_ready(state)
                timed.append((hint, time.perf_counter() - start))
            update_s = (statistics.median(t for h, t in timed if h) - statistics.median(t for h, t in timed if not h))
        configs[name] = dict(algorithm=algorithm, state=state, run_step=run_step, compile_s=compile_s,
                             update_s=update_s, rates=[])
        print(f"{name}: compiled in {compile_s:.1f} s", flush=True)

    for r in range(args.rounds):  # rounds interleave the configurations, so drift hits them alike
        batches = order[r * args.round_steps:(r + 1) * args.round_steps]
        real = sum(int((b["target_lengths"] > 0).sum()) for b in batches)
        for name, c in configs.items():
            state, run_step = c["state"], c["run_step"]
            start = time.perf_counter()
            for batch in batches:
                state, loss = run_step(state, batch, False)
            jax.block_until_ready(state)
            c["rates"].append(real / (time.perf_counter() - start))
            c["state"] = state

    rows = []
    for name, c in configs.items():
        train_rate = statistics.median(c["rates"])
        epoch_s = problems / train_rate
        if c["update_s"] is not None:
            epoch_s += steps_per_epoch / args.update_frequency * c["update_s"]
        eval_started = time.perf_counter()
        task.evaluate(c["state"]["params"])
        eval_compile = time.perf_counter() - eval_started
        eval_times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            task.evaluate(c["state"]["params"])
            eval_times.append(time.perf_counter() - start)
        eval_s = statistics.median(eval_times)
        eval_compile = max(0.0, eval_compile - eval_s)
        rows.append((name, train_rate, epoch_s, task.num_eval / eval_s, eval_s, c["compile_s"], eval_compile,
                     c["update_s"]))
        print(f"{name}: {train_rate:.1f} train problems/s (rounds {', '.join(f'{r:.1f}' for r in c['rates'])}), "
              f"eval {eval_s:.2f} s", flush=True)

    print(f"\n{'config':8s} {'train prob/s':>12s} {'epoch s':>8s} {'eval prob/s':>12s} {'eval s':>7s} "
          f"{'compile s (train, eval)':>24s}")
    for name, rate, epoch_s, eval_rate, eval_s, compile_s, eval_compile, update_s in rows:
        print(f"{name:8s} {rate:12.1f} {epoch_s:8.1f} {eval_rate:12.1f} {eval_s:7.2f} "
              f"{compile_s:14.1f}, {eval_compile:7.1f}")
    print(f"epoch s: {problems} training problems at the median rate", end="")
    if any(r[-1] is not None for r in rows):
        update_s = next(r[-1] for r in rows if r[-1] is not None)
        print(f"; RigL adds its mask-update step ({update_s:+.3f} s over a plain step) "
              f"{steps_per_epoch / args.update_frequency:.3f} times per epoch (UPDATE_FREQUENCY={args.update_frequency})",
              end="")
    print()
    dense = next((r for r in rows if r[0] == "dense"), None)
    for r in rows:
        if dense is not None and r[0] != "dense":
            print(f"{r[0]} epoch / dense epoch: {r[2] / dense[2]:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    sparsity = sub.add_parser("sparsity", help="mask operations and the sparse optimizer step on a BERT-base tree")
    sparsity.add_argument("--rounds", type=int, default=7, help="timed rounds per operation (median reported)")
    sparsity.add_argument("--scale", type=float, default=1.0, help="shrink the hidden sizes (smoke runs)")
    gts = sub.add_parser("gts", help="GTS training and beam-search evaluation throughput on MAWPS fold 0")
    gts.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    gts.add_argument("--round_steps", type=int, default=128, help="train steps per round")
    gts.add_argument("--configs", default="dense,static,rigl", help="comma-separated: dense, static, rigl")
    gts.add_argument("--data_dir", default=str(DEFAULT_DATA), help="the arithmetic data folder")
    gts.add_argument("--update_frequency", type=int, default=1000, help="RigL's UPDATE_FREQUENCY")
    gts.add_argument("--epochs", type=int, default=50, help="run length the schedules are built for")
    gts.add_argument("--hidden", type=int, default=512, help="GTS hidden size (SPEC: 512)")
    gts.add_argument("--embedding_size", type=int, default=768, help="GTS embedding size (SPEC: 768)")
    gts.add_argument("--max_eval", type=int, default=None, help="first N dev problems (default: all)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or getattr(args, "scale", 1.0) <= 0 or getattr(args, "round_steps", 1) < 1:
        parser.error("--rounds and --round_steps must be >= 1 and --scale > 0")
    if args.bench == "sparsity":
        bench_sparsity(args.rounds, args.scale)
    elif args.bench == "gts":
        bench_gts(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
