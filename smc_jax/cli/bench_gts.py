"""The GTS(S) benchmarks on MAWPS fold 0 (``bench.py gts`` and ``bench.py scaling``; described in
:mod:`smc_jax.cli.bench`): training and beam-search evaluation throughput, and the sharded train step over 1-8
devices. Both use the MAWPS recipe's optimizer and mask rules (``gin/tasks/mawps.gin``)."""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

import smc_jax.sparsity as sp
from smc_jax.cli.bench_common import bench_algorithm, machine, recipe, run_round

SCALING_MESHES = ("data", "fsdp")
CHILD_PREFIX = "SCALING_JSON "  # the line a scaling subprocess reports its rows on


def _mawps(args: argparse.Namespace, **settings):
    """The MAWPS fold-0 task of ``args`` (``--data_dir``, ``--hidden``, ``--embedding_size``) and its recipe."""
    from smc_jax.tasks.arithmetic.task import ArithmeticTask

    task = ArithmeticTask(dataset="mawps", fold=0, data_dir=args.data_dir, hidden=args.hidden,
                          embedding_size=args.embedding_size, **settings)
    return task, recipe("tasks/mawps.gin")


def _shape(batch) -> tuple:
    return tuple(v.shape for v in batch.values())


def bench_gts(args: argparse.Namespace) -> None:
    from smc_jax.train.steps import evaluator, init_state, train_step

    task, mawps = _mawps(args, max_eval_examples=args.max_eval)
    problems = len(task.train)
    steps_per_epoch = task.steps_per_epoch
    total = steps_per_epoch * args.epochs
    print(f"{task.describe()}; batch {task.batch_size}, hidden {task.hidden}, beam {task.beam_size}; {machine()}")
    params0 = task.init_params(jax.random.key(0))
    order = [b for epoch in range(args.rounds + 1) for b in task.epoch_batches(6174, epoch)]
    configs = {}
    for name in args.configs.split(","):  # build and compile every configuration first
        algorithm = bench_algorithm(name, args.update_frequency)
        masks = algorithm.init_masks(params0, mawps.mask_rules.masks(params0, algorithm.name), key=jax.random.key(1))
        inner = mawps.optimizer.build(task.param_groups, steps_per_epoch, total)
        tx = sp.sparse_optimizer(inner, algorithm, masks, total)
        state = init_state(sp.apply_masks(params0, masks), tx, seed=0)
        run_step = train_step(task, tx)

        compile_started = time.perf_counter()  # one step of every batch shape (plus an update step)
        shapes = {}
        for batch in order:
            shapes.setdefault(_shape(batch), batch)
        for batch in shapes.values():
            state, _ = run_step(state, batch, False)
        if algorithm.dynamic:
            state, _ = run_step(state, order[0], True)
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
            c["state"], _, seconds = run_round(c["state"], c["run_step"], batches)
            c["rates"].append(real / seconds)

    evaluate = evaluator(task)  # one jitted beam search for every configuration, compiled by the first call
    rows = []
    for name, c in configs.items():
        train_rate = statistics.median(c["rates"])
        epoch_s = problems / train_rate
        if c["update_s"] is not None:
            epoch_s += steps_per_epoch / args.update_frequency * c["update_s"]
        eval_started = time.perf_counter()
        evaluate(c["state"]["params"])
        eval_compile = time.perf_counter() - eval_started
        eval_times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            evaluate(c["state"]["params"])
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
              f"{steps_per_epoch / args.update_frequency:.3f} times per epoch "
              f"(UPDATE_FREQUENCY={args.update_frequency})", end="")
    print()
    dense = next((r for r in rows if r[0] == "dense"), None)
    for r in rows:
        if dense is not None and r[0] != "dense":
            print(f"{r[0]} epoch / dense epoch: {r[2] / dense[2]:.3f}")


# --- scaling: the sharded train step over 1, 2, 4, 8 devices ------------------------------------------------

def _scaling_partitioning(mesh: str, n: int):
    from smc_jax.train.partitioning import Partitioning

    return Partitioning(data=n) if mesh == "data" else Partitioning(data=1, fsdp=n)


def _scaling_run(args: argparse.Namespace, counts: list[int]) -> list[dict]:
    """In this process: for every device count in ``counts`` and mesh, build the sharded state the way
    ``trainer.fit`` does, compile the train step, record the first-step loss, then time non-update steps in
    rounds interleaving the configurations. Returns one row per (device count, mesh)."""
    from smc_jax.train.partitioning import Partitioner
    from smc_jax.train.steps import place, placed_state, train_step

    task, mawps = _mawps(args, batch_size=args.batch_size)
    algorithm = bench_algorithm("rigl", args.update_frequency)
    params0 = task.init_params(jax.random.key(0))
    masks0 = algorithm.init_masks(params0, mawps.mask_rules.masks(params0, algorithm.name), key=jax.random.key(1))
    params0 = sp.apply_masks(params0, masks0)
    steps_per_epoch = task.steps_per_epoch
    total = steps_per_epoch * args.epochs
    # one batch shape (the commonest of the first epochs), so each configuration compiles its programs once
    order = [b for epoch in range(4) for b in task.epoch_batches(0, epoch)]
    shapes = [_shape(b) for b in order]
    common = max(set(shapes), key=shapes.count)
    batches = [b for b in order if _shape(b) == common]
    need = args.rounds * args.round_steps
    batches = (batches * -(-need // len(batches)))[:need]
    first_batch = batches[0]
    print(f"{task.describe()}; batch {task.batch_size}, hidden {task.hidden}, embedding {task.embedding_size}; "
          f"RigL 0.5 (sparse optimizer, non-update steps); batch shape {dict(zip(first_batch, common))}; "
          f"{machine(cpus=False)}", flush=True)

    runs = []
    for n in counts:
        for mesh in SCALING_MESHES:
            partitioner = Partitioner(_scaling_partitioning(mesh, n))
            params, masks, params_sh = place(partitioner, task, params0, masks0)
            inner = mawps.optimizer.build(task.param_groups, steps_per_epoch, total)
            tx = sp.sparse_optimizer(inner, algorithm, masks, total)
            state, state_sh = placed_state(partitioner, params, params_sh, tx, seed=0)
            run_step = train_step(task, tx, None, 1, state_sh, partitioner)
            # the first step compiles the (non-update) programs
            state, loss, compile_s = run_round(state, run_step, [first_batch])
            first_loss = float(loss)
            leaves = [x for x in jax.tree.leaves(state["params"]) if np.ndim(x) >= 2]
            split = sum(x.sharding.shard_shape(x.shape) != x.shape for x in leaves)  # split over the mesh
            largest = max(leaves, key=lambda x: x.size)
            rows = int(first_batch["input_ids"].shape[0])
            batch_rows = partitioner.batch_sharding(rows).shard_shape((rows,))[0]
            mesh_devices = {d for x in jax.tree.leaves(state) for d in x.sharding.device_set}
            runs.append(dict(devices=n, mesh=mesh, mesh_shape="x".join(map(str, partitioner.mesh.devices.shape)),
                             state=state, run_step=run_step, compile_s=compile_s, first_loss=first_loss,
                             split=f"{split}/{len(leaves)}", used=len(mesh_devices), rates=[],
                             largest=f"{largest.size // math.prod(largest.sharding.shard_shape(largest.shape))}-way",
                             batch=f"{rows}->{batch_rows}"))
            print(f"{n} device(s), {mesh} mesh {runs[-1]['mesh_shape']}: compiled in {compile_s:.1f} s, "
                  f"first-step loss {first_loss:.6f}", flush=True)

    for r in range(args.rounds):  # rounds interleave the configurations, so machine drift hits them alike
        round_batches = batches[r * args.round_steps:(r + 1) * args.round_steps]
        for run in runs:
            run["state"], loss, seconds = run_round(run["state"], run["run_step"], round_batches)
            run["rates"].append(len(round_batches) / seconds)
            run["last_loss"] = float(loss)
    for run in runs:
        del run["state"], run["run_step"]
        run["steps_per_s"] = statistics.median(run["rates"])
    return runs


def _scaling_children(args: argparse.Namespace, counts: list[int]) -> list[dict]:
    """One subprocess per device count with that many fake CPU devices (the count is fixed when jax starts),
    each running ``python -m smc_jax.cli.bench scaling --_child N``; their rows, their other lines echoed."""
    print(f"CPU backend: each device count runs in its own process with "
          f"XLA_FLAGS=--xla_force_host_platform_device_count=N on {os.cpu_count()} CPU core(s)", flush=True)
    child_args = [] if args.data_dir is None else ["--data_dir", str(args.data_dir)]
    for flag in ("hidden", "embedding_size", "batch_size", "rounds", "round_steps", "update_frequency", "epochs"):
        child_args += [f"--{flag}", str(getattr(args, flag))]
    rows = []
    for n in counts:
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
        proc = subprocess.run([sys.executable, "-m", "smc_jax.cli.bench", "scaling", "--_child", str(n),
                               *child_args], env=env, stdout=subprocess.PIPE, text=True, check=False)
        out = proc.stdout.splitlines()
        for line in out:
            if not line.startswith(CHILD_PREFIX):
                print(f"  [{n}] {line}", flush=True)
        found = [line for line in out if line.startswith(CHILD_PREFIX)]
        if proc.returncode or not found:
            raise SystemExit(f"scaling child with {n} device(s) failed (exit status {proc.returncode})")
        rows += json.loads(found[-1][len(CHILD_PREFIX):])
    return rows


def bench_scaling(args: argparse.Namespace) -> None:
    counts = sorted({int(c) for c in args.devices.split(",")})
    if args._child is not None:  # a subprocess with --_child fake CPU devices: one JSON line for the parent
        assert jax.device_count() == args._child, (jax.device_count(), args._child)
        rows = _scaling_run(args, [args._child])
        print(CHILD_PREFIX + json.dumps(rows), flush=True)
        return
    backend = jax.default_backend()
    if backend != "cpu":  # real devices: one process, the first n devices for each n
        available = jax.device_count()
        counts = [n for n in counts if n <= available]
        print(f"{available} {backend} device(s): device counts {counts}", flush=True)
        rows = _scaling_run(args, counts)
    else:
        rows = _scaling_children(args, counts)

    print(f"\n{'devices':>7s} {'mesh':5s} {'shape':>7s} {'used':>4s} {'2-D split':>9s} {'largest':>8s} "
          f"{'rows/dev':>8s} {'steps/s':>8s} {'compile s':>9s} {'first-step loss':>16s} {'last-step loss':>15s}")
    for r in rows:
        print(f"{r['devices']:7d} {r['mesh']:5s} {r['mesh_shape']:>7s} {r['used']:4d} {r['split']:>9s} "
              f"{r['largest']:>8s} {r['batch']:>8s} {r['steps_per_s']:8.2f} {r['compile_s']:9.1f} "
              f"{r['first_loss']:16.6f} {r['last_loss']:15.6f}")
    losses = [r["first_loss"] for r in rows]
    print(f"first-step loss, max difference over every device count and mesh: {max(losses) - min(losses):.3g} "
          f"(the same state, batch and dropout key everywhere)")
    last = [r["last_loss"] for r in rows]
    print(f"last-step loss (step {1 + args.rounds * args.round_steps}, the same batches in the same order), max "
          f"difference: {max(last) - min(last):.3g}")
    print(f"steps/s: median of {args.rounds} rounds of {args.round_steps} non-update steps after compilation; "
          "'shape': data x fsdp x tensor; 'used': devices holding the state; '2-D split': params of 2+ dims "
          "split over the mesh (the rest replicated); 'largest': ways the largest param is split; 'rows/dev': "
          "batch rows -> rows per device")
    if backend == "cpu":
        print("NOTE: fake CPU devices (--xla_force_host_platform_device_count) all share this machine's "
              f"{os.cpu_count()} CPU core(s): this checks that the sharded step runs and gives the same loss; "
              "it is NOT a speed or scaling figure.")
