"""Benchmarks (not tests): ``python scripts/bench.py sparsity|gts|models|commonsense|scaling``.

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

``models``: the base encoder ``RobertaModel`` at RoBERTa-base shapes (random weights) on a batch of
``--batch`` x ``--length`` tokens (some padding): one jitted ``value_and_grad`` step (forward + backward,
dropout on, loss mean(hidden**2)) for fp32, bf16 compute (fp32 params), each with and without per-layer
remat; step time (median of interleaved rounds), tokens/s, compile time, and memory: the compiled
executable's ``memory_analysis()`` (temp + argument + output - aliased bytes), on GPU also the device's
``peak_bytes_in_use``.

``commonsense``: ``RobertaForMultipleChoice`` (fairseq's ranking head) at RoBERTa-base shapes, ``--batch``
sequences of ``--length`` tokens shaped as ``batch/choices`` questions x ``--choices`` (4) choices, softmax
cross-entropy over the choices, ``sparse_optimizer(adamw(1e-5, b2=0.98, eps=1e-6, wd=0.01))``, the trainer's
train step, for dense, static 0.5 (Random (Before)) and RigL 0.5 (fairseq order): the non-update step, RigL's
mask-update step timed on its own and averaged in at ``--update_frequency`` (500), the ratios to dense, and
the evaluation throughput of a jitted deterministic forward (argmax over the choices).

``scaling``: the engine's sharded train step (``train_step`` with the state laid out as ``trainer.fit`` lays
it out) for GTS on MAWPS fold 0 (batch 8, ``--hidden`` 128 by default, 512 is SPEC's size) under RigL 0.5
with the sparse optimizer, on 1, 2, 4 and 8 devices (``--devices``), each on a data-parallel mesh
(``Partitioning(data=N)``) and an fsdp mesh (``Partitioning(data=1, fsdp=N)``): steps/s of non-update steps
(median of interleaved rounds, one batch shape), compile time (the first step), the first-step loss (the
same state, batch and dropout key everywhere: it must agree across device counts; the max difference is
printed) and how the params and the batch are split. On GPU/TPU the first N real devices are used; on CPU
each count runs in a subprocess with N fake devices (``--xla_force_host_platform_device_count``), which
share the machine's cores: a check that the sharded step runs, not a speed figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
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
    from smc_jax.tasks.arithmetic.task import ArithmeticTask
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


# --- RoBERTa-base encoders (random weights) -----------------------------------------------------------------

def roberta_base_config(layers: int = 12):
    """RoBERTa-base's architecture (roberta-base's config.json); ``layers`` shrinks it for quick checks."""
    from smc_jax.models.bert import EncoderConfig

    return EncoderConfig(model_type="roberta", vocab_size=50265, hidden_size=768, num_hidden_layers=layers,
                         num_attention_heads=12, intermediate_size=3072, max_position_embeddings=514,
                         type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5)


def encoder_batch(shape: tuple[int, ...], config, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """Random token ids and attention mask of ``shape`` (last axis: length), RoBERTa-style: ``<s>`` first,
    real lengths drawn from [3/4 length, length] (the first sequence full), padding ``pad_token_id``."""
    rng = np.random.default_rng(seed)
    *lead, length = shape
    n = int(np.prod(lead))
    real = rng.integers(max(1, 3 * length // 4), length + 1, size=n)
    real[0] = length
    mask = np.arange(length)[None, :] < real[:, None]
    ids = rng.integers(3, config.vocab_size, size=(n, length))
    ids[:, 0] = 0
    ids = np.where(mask, ids, config.pad_token_id)
    return jnp.asarray(ids.reshape(shape), jnp.int32), jnp.asarray(mask.reshape(shape), jnp.int32)


def _params_fn(module):
    """``key -> fp32 params`` of ``module`` (initialised on its dummy inputs)."""
    import flax.linen as nn

    return lambda key: nn.meta.unbox(module.init(key, *module.dummy_inputs()))["params"]


def _init_params(module) -> dict:
    return _block(jax.jit(_params_fn(module))(jax.random.key(0)))


def _memory_mib(compiled) -> tuple[float | None, str]:
    """XLA's buffer-assignment estimate of the peak: temp + argument + output - aliased bytes (MiB)."""
    try:
        m = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):  # not every backend implements it
        m = None
    if m is None:
        return None, "n/a"
    total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return total / 2**20, (f"temp {m.temp_size_in_bytes / 2**20:.0f} + args {m.argument_size_in_bytes / 2**20:.0f}"
                           f" + out {m.output_size_in_bytes / 2**20:.0f} MiB")


def _device_peak_mib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


MODEL_CONFIGS = {"fp32": (jnp.float32, False), "fp32+remat": (jnp.float32, True),
                 "bf16": (jnp.bfloat16, False), "bf16+remat": (jnp.bfloat16, True)}


def bench_models(args: argparse.Namespace) -> None:
    from smc_jax.models.bert import build

    config = roberta_base_config(args.layers)
    ids, mask = encoder_batch((args.batch, args.length), config)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in MODEL_CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}: use {', '.join(MODEL_CONFIGS)}")
    params = _init_params(build(config))  # fp32 params, the same tree for every configuration
    n_params = sum(x.size for x in jax.tree.leaves(params))
    tokens = args.batch * args.length
    print(f"RobertaModel, RoBERTa-base shapes with {args.layers} layers ({n_params / 1e6:.1f}M params, random), "
          f"batch {args.batch} x length {args.length} ({int(mask.sum())} real tokens); "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} CPU(s)", flush=True)

    runs = {}
    for name in names:  # compile every configuration first
        dtype, remat = MODEL_CONFIGS[name]
        module = build(config, dtype=dtype, remat=remat)
        same = jax.eval_shape(_params_fn(module), jax.random.key(0))
        assert jax.tree.structure(same) == jax.tree.structure(params), "remat changed the parameter tree"

        def loss(p, ids, mask, key, module=module):  # training mode: dropout on
            hidden = module.apply({"params": p}, ids, mask, deterministic=False, rngs={"dropout": key})
            return jnp.mean(jnp.square(hidden.astype(jnp.float32)))

        start = time.perf_counter()
        compiled = jax.jit(jax.value_and_grad(loss)).lower(params, ids, mask, jax.random.key(1)).compile()
        compile_s = time.perf_counter() - start
        _block(compiled(params, ids, mask, jax.random.key(1)))  # warm-up
        mem, mem_parts = _memory_mib(compiled)
        runs[name] = {"step": compiled, "compile_s": compile_s, "mem": mem, "mem_parts": mem_parts, "times": [],
                      "device_peak": _device_peak_mib()}
        print(f"{name}: compiled in {compile_s:.1f} s; memory_analysis {mem_parts}", flush=True)

    for r in range(args.rounds):  # rounds interleave the configurations, so drift hits them alike
        for run in runs.values():
            start = time.perf_counter()
            for i in range(args.round_steps):  # independent steps: wait for each (loss and every gradient)
                _block(run["step"](params, ids, mask, jax.random.key(100 * r + i)))
            run["times"].append((time.perf_counter() - start) / args.round_steps)
        print(f"round {r + 1}: " + ", ".join(f"{n} {v['times'][-1] * 1e3:.0f} ms" for n, v in runs.items()),
              flush=True)

    gpu = any(v["device_peak"] is not None for v in runs.values())
    print(f"\n{'config':11s} {'step ms':>9s} {'min ms':>8s} {'tokens/s':>9s} {'compile s':>10s} {'memory MiB':>11s}"
          + (f" {'device peak MiB':>16s}" if gpu else ""))
    for name, run in runs.items():
        step_s = statistics.median(run["times"])
        mem = "n/a" if run["mem"] is None else f"{run['mem']:.0f}"
        print(f"{name:11s} {step_s * 1e3:9.0f} {min(run['times']) * 1e3:8.0f} {tokens / step_s:9.0f} "
              f"{run['compile_s']:10.1f} {mem:>11s}" + (f" {run['device_peak'] or 0:16.0f}" if gpu else ""))
    print(f"step: one jitted value_and_grad (forward + backward, dropout on) of mean(hidden**2), median of "
          f"{args.rounds} interleaved rounds of {args.round_steps} step(s); tokens/s counts all "
          f"{args.batch}x{args.length} positions (padding included); memory: the compiled executable's "
          "memory_analysis(), temp + argument + output - aliased bytes (XLA's buffer assignment, not a "
          "measured RSS)" + ("; device peak: memory_stats()['peak_bytes_in_use'] of the process so far "
                             "(cumulative: run one --configs per process for per-configuration peaks)"
                             if gpu else ""))
    if "fp32" in runs:
        base = statistics.median(runs["fp32"]["times"])
        for name, run in runs.items():
            if name != "fp32":
                print(f"{name} / fp32 step time: {statistics.median(run['times']) / base:.2f}")


# --- commonsense reasoning: RoBERTa-base ranking head, sparse fine-tuning ------------------------------------

def _commonsense_algorithm(name: str, update_frequency: int) -> sp.Algorithm:
    if name == "dense":
        return sp.ALGORITHMS["dense"]
    if name == "static":
        return dataclasses.replace(sp.ALGORITHMS["random_before"], sparsity=0.5)
    if name == "rigl":
        return dataclasses.replace(sp.ALGORITHMS["rigl"], sparsity=0.5, update_frequency=update_frequency,
                                   fairseq_order=True)
    raise ValueError(f"unknown configuration {name!r}: use dense, static or rigl")


class _MultipleChoiceShim:
    """What ``trainer.train_step`` needs of a task: ``loss(params, batch, key)`` (dropout on)."""

    def __init__(self, module):
        self.module = module

    def loss(self, params, batch, key):
        logits = self.module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                   deterministic=False, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["labels"]).mean()


def bench_commonsense(args: argparse.Namespace) -> None:
    from smc_jax.models.bert import build
    from smc_jax.train.trainer import init_state, train_step

    if args.batch % args.choices:
        raise SystemExit(f"--batch {args.batch} must be a multiple of --choices {args.choices}")
    questions = args.batch // args.choices
    config = roberta_base_config(args.layers)
    module = build(config, "multiple_choice")
    ids, mask = encoder_batch((questions, args.choices, args.length), config)
    labels = jnp.asarray(np.random.default_rng(1).integers(0, args.choices, size=questions), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    params0 = _init_params(module)
    prunable = sp.prunable_masks(params0, exclude=(r".*lm_head/dense.*", r".*token_type_embeddings.*"), min_ndim=2)
    n_params = sum(x.size for x in jax.tree.leaves(params0))
    print(f"RobertaForMultipleChoice (ranking head), RoBERTa-base shapes with {args.layers} layers "
          f"({n_params / 1e6:.1f}M params, {sp.num_prunable(prunable) / 1e6:.1f}M prunable, random); batch "
          f"{args.batch} sequences = {questions} questions x {args.choices} choices, length {args.length}; "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} CPU(s)", flush=True)
    shim = _MultipleChoiceShim(module)
    predict = jax.jit(lambda p, ids, mask: jnp.argmax(module.apply({"params": p}, ids, mask, deterministic=True), -1))

    runs = {}
    for name in args.configs.split(","):  # build and compile every configuration first
        algorithm = _commonsense_algorithm(name, args.update_frequency)
        masks = algorithm.init_masks(params0, prunable, key=jax.random.key(1))
        inner = optax.adamw(1e-5, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.01)
        tx = sp.sparse_optimizer(inner, algorithm, masks, args.update_frequency * 10)
        state = init_state(sp.apply_masks(params0, masks), tx, seed=0)
        run_step = train_step(shim, tx)
        start = time.perf_counter()
        state, _ = run_step(state, batch, False)
        _block(state)  # the whole step, not just the loss (the update may run after it)
        first = {"train": time.perf_counter() - start}
        if algorithm.dynamic:
            start = time.perf_counter()
            state, _ = run_step(state, batch, True)
            _block(state)
            first["update"] = time.perf_counter() - start
        start = time.perf_counter()
        _block(predict(state["params"], ids, mask))
        first["eval"] = time.perf_counter() - start
        runs[name] = {"state": state, "run_step": run_step, "first": first, "times": {k: [] for k in first}}
        print(f"{name}: first calls (compile + one run) " + ", ".join(f"{k} {v:.1f} s" for k, v in first.items()),
              flush=True)

    for r in range(args.rounds):  # rounds interleave the configurations, so drift hits them alike
        for run in runs.values():
            state, run_step = run["state"], run["run_step"]
            start = time.perf_counter()
            for _ in range(args.round_steps):
                state, _ = run_step(state, batch, False)
            _block(state)
            run["times"]["train"].append((time.perf_counter() - start) / args.round_steps)
            if "update" in run["times"]:
                start = time.perf_counter()
                state, _ = run_step(state, batch, True)
                _block(state)
                run["times"]["update"].append(time.perf_counter() - start)
            start = time.perf_counter()
            _block(predict(state["params"], ids, mask))
            run["times"]["eval"].append(time.perf_counter() - start)
            run["state"] = state
        print(f"round {r + 1}: " + ", ".join(f"{n} {v['times']['train'][-1]:.3f} s" for n, v in runs.items()),
              flush=True)

    f = args.update_frequency
    rows = {}
    for name, run in runs.items():
        med = {k: statistics.median(v) for k, v in run["times"].items()}
        avg = ((f - 1) * med["train"] + med["update"]) / f if "update" in med else med["train"]
        compile_s = {k: max(0.0, run["first"][k] - med[k]) for k in med}
        rows[name] = {"med": med, "avg": avg, "compile_s": compile_s}

    print(f"\n{'config':8s} {'step s':>8s} {'update step s':>14s} {'avg step s':>11s} {'seq/s':>7s} "
          f"{'eval q/s':>9s} {'eval seq/s':>11s} {'compile s (train, update, eval)':>32s}")
    for name, row in rows.items():
        med, c = row["med"], row["compile_s"]
        upd = f"{med['update']:.3f}" if "update" in med else "-"
        cupd = f"{c['update']:.1f}" if "update" in c else "-"
        print(f"{name:8s} {med['train']:8.3f} {upd:>14s} {row['avg']:11.3f} {args.batch / row['avg']:7.2f} "
              f"{questions / med['eval']:9.2f} {args.batch / med['eval']:11.2f} "
              f"{c['train']:18.1f}, {cupd:>5s}, {c['eval']:5.1f}")
    print(f"step: the trainer's jitted, donated train step (split gradient + update programs on CPU), "
          f"non-update (hint False); update step: RigL's mask-update step (hint True); avg step: "
          f"({f - 1}*step + update step)/{f} for RigL (UPDATE_FREQUENCY={f}); medians of {args.rounds} "
          f"interleaved rounds of {args.round_steps} step(s); eval: jitted deterministic forward + argmax "
          f"over choices (q = questions of {args.choices} choices; one program for every configuration, compiled "
          f"by the first); compile: first call minus the median")
    if "dense" in rows:
        for name, row in rows.items():
            if name != "dense":
                print(f"{name} / dense: {row['avg'] / rows['dense']['avg']:.3f} (average step; target <= 1.05)")


# --- scaling: the sharded train step over 1, 2, 4, 8 devices ------------------------------------------------

SCALING_MESHES = ("data", "fsdp")


def _scaling_partitioning(mesh: str, n: int):
    from smc_jax.train.partitioning import Partitioning

    return Partitioning(data=n) if mesh == "data" else Partitioning(data=1, fsdp=n)


def _scaling_run(args: argparse.Namespace, counts: list[int]) -> list[dict]:
    """In this process: for every device count in ``counts`` and mesh, build the sharded state the way
    ``trainer.fit`` does, compile the train step, record the first-step loss, then time non-update steps in
    rounds interleaving the configurations. Returns one row per (device count, mesh)."""
    from smc_jax.tasks.arithmetic.task import ArithmeticTask
    from smc_jax.train.partitioning import Partitioner
    from smc_jax.train.trainer import MaskRules, place, placed_state, train_step

    task = ArithmeticTask(dataset="mawps", fold=0, data_dir=args.data_dir, batch_size=args.batch_size,
                          hidden=args.hidden, embedding_size=args.embedding_size)
    # the gin rules of gin/tasks/arithmetic.gin for RigL
    rules = MaskRules(exclude=("decoder/predict/embedding_weight",), exclude_for={"rigl": (".*pooler.*", ".*merge.*")})
    algorithm = sp.RigL(sparsity=0.5, update_frequency=args.update_frequency)
    params0 = task.init_params(jax.random.key(0))
    masks0 = algorithm.init_masks(params0, rules.masks(params0, algorithm.name), key=jax.random.key(1))
    params0 = sp.apply_masks(params0, masks0)
    steps_per_epoch = task.steps_per_epoch
    total = steps_per_epoch * args.epochs
    # one batch shape (the commonest of the first epochs), so each configuration compiles its programs once
    order = [b for epoch in range(4) for b in task.train_batches(0, epoch)]
    shape_of = lambda b: tuple(v.shape for v in b.values())  # noqa: E731
    shapes = [shape_of(b) for b in order]
    common = max(set(shapes), key=shapes.count)
    batches = [b for b in order if shape_of(b) == common]
    need = args.rounds * args.round_steps
    batches = (batches * -(-need // len(batches)))[:need]
    first_batch = batches[0]
    print(f"{task.describe()}; batch {task.batch_size}, hidden {task.hidden}, embedding {task.embedding_size}; "
          f"RigL 0.5 (sparse optimizer, non-update steps); batch shape {dict(zip(first_batch, common))}; "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)", flush=True)

    runs = []
    for n in counts:
        for mesh in SCALING_MESHES:
            partitioner = Partitioner(_scaling_partitioning(mesh, n))
            params, masks, params_sh = place(partitioner, task, params0, masks0)
            tx = sp.sparse_optimizer(task.optimizer(steps_per_epoch, total), algorithm, masks, total)
            state, state_sh = placed_state(partitioner, params, params_sh, tx, seed=0)
            run_step = train_step(task, tx, None, 1, state_sh, partitioner)
            started = time.perf_counter()  # the first step compiles the (non-update) programs
            state, loss = run_step(state, first_batch, False)
            jax.block_until_ready(state)  # the whole step, not just the loss
            compile_s = time.perf_counter() - started
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
            state, run_step = run["state"], run["run_step"]
            start = time.perf_counter()
            for batch in round_batches:
                state, loss = run_step(state, batch, False)
            jax.block_until_ready(state)
            run["rates"].append(len(round_batches) / (time.perf_counter() - start))
            run["state"] = state
            run["last_loss"] = float(loss)
    for run in runs:
        del run["state"], run["run_step"]
        run["steps_per_s"] = statistics.median(run["rates"])
    return runs


def bench_scaling(args: argparse.Namespace) -> None:
    import json
    import subprocess

    counts = sorted({int(c) for c in args.devices.split(",")})
    if args._child is not None:  # a subprocess with --_child fake CPU devices: one JSON line for the parent
        assert jax.device_count() == args._child, (jax.device_count(), args._child)
        rows = _scaling_run(args, [args._child])
        print("SCALING_JSON " + json.dumps(rows), flush=True)
        return
    backend = jax.default_backend()
    rows = []
    if backend != "cpu":  # real devices: one process, the first n devices for each n
        available = jax.device_count()
        counts = [n for n in counts if n <= available]
        print(f"{available} {backend} device(s): device counts {counts}", flush=True)
        rows = _scaling_run(args, counts)
    else:  # fake CPU devices: the count is fixed when jax starts, so one subprocess per count
        print(f"CPU backend: each device count runs in its own process with "
              f"XLA_FLAGS=--xla_force_host_platform_device_count=N on {os.cpu_count()} CPU core(s)", flush=True)
        child_args = ["--data_dir", args.data_dir, "--hidden", str(args.hidden), "--embedding_size",
                      str(args.embedding_size), "--batch_size", str(args.batch_size), "--rounds", str(args.rounds),
                      "--round_steps", str(args.round_steps), "--update_frequency", str(args.update_frequency),
                      "--epochs", str(args.epochs)]
        for n in counts:
            env = dict(os.environ, JAX_PLATFORMS="cpu")
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "scaling", "--_child", str(n),
                                   *child_args], env=env, stdout=subprocess.PIPE, text=True)
            out = proc.stdout.splitlines()
            for line in out:
                if not line.startswith("SCALING_JSON "):
                    print(f"  [{n}] {line}", flush=True)
            found = [line for line in out if line.startswith("SCALING_JSON ")]
            if proc.returncode or not found:
                raise SystemExit(f"scaling child with {n} device(s) failed (exit status {proc.returncode})")
            rows += json.loads(found[-1][len("SCALING_JSON "):])

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
    models = sub.add_parser("models", help="RoBERTa-base encoder fwd+bwd step: fp32/bf16, with/without remat")
    commonsense = sub.add_parser("commonsense", help="RoBERTa-base multiple-choice sparse fine-tuning step")
    for p, rounds, steps in ((models, 5, 1), (commonsense, 5, 2)):
        p.add_argument("--batch", type=int, default=8, help="sequences per batch")
        p.add_argument("--length", type=int, default=128, help="tokens per sequence (<= 512)")
        p.add_argument("--layers", type=int, default=12, help="encoder layers (fewer for quick checks)")
        p.add_argument("--rounds", type=int, default=rounds, help="timed rounds (median reported)")
        p.add_argument("--round_steps", type=int, default=steps, help="steps per configuration and round")
    models.add_argument("--configs", default=",".join(MODEL_CONFIGS), help="comma-separated: "
                        + ", ".join(MODEL_CONFIGS))
    commonsense.add_argument("--choices", type=int, default=4, help="choices per question (batch/choices questions)")
    commonsense.add_argument("--configs", default="dense,static,rigl", help="comma-separated: dense, static, rigl")
    commonsense.add_argument("--update_frequency", type=int, default=500, help="RigL's UPDATE_FREQUENCY")
    scaling = sub.add_parser("scaling", help="the sharded GTS train step (RigL 0.5) on 1, 2, 4, 8 devices, "
                             "data-parallel and fsdp meshes (fake CPU devices: a sanity check, not a speed figure)")
    scaling.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
    scaling.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    scaling.add_argument("--round_steps", type=int, default=8, help="train steps per configuration and round")
    scaling.add_argument("--data_dir", default=str(DEFAULT_DATA), help="the arithmetic data folder")
    scaling.add_argument("--hidden", type=int, default=128, help="GTS hidden size (SPEC: 512)")
    scaling.add_argument("--embedding_size", type=int, default=128, help="GTS embedding size (SPEC: 768)")
    scaling.add_argument("--batch_size", type=int, default=8, help="problems per batch (split over the mesh)")
    scaling.add_argument("--update_frequency", type=int, default=1000, help="RigL's UPDATE_FREQUENCY")
    scaling.add_argument("--epochs", type=int, default=50, help="run length the schedules are built for")
    scaling.add_argument("--_child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bench in ("models", "commonsense") and not (
            args.batch >= 1 and 1 <= args.length <= 512 and args.layers >= 1
            and getattr(args, "update_frequency", 1) >= 1 and getattr(args, "choices", 1) >= 1):
        parser.error("--batch, --layers, --choices and --update_frequency must be >= 1 and --length in [1, 512]")
    if args.rounds < 1 or getattr(args, "scale", 1.0) <= 0 or getattr(args, "round_steps", 1) < 1:
        parser.error("--rounds and --round_steps must be >= 1 and --scale > 0")
    if args.bench == "sparsity":
        bench_sparsity(args.rounds, args.scale)
    elif args.bench == "gts":
        bench_gts(args)
    elif args.bench == "models":
        bench_models(args)
    elif args.bench == "commonsense":
        bench_commonsense(args)
    elif args.bench == "scaling":
        if not (args.hidden >= 1 and args.embedding_size >= 1 and args.batch_size >= 1 and args.update_frequency >= 1
                and all(c.strip().isdigit() and int(c) >= 1 for c in args.devices.split(","))):
            parser.error("--hidden, --embedding_size, --batch_size, --update_frequency and --devices must be >= 1")
        bench_scaling(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
