"""The arithmetic benchmarks on MAWPS fold 0 (``bench.py gts``, ``scaling``, ``graph2tree``; see
:mod:`smc_jax.cli.bench` and docs/benchmarks.md), with the MAWPS recipe's optimizer and mask rules.

``graph2tree``: dense GTS(S) (batch 4, hidden 512), Graph2Tree(S) at those sizes (``g2t_equal``) and at its own
(``g2t``: batch 8, hidden 384), in interleaved rounds: an epoch is the training problems at the median rate plus
one epoch's host batching; the evaluation, its encoder part and its decoder steps; the ratios against GTS(S) with
the Graph2Tree issue's targets (the evaluation one at GTS's decoder steps: GTS's plus the graph module's cost)."""

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
from smc_jax.cli.bench_common import bench_algorithm, machine, recipe, run_round, timed
from smc_jax.tasks.base import Task

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


def _compiled(task: Task, exp, algorithm: sp.Algorithm, order: list, epochs: int, params0=None) -> dict:
    """The engine's jitted train step of ``task`` under ``algorithm`` (``exp``'s optimizer and mask rules), a step
    run on every batch shape of ``order`` (plus an update step for a dynamic algorithm) so every program is
    compiled: ``{state, run_step, compile_s, update_s}`` (``update_s``: an update step's extra seconds over a
    plain step, None for a static algorithm)."""
    from smc_jax.train.steps import init_state, train_step

    params0 = task.init_params(jax.random.key(0)) if params0 is None else params0
    total = task.steps_per_epoch * epochs
    masks = algorithm.init_masks(params0, exp.mask_rules.masks(params0, algorithm.name), key=jax.random.key(1))
    tx = sp.sparse_optimizer(exp.optimizer.build(task.param_groups, task.steps_per_epoch, total), algorithm, masks,
                             total)
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
    return dict(state=state, run_step=run_step, compile_s=compile_s, update_s=update_s)


def bench_gts(args: argparse.Namespace) -> None:
    from smc_jax.train.steps import evaluator

    task, mawps = _mawps(args, max_eval_examples=args.max_eval)
    problems = len(task.train)
    steps_per_epoch = task.steps_per_epoch
    print(f"{task.describe()}; batch {task.batch_size}, hidden {task.hidden}, beam {task.beam_size}; {machine()}")
    params0 = task.init_params(jax.random.key(0))
    order = [b for epoch in range(args.rounds + 1) for b in task.epoch_batches(6174, epoch)]
    configs = {}
    for name in args.configs.split(","):  # build and compile every configuration first
        algorithm = bench_algorithm(name, args.update_frequency)
        configs[name] = _compiled(task, mawps, algorithm, order, args.epochs, params0)
        configs[name]["rates"] = []
        print(f"{name}: compiled in {configs[name]['compile_s']:.1f} s", flush=True)

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


# --- graph2tree: Graph2Tree(S) against GTS(S) -------------------------------------------------------------------

G2T_CONFIGS = ("gts", "g2t_equal", "g2t")  # GTS(S); Graph2Tree(S) at GTS's sizes; Graph2Tree(S) at its own


def add_graph2tree_parser(sub) -> argparse.ArgumentParser:
    """The ``graph2tree`` subcommand's flags, on ``sub`` (the subparsers of ``bench.py``'s parser)."""
    p = sub.add_parser("graph2tree", help="Graph2Tree(S) against GTS(S) on MAWPS fold 0: epoch and beam-5 evaluation")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--round_problems", type=int, default=256, help="training problems per configuration and round")
    p.add_argument("--configs", default=",".join(G2T_CONFIGS), help="comma-separated: " + ", ".join(G2T_CONFIGS))
    p.add_argument("--data_dir", default=None, help="the arithmetic data folder (default: $SMC_DATA_DIR/arithmetic, "
                   "else the packaged data)")
    p.add_argument("--hidden", type=int, default=512, help="GTS's and g2t_equal's hidden size (SPEC: 512)")
    p.add_argument("--g2t_hidden", type=int, default=384, help="Graph2Tree's own hidden size (spec: 384)")
    p.add_argument("--embedding_size", type=int, default=768, help="embedding size (SPEC: 768)")
    p.add_argument("--max_eval", type=int, default=None, help="first N dev problems (default: all)")
    p.add_argument("--epochs", type=int, default=50, help="run length the schedules are built for")
    return p


def _g2t_config(name: str, args: argparse.Namespace):
    """A configuration's task (batch 4 / hidden ``--hidden``, or Graph2Tree's batch 8 / ``--g2t_hidden``) and its
    model's recipe (gin/models/*.gin: the optimizer)."""
    from smc_jax.tasks.arithmetic.task import ArithmeticTask

    model, batch, hidden = {"gts": ("gts", 4, args.hidden), "g2t_equal": ("graph2tree", 4, args.hidden),
                            "g2t": ("graph2tree", 8, args.g2t_hidden)}[name]
    task = ArithmeticTask(dataset="mawps", fold=0, data_dir=args.data_dir, model=model, batch_size=batch,
                          hidden=hidden, embedding_size=args.embedding_size, max_eval_examples=args.max_eval)
    return task, recipe("tasks/mawps.gin", (f"models/{model}.gin", "algorithms/dense.gin"))


def _graph_build_s(task: Task) -> float:
    """Seconds to build the graphs of every training and dev example of ``task`` (once per run, at load)."""
    from smc_jax.tasks.arithmetic import data, graphs

    root = data.resolve_data_dir(task.data_dir, task.dataset)
    pairs = [(p, e) for split, examples in (("train", task.train), ("dev", task.dev))
             for p, e in zip(data.load_problems(data.split_path(root, task.dataset, task.fold, split)), examples)]
    start = time.perf_counter()
    for problem, example in pairs:
        graphs.example_edges(problem, example, task.tokenizer)
    return time.perf_counter() - start


def bench_graph2tree(args: argparse.Namespace) -> None:
    """Dense training and evaluation of GTS(S) and Graph2Tree(S) in interleaved rounds; an epoch is the training
    problems at the median rate plus the host's batching of one epoch (graphs included for Graph2Tree)."""
    names = [n.strip() for n in args.configs.split(",")]
    unknown = [n for n in names if n not in G2T_CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration {unknown[0]!r}: use {', '.join(G2T_CONFIGS)}")
    print(f"MAWPS fold 0, dense, beam 5; {machine()}", flush=True)
    configs = {}
    for name in names:  # build and compile every configuration first
        task, exp = _g2t_config(name, args)
        batching = []
        for epoch in range(args.rounds):  # the host's share of an epoch: shuffling and padding its batches
            start = time.perf_counter()
            task.epoch_batches(6174, epoch)
            batching.append(time.perf_counter() - start)
        per_round = -(-args.round_problems // task.batch_size)
        epochs = -(-per_round * args.rounds // task.steps_per_epoch) + 1
        order = [b for epoch in range(epochs) for b in task.epoch_batches(6174, epoch)][:per_round * args.rounds]
        c = _compiled(task, exp, sp.Dense(), order, args.epochs)  # the timed batches' shapes
        c.update(task=task, order=order, per_round=per_round, rates=[], batching_s=statistics.median(batching))
        if task.model == "graph2tree":
            c["graphs_s"] = _graph_build_s(task)
        configs[name] = c
        print(f"{name}: {task.describe()}; batch {task.batch_size}, hidden {task.hidden}; compiled in "
              f"{c['compile_s']:.1f} s", flush=True)

    for r in range(args.rounds):  # rounds interleave the configurations, so drift hits them alike
        for c in configs.values():
            batches = c["order"][r * c["per_round"]:(r + 1) * c["per_round"]]
            real = sum(int((b["target_lengths"] > 0).sum()) for b in batches)
            c["state"], _, seconds = run_round(c["state"], c["run_step"], batches)
            c["rates"].append(real / seconds)
    _eval_parts(configs, max(args.rounds, 5))
    for c in configs.values():
        c["rate"] = statistics.median(c["rates"])
        c["epoch_s"] = len(c["task"].train) / c["rate"] + c["batching_s"]

    print(f"\n{'config':10s} {'model':10s} {'batch':>5s} {'hidden':>6s} {'train prob/s':>12s} {'batching s':>10s} "
          f"{'epoch s':>8s} {'eval s':>7s} {'encode s':>8s} {'steps':>5s} {'compile s':>9s}")
    for name, c in configs.items():
        t = c["task"]
        print(f"{name:10s} {t.model:10s} {t.batch_size:5d} {t.hidden:6d} {c['rate']:12.1f} {c['batching_s']:10.2f} "
              f"{c['epoch_s']:8.1f} {c['eval_s']:7.2f} {c['encode_s']:8.3f} {c['steps']:5d} {c['compile_s']:9.1f}")
    first = next(iter(configs.values()))["task"]
    print(f"epoch s: {len(first.train)} training problems at the median rate of {args.rounds} rounds of "
          f"{args.round_problems} problems, plus one epoch's batching on the host; eval s: beam-5 decoding of the "
          f"{first.num_eval} dev problems (median of {max(args.rounds, 5)} rounds interleaving the configurations); "
          "encode s: its encoder part (embedding, biLSTM and, for "
          "Graph2Tree, the graph module); steps: the decoder steps the beam search ran, summed over the chunks "
          "(they follow the predictions, so they differ between models)")
    for name, c in configs.items():
        if "graphs_s" in c:
            print(f"{name}: the graphs of the {len(c['task'].train) + c['task'].num_eval} problems are built once per "
                  f"run, at load: {c['graphs_s']:.2f} s")
    gts, checks = configs.get("gts"), []
    if gts and "g2t_equal" in configs:
        equal = configs["g2t_equal"]
        print(f"g2t_equal evaluation / gts evaluation as measured: {equal['eval_s'] / gts['eval_s']:.3f} "
              f"({equal['steps']} against {gts['steps']} decoder steps)")
        checks += [("g2t_equal epoch / gts epoch", equal["epoch_s"] / gts["epoch_s"], 1.15),
                   ("gts evaluation plus the graph module's encoder cost / gts evaluation",
                    (gts["eval_s"] + equal["encode_s"] - gts["encode_s"]) / gts["eval_s"], 1.10)]
    if gts and "g2t" in configs:
        checks.append(("g2t epoch / gts epoch", configs["g2t"]["epoch_s"] / gts["epoch_s"], 1.00))
    for label, ratio, target in checks:
        print(f"{label}: {ratio:.3f} (target <= {target:.2f}: {'met' if ratio <= target else 'NOT met'})")


def _eval_parts(configs: dict, rounds: int) -> None:
    """Into every configuration ``c`` of ``configs`` (``task``, trained ``state``): the beam-5 evaluation of the dev
    split (``eval_s``: median seconds of the engine's evaluator), its encoder part (``encode_s``: the jitted
    ``encode_batch`` of every chunk) and the decoder steps it runs (``steps``); rounds interleave the
    configurations, so machine drift hits them alike."""
    import jax.numpy as jnp

    from smc_jax.train.steps import evaluator

    for c in configs.values():
        task, params = c["task"], c["state"]["params"]
        evaluate = evaluator(task)
        chunks = [jax.tree.map(jnp.asarray, chunk.batch) for chunk in task.eval_sets()["dev"]]
        encode = jax.jit(lambda p, b, task=task: task.network.apply({"params": p}, b, method="encode_batch"))
        search = jax.jit(lambda p, b, task=task: task.network.apply(
            {"params": p}, b, method="beam_search", beam_size=task.beam_size,
            max_length=task.max_output_length)["steps"][0])
        c["steps"] = sum(int(search(params, b)) for b in chunks)
        c["evaluate"] = lambda evaluate=evaluate, params=params: evaluate(params)
        c["encode"] = lambda encode=encode, params=params, chunks=chunks: [encode(params, b) for b in chunks]
        c["evaluate"]()  # compiles
        c["encode"]()
        c["eval_times"], c["encode_times"] = [], []
    for _ in range(rounds):
        for c in configs.values():
            c["eval_times"].append(timed(c["evaluate"]))
            c["encode_times"].append(timed(c["encode"]))
    for c in configs.values():
        c["eval_s"], c["encode_s"] = statistics.median(c["eval_times"]), statistics.median(c["encode_times"])


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
