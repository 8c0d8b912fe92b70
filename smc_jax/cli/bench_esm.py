"""The ESM benchmark (``bench.py esm``): the forward + backward step of an ESM-2 encoder at esm2_t6_8M's shapes
(6 layers, width 320, 20 heads, feed-forward 1280, rotary; random weights) against HF PyTorch ``EsmModel`` on
the CPU.

One step is a jitted ``value_and_grad`` of mean(last_hidden_state**2) over a batch of ``--batch`` x
``--length`` tokens (``<cls>`` residues ``<eos>``, real lengths in [3/4 length, length], the first row full,
the rest padding); the PyTorch step computes the same loss with the same weights (the HF model is saved
and read back through :func:`smc_jax.models.from_pretrained`) and calls ``loss.backward()`` with
``--torch_threads`` threads (SDPA attention). Figures: medians of ``--rounds`` interleaved rounds (a round
runs ``--round_steps`` steps of every configuration and of PyTorch in turn); JAX compile time and PyTorch's
first step are reported separately, then the PyTorch / JAX step-time ratio per configuration.

``--compare sparse`` times the protein task's sparse fine-tuning step instead: the engine's jitted train step
(:func:`smc_jax.train.steps.train_step`) of the same encoder with mean pooling and SMC-Bench's head (MSE on random
targets), the protein recipe's optimizer (AdamW, OneCycle, frozen head) and masking rule, read from
``gin/tasks/protein.gin``, for Dense and for RigL at sparsity 0.5 (non-update steps, the mask-update step, and
their average over ``--update_frequency`` steps); the RigL / Dense ratio of the average step (target <= 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smc_jax.cli.bench_common import block, machine

# name -> (compute dtype, remat)
ESM_CONFIGS = {"fp32": (jnp.float32, False), "fp32+remat": (jnp.float32, True),
               "bf16": (jnp.bfloat16, False), "bf16+remat": (jnp.bfloat16, True)}


def esm2_t6_config(layers: int = 6) -> dict:
    """esm2_t6_8M_UR50D's ``config.json`` fields (``layers`` shrinks it for quick checks)."""
    return dict(model_type="esm", vocab_size=33, hidden_size=320, num_hidden_layers=layers, num_attention_heads=20,
                intermediate_size=1280, max_position_embeddings=1026, position_embedding_type="rotary",
                emb_layer_norm_before=False, token_dropout=True, layer_norm_eps=1e-5, pad_token_id=1,
                mask_token_id=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def protein_batch(batch: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask ``[batch, length]``: ``<cls>`` (0), residues (ids 4-23), ``<eos>`` (2), pads
    (1); real lengths drawn from [3/4 length, length], the first row full."""
    rng = np.random.default_rng(seed)
    real = rng.integers(max(3, 3 * length // 4), length + 1, size=batch)
    real[0] = length
    ids = rng.integers(4, 24, size=(batch, length))
    ids[:, 0] = 0
    ids[np.arange(batch), real - 1] = 2
    mask = np.arange(length)[None, :] < real[:, None]
    return np.where(mask, ids, 1).astype(np.int32), mask.astype(np.int32)


def _torch_model(config: dict, threads: int, directory: str):
    """A random HF ``EsmModel`` (no pooler) in training mode, saved to ``directory``."""
    import torch
    import transformers as tr

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fields = {k: v for k, v in config.items() if k != "model_type"}
    model = tr.EsmModel(tr.EsmConfig(**fields), add_pooling_layer=False)
    model.save_pretrained(directory)
    return model.train()


def _torch_step(model, ids: np.ndarray, mask: np.ndarray):
    """``step() -> loss``: zero the gradients, forward, mean(hidden**2), backward."""
    import torch

    ids, mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def step():
        model.zero_grad(set_to_none=True)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        loss = hidden.float().square().mean()
        loss.backward()
        return loss.detach()

    return step


def bench_esm(args: argparse.Namespace) -> None:
    if args.compare == "sparse":
        return bench_esm_sparse(args)
    from smc_jax.models import from_pretrained

    names = args.configs.split(",")
    unknown = [n for n in names if n not in ESM_CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}: use {', '.join(ESM_CONFIGS)}")
    if min(args.batch, args.length - 2, args.layers, args.rounds, args.round_steps, args.torch_threads) < 1:
        raise SystemExit("--batch, --layers, --rounds, --round_steps, --torch_threads must be >= 1, --length >= 3")
    config = esm2_t6_config(args.layers)
    ids_np, mask_np = protein_batch(args.batch, args.length)
    ids, mask = jnp.asarray(ids_np), jnp.asarray(mask_np)
    with tempfile.TemporaryDirectory() as directory:
        model = _torch_model(config, args.torch_threads, directory)
        modules = {}
        for name in names:
            dtype, remat = ESM_CONFIGS[name]
            modules[name], params = from_pretrained(directory, dtype=dtype, remat=remat)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"EsmModel, esm2_t6_8M shapes with {args.layers} layers ({n_params / 1e6:.1f}M params, random), batch "
          f"{args.batch} x length {args.length} ({int(mask_np.sum())} real tokens); JAX on {machine()}; "
          f"PyTorch on the CPU with {args.torch_threads} thread(s)", flush=True)

    runs = {}
    for name, module in modules.items():  # compile every configuration first
        def loss(p, ids, mask, module=module):
            hidden = module.apply({"params": p}, ids, mask, deterministic=False).last_hidden_state
            return jnp.mean(jnp.square(hidden.astype(jnp.float32)))

        start = time.perf_counter()
        compiled = jax.jit(jax.value_and_grad(loss)).lower(params, ids, mask).compile()
        compile_s = time.perf_counter() - start
        value, _ = block(compiled(params, ids, mask))
        runs[name] = {"step": lambda c=compiled: c(params, ids, mask), "times": [], "first": compile_s,
                      "loss": float(value)}
        print(f"{name}: compiled in {compile_s:.1f} s, loss {float(value):.6f}", flush=True)
    torch_step = _torch_step(model, ids_np, mask_np)
    start = time.perf_counter()
    torch_loss = float(torch_step())
    runs["pytorch"] = {"step": torch_step, "times": [], "first": time.perf_counter() - start, "loss": torch_loss}
    print(f"pytorch: first step {runs['pytorch']['first']:.1f} s, loss {torch_loss:.6f}", flush=True)

    for r in range(args.rounds):  # rounds interleave the configurations, so drift hits them alike
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(args.round_steps):
                out = run["step"]()
                if name != "pytorch":
                    block(out)
            run["times"].append((time.perf_counter() - start) / args.round_steps)
        print(f"round {r + 1}: " + ", ".join(f"{n} {v['times'][-1] * 1e3:.0f} ms" for n, v in runs.items()),
              flush=True)

    tokens = args.batch * args.length
    print(f"\n{'config':11s} {'step ms':>9s} {'min ms':>8s} {'tokens/s':>9s} {'compile/first s':>16s} {'loss':>11s}")
    for name, run in runs.items():
        step_s = statistics.median(run["times"])
        print(f"{name:11s} {step_s * 1e3:9.0f} {min(run['times']) * 1e3:8.0f} {tokens / step_s:9.0f} "
              f"{run['first']:16.1f} {run['loss']:11.6f}")
    print(f"step: forward + backward of mean(last_hidden_state**2), median of {args.rounds} interleaved rounds of "
          f"{args.round_steps} step(s); compile/first: JAX lower + compile, PyTorch's first step; tokens/s counts "
          f"all {args.batch}x{args.length} positions (padding included)")
    base = statistics.median(runs["pytorch"]["times"])
    for name in modules:
        print(f"pytorch / {name} step time: {base / statistics.median(runs[name]['times']):.2f} "
              f"(> 1: JAX faster)")


class _ProteinShim:
    """What ``steps.train_step`` and the optimizer need of a task: ``loss(params, batch, key)`` (the protein task's
    forward: encoder, mean pooling over ids >= 2, head; MSE) and ``param_groups``."""

    def __init__(self, encoder, head):
        from smc_jax.tasks.protein.head import HEAD_PATTERN

        self.encoder, self.head, self.param_groups = encoder, head, {"head": HEAD_PATTERN}

    def loss(self, params, batch, key):
        from smc_jax.tasks.protein.head import mean_pool

        hidden = self.encoder.apply({"params": params["esm"]}, batch["input_ids"], batch["attention_mask"],
                                    deterministic=False, rngs={"dropout": key}).last_hidden_state
        pooled = mean_pool(hidden, batch["input_ids"], batch["attention_mask"])
        out = self.head.apply({"params": params["head"]}, pooled)[:, 0]
        return jnp.mean(jnp.square(out - batch["targets"]))


def bench_esm_sparse(args: argparse.Namespace) -> None:
    """Dense vs RigL 0.5 train steps of the protein task at esm2_t6_8M's shapes (see the module docstring)."""
    import flax.linen as nn

    import smc_jax.sparsity as sp
    from smc_jax.cli.bench_common import compiled_run, recipe, run_round
    from smc_jax.models import esm
    from smc_jax.tasks.protein.head import Encoder, PropertyHead, encoder_params

    if min(args.batch, args.length - 2, args.layers, args.rounds, args.round_steps, args.update_frequency) < 1:
        raise SystemExit("--batch, --layers, --rounds, --round_steps, --update_frequency must be >= 1, --length >= 3")
    config = esm.EsmConfig.from_hf(esm2_t6_config(args.layers))
    encoder = esm.EsmModel(config)
    head = PropertyHead(512, 1)
    head_params = jax.jit(head.init)(jax.random.key(1), jnp.zeros((1, config.hidden_size)))["params"]
    params0 = {"esm": encoder_params(Encoder(encoder, None, {}, "esm"), jax.random.key(0)),
               "head": nn.meta.unbox(head_params)}
    ids, mask = protein_batch(args.batch, args.length)
    targets = np.random.default_rng(1).normal(size=args.batch).astype(np.float32)
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask), "targets": jnp.asarray(targets)}
    exp = recipe("tasks/protein.gin")
    shim = _ProteinShim(encoder, head)
    prunable = exp.mask_rules.masks(params0, "rigl")
    n_params = sum(x.size for x in jax.tree.leaves(params0))
    print(f"protein task step, esm2_t6_8M shapes with {args.layers} layers ({n_params / 1e6:.1f}M params, "
          f"{sp.num_prunable(prunable) / 1e6:.1f}M prunable), batch {args.batch} x length {args.length}; "
          f"protein recipe optimizer and masking rule; {machine()}", flush=True)
    total = args.update_frequency * 10  # the run length the schedule and the sparse optimizer are built for
    runs = {}
    for name in ("dense", "rigl"):  # build and compile every configuration first
        runs[name] = compiled_run(name, shim, exp.optimizer.build(shim.param_groups, 1, total), params0, prunable,
                                  batch, args.update_frequency, total, key=jax.random.key(2))
        print(f"{name}: first calls (compile + one run) "
              + ", ".join(f"{k} {v:.1f} s" for k, v in runs[name]["first"].items()), flush=True)
    for r in range(args.rounds):  # rounds interleave the configurations, so drift hits them alike
        for run in runs.values():
            state, _, seconds = run_round(run["state"], run["run_step"], [batch] * args.round_steps)
            run["times"]["train"].append(seconds / args.round_steps)
            if "update" in run["times"]:
                state, _, seconds = run_round(state, run["run_step"], [batch], hint=True)
                run["times"]["update"].append(seconds)
            run["state"] = state
        print(f"round {r + 1}: " + ", ".join(f"{n} {v['times']['train'][-1] * 1e3:.0f} ms" for n, v in runs.items()),
              flush=True)
    f = args.update_frequency
    print(f"\n{'config':8s} {'step ms':>8s} {'update step ms':>15s} {'avg step ms':>12s}")
    averages = {}
    for name, run in runs.items():
        med = {k: statistics.median(v) for k, v in run["times"].items()}
        averages[name] = ((f - 1) * med["train"] + med["update"]) / f if "update" in med else med["train"]
        update = f"{med['update'] * 1e3:.0f}" if "update" in med else "-"
        print(f"{name:8s} {med['train'] * 1e3:8.0f} {update:>15s} {averages[name] * 1e3:12.0f}")
    print(f"step: the engine's jitted, donated train step, non-update (hint False); update step: RigL's mask update "
          f"(hint True); avg step: ({f - 1}*step + update step)/{f}; medians of {args.rounds} interleaved rounds of "
          f"{args.round_steps} step(s)")
    if "dense" in averages and "rigl" in averages:
        print(f"rigl / dense: {averages['rigl'] / averages['dense']:.3f} (average step; target <= 1.05)")


def add_esm_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``esm`` benchmark to ``subparsers`` (of ``argparse``); returns its parser."""
    p = subparsers.add_parser("esm", help="ESM-2 (t6_8M shapes) fwd+bwd step, JAX vs HF PyTorch on the CPU")
    p.add_argument("--batch", type=int, default=8, help="sequences per batch")
    p.add_argument("--length", type=int, default=256, help="tokens per sequence (cls + residues + eos)")
    p.add_argument("--layers", type=int, default=6, help="encoder layers (fewer for quick checks)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--round_steps", type=int, default=1, help="steps per configuration and round")
    p.add_argument("--configs", default="fp32", help="comma-separated JAX configurations: " + ", ".join(ESM_CONFIGS))
    p.add_argument("--torch_threads", type=int, default=2, help="torch.set_num_threads for the PyTorch step")
    p.add_argument("--compare", choices=("pytorch", "sparse"), default="pytorch",
                   help="pytorch: JAX vs HF PyTorch; sparse: the protein task's train step, Dense vs RigL 0.5")
    p.add_argument("--update_frequency", type=int, default=500, help="--compare sparse: RigL's UPDATE_FREQUENCY")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smc_jax.cli.bench_esm [flags]``: the benchmark on its own."""
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="bench", required=True)
    add_esm_parser(sub)
    bench_esm(top.parse_args(["esm", *(argv or [])]))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
