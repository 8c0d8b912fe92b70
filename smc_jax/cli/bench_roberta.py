"""The RoBERTa-base benchmarks (``bench.py models`` and ``bench.py commonsense``; described in
:mod:`smc_jax.cli.bench`), on random weights at RoBERTa-base shapes: the encoder's forward + backward step in
fp32/bf16 with and without remat, and the multiple-choice sparse fine-tuning step with the CSQA recipe's
optimizer (``gin/tasks/csqa.gin``)."""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import smc_jax.sparsity as sp
from smc_jax.cli.bench_common import block, compiled_run, machine, recipe, run_round, timed


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
    return block(jax.jit(_params_fn(module))(jax.random.key(0)))


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
          f"{machine()}", flush=True)

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
        block(compiled(params, ids, mask, jax.random.key(1)))  # warm-up
        mem, mem_parts = _memory_mib(compiled)
        runs[name] = {"step": compiled, "compile_s": compile_s, "mem": mem, "mem_parts": mem_parts, "times": [],
                      "device_peak": _device_peak_mib()}
        print(f"{name}: compiled in {compile_s:.1f} s; memory_analysis {mem_parts}", flush=True)

    for r in range(args.rounds):  # rounds interleave the configurations, so drift hits them alike
        for run in runs.values():
            start = time.perf_counter()
            for i in range(args.round_steps):  # independent steps: wait for each (loss and every gradient)
                block(run["step"](params, ids, mask, jax.random.key(100 * r + i)))
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

class _MultipleChoiceShim:
    """What ``steps.train_step`` needs of a task: ``loss(params, batch, key)`` (dropout on)."""

    def __init__(self, module):
        self.module = module

    def loss(self, params, batch, key):
        logits = self.module.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                   deterministic=False, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["labels"]).mean()


def bench_commonsense(args: argparse.Namespace) -> None:
    from smc_jax.models.bert import build

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
          f"{machine()}", flush=True)
    shim = _MultipleChoiceShim(module)
    predict = jax.jit(lambda p, ids, mask: jnp.argmax(module.apply({"params": p}, ids, mask, deterministic=True), -1))

    total = args.update_frequency * 10  # the run length the schedule and the sparse optimizer are built for
    csqa = recipe("tasks/csqa.gin").optimizer  # the shim has no parameter groups
    runs = {}
    for name in args.configs.split(","):  # build and compile every configuration first
        run = compiled_run(name, shim, csqa.build({}, None, total), params0, prunable, batch, args.update_frequency,
                           total, key=jax.random.key(1), fairseq_order=True)
        run["first"]["eval"] = timed(predict, run["state"]["params"], ids, mask)
        run["times"]["eval"] = []
        runs[name] = run
        print(f"{name}: first calls (compile + one run) "
              + ", ".join(f"{k} {v:.1f} s" for k, v in run["first"].items()), flush=True)

    for r in range(args.rounds):  # rounds interleave the configurations, so drift hits them alike
        for run in runs.values():
            times = run["times"]
            state, _, seconds = run_round(run["state"], run["run_step"], [batch] * args.round_steps)
            times["train"].append(seconds / args.round_steps)
            if "update" in times:
                state, _, seconds = run_round(state, run["run_step"], [batch], hint=True)
                times["update"].append(seconds)
            times["eval"].append(timed(predict, state["params"], ids, mask))
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
    print(f"step: the engine's jitted, donated train step (split gradient + update programs on CPU), "
          f"non-update (hint False); update step: RigL's mask-update step (hint True); avg step: "
          f"({f - 1}*step + update step)/{f} for RigL (UPDATE_FREQUENCY={f}); medians of {args.rounds} "
          f"interleaved rounds of {args.round_steps} step(s); eval: jitted deterministic forward + argmax "
          f"over choices (q = questions of {args.choices} choices; one program for every configuration, compiled "
          f"by the first); compile: first call minus the median")
    if "dense" in rows:
        for name, row in rows.items():
            if name != "dense":
                print(f"{name} / dense: {row['avg'] / rows['dense']['avg']:.3f} (average step; target <= 1.05)")
