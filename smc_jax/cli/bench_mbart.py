"""The mBART benchmark (``bench.py mbart``): JAX against HF PyTorch ``MBartForConditionalGeneration`` on the CPU,
same random weights (the HF model is saved and read back through :func:`smc_jax.models.from_pretrained`), same
inputs, and the memory plan of mbart-large-cc25 (``--memory_plan``).

Training step: a jitted ``value_and_grad`` of fairseq's label-smoothed NLL (eps 0.2, per-token mean) with dropout
(``--dropout``, ``--attention_dropout``; the recipe's 0.3 / 0.1) against PyTorch's forward + ``backward()`` of the
same loss, on ``--batch`` HF-format pairs of ``--src_len`` / ``--tgt_len`` tokens (real lengths in [3/4, 1] of
them, the first row full). Before timing, both run once without dropout and their losses are printed.
Generation: beam 5 of a fixed output length (EOS banned before ``--gen_len`` - 1 and forced there, on both sides:
``min_len = max_len``, HF ``min_new_tokens = max_len``, ``max_new_tokens = max_len + 1``,
``forced_eos_token_id``), ``early_stopping=True``, length penalty 1, HF's pad and forced-EOS conventions on the
JAX side (``ban_pad=False, forced_eos='zero'``), for ``--gen_batches`` sentence counts; outputs compared token for
token. Figures: medians of ``--rounds`` interleaved rounds; JAX compile time and PyTorch's first call apart.

``--memory_plan``: the cc25 shapes (12+12 layers, width 1024, vocabulary 250027) lowered and compiled, never run:
the fp32 Adam training step on a 1024-token batch (8 x 128 + 8 x 128, params and Adam state donated) and beam-5
generation of 32 sentences (sources of 128, max_len 200), XLA's ``memory_analysis()`` of each.
``--fsdp N`` compiles the training step on an N-device mesh ``(data=1, fsdp=N)`` (CPU: N fake devices in a child
process) and reports per-device figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smc_jax.cli.bench_common import block, machine

EPSILON = 0.2
GiB = 2.0**30


def bench_config(layers: int, width: int, heads: int, ffn: int, vocab: int, dropout: float = 0.0,
                 attention_dropout: float = 0.0) -> dict:
    """An HF ``config.json`` dict of an mBART with cc25's fixed choices at the given sizes."""
    return dict(model_type="mbart", vocab_size=vocab, d_model=width, encoder_layers=layers, decoder_layers=layers,
                encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn,
                decoder_ffn_dim=ffn, max_position_embeddings=1024, scale_embedding=True, activation_function="gelu",
                dropout=dropout, attention_dropout=attention_dropout, activation_dropout=0.0, pad_token_id=1,
                bos_token_id=0, eos_token_id=2)


def translation_batch(rows: int, src_len: int, tgt_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-format (cc25) pairs: ``X </s> src_code``, labels ``Y </s> tgt_code``, decoder inputs
    ``tgt_code Y </s>``; right-padded, real lengths in [3/4, 1] of the width (the first row full)."""
    rng = np.random.default_rng(seed)
    n_spm = vocab - 27
    out = {}
    for name, width, code in (("input_ids", src_len, n_spm + 4), ("labels", tgt_len, n_spm + 8)):
        lengths = rng.integers(max(3, 3 * width // 4), width + 1, rows)
        lengths[0] = width
        ids = np.ones((rows, width), np.int32)
        for r, n in enumerate(lengths):
            ids[r, :n] = np.concatenate([rng.integers(4, n_spm + 1, n - 2), [2, code]])
        out[name] = ids
    labels = out["labels"]
    last = (labels != 1).sum(1) - 1
    out["decoder_input_ids"] = np.concatenate([labels[np.arange(rows), last][:, None], labels[:, :-1]], 1)
    out["attention_mask"] = (out["input_ids"] != 1).astype(np.int32)
    out["decoder_attention_mask"] = (labels != 1).astype(np.int32)
    return out


def _torch_loss(model, batch: dict, epsilon: float = EPSILON):
    """fairseq's label-smoothed NLL per target token, in PyTorch."""
    import torch

    t = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"],
                   decoder_input_ids=t["decoder_input_ids"], decoder_attention_mask=t["decoder_attention_mask"]).logits
    lp = torch.log_softmax(logits.float(), -1)
    nll = -lp.gather(-1, t["labels"][..., None])[..., 0]
    eps_i = epsilon / (lp.shape[-1] - 1)
    loss = (1 - epsilon - eps_i) * nll - eps_i * lp.sum(-1)
    keep = t["labels"] != 1
    return loss[keep].sum() / keep.sum()


def _jax_loss(module, batch: dict):
    from smc_jax.models.losses import label_smoothed_nll

    def loss(params, rng, deterministic: bool = False):
        out = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"],
                           batch["decoder_attention_mask"], deterministic=deterministic, rngs={"dropout": rng})
        sums = label_smoothed_nll(out.logits, batch["labels"], EPSILON)
        return sums.loss / sums.ntokens

    return loss


def _rounds(runs: dict, rounds: int) -> None:
    """Interleaved timing rounds; each run: ``{'call': fn, 'times': [], 'jax': bool}``."""
    for r in range(rounds):
        for run in runs.values():
            start = time.perf_counter()
            out = run["call"]()
            if run["jax"]:
                block(out)
            run["times"].append(time.perf_counter() - start)
        print(f"round {r + 1}: " + ", ".join(f"{n} {v['times'][-1] * 1e3:.0f} ms" for n, v in runs.items()),
              flush=True)


def bench_train(args, model, module, params) -> None:
    import torch

    batch_np = translation_batch(args.batch, args.src_len, args.tgt_len, args.vocab)
    batch = {k: jnp.asarray(v) for k, v in batch_np.items()}
    loss = _jax_loss(module, batch)
    model.eval()
    with torch.no_grad():
        torch_det = float(_torch_loss(model, batch_np))
    with jax.default_matmul_precision("highest"):
        jax_det = float(jax.jit(lambda p: loss(p, jax.random.key(0), True))(params))
    print(f"deterministic loss: jax {jax_det:.6f}, pytorch {torch_det:.6f} (|diff| {abs(jax_det - torch_det):.1e})")
    start = time.perf_counter()
    step = jax.jit(jax.value_and_grad(loss)).lower(params, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - start
    model.train()

    def torch_step():
        model.zero_grad(set_to_none=True)
        value = _torch_loss(model, batch_np)
        value.backward()
        return value.detach()

    start = time.perf_counter()
    torch_step()
    first = time.perf_counter() - start
    keys = iter(jax.random.split(jax.random.key(1), 10_000))
    runs = {"jax": {"call": lambda: step(params, next(keys)), "times": [], "jax": True},
            "pytorch": {"call": torch_step, "times": [], "jax": False}}
    block(runs["jax"]["call"]())
    _rounds(runs, args.rounds)
    jax_s, torch_s = (statistics.median(runs[n]["times"]) for n in ("jax", "pytorch"))
    tokens = int(batch_np["decoder_attention_mask"].sum())
    print(f"train step (fwd+bwd, label-smoothed NLL, dropout {args.dropout}/{args.attention_dropout}): jax "
          f"{jax_s * 1e3:.0f} ms (compile {compile_s:.1f} s), pytorch {torch_s * 1e3:.0f} ms (first {first:.1f} s); "
          f"jax / pytorch step time {jax_s / torch_s:.2f} (goal <= 1.0); {tokens / jax_s:.0f} target tokens/s")


def bench_generate(args, model, module, params) -> None:
    import torch

    from smc_jax.models.decoding import BeamSearchConfig, generate

    max_len = args.gen_len - 1
    config = BeamSearchConfig(beam_size=5, max_len=max_len, min_len=max_len, ban_pad=False, forced_eos="zero")
    model.eval()
    for rows in (int(n) for n in args.gen_batches.split(",")):
        src = translation_batch(rows, args.gen_src_len, 4, args.vocab, seed=rows)
        ids, mask, code = src["input_ids"], src["attention_mask"], args.vocab - 27 + 8
        starts = jnp.full((rows,), code, jnp.int32)
        start = time.perf_counter()
        compiled = generate.lower(module, params, jnp.asarray(ids), jnp.asarray(mask), starts, config=config).compile()
        compile_s = time.perf_counter() - start
        run_jax = lambda: compiled(params, jnp.asarray(ids), jnp.asarray(mask), starts)  # noqa: E731
        hf_kw = dict(num_beams=5, length_penalty=1.0, early_stopping=True, decoder_start_token_id=code,
                     min_new_tokens=max_len, max_new_tokens=max_len + 1, forced_eos_token_id=2, do_sample=False)

        def run_torch():
            with torch.no_grad():
                return model.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                                      attention_mask=torch.tensor(mask, dtype=torch.long), **hf_kw)

        start = time.perf_counter()
        theirs = run_torch().numpy()[:, 1:]
        first = time.perf_counter() - start
        ours = np.asarray(block(run_jax()).tokens)
        same = int(sum(np.array_equal(ours[r], theirs[r]) for r in range(rows)))
        runs = {"jax": {"call": run_jax, "times": [], "jax": True},
                "pytorch": {"call": run_torch, "times": [], "jax": False}}
        _rounds(runs, args.rounds)
        jax_s, torch_s = (statistics.median(runs[n]["times"]) for n in ("jax", "pytorch"))
        goal = 2.0 if rows == 1 else 1.2
        print(f"beam-5 generation of {rows} sentence(s) x {args.gen_len} tokens: jax {rows / jax_s:.2f} sentences/s "
              f"({jax_s * 1e3:.0f} ms, compile {compile_s:.1f} s), pytorch {rows / torch_s:.2f} sentences/s "
              f"({torch_s * 1e3:.0f} ms, first {first:.1f} s); speed-up {torch_s / jax_s:.2f} (goal >= {goal}); "
              f"identical outputs {same}/{rows}")


def bench_mbart(args: argparse.Namespace) -> None:
    """``bench.py mbart``: the training-step and generation comparisons, or ``--memory_plan``."""
    if args.memory_plan:
        memory_plan(args.fsdp)
        return
    import torch
    import transformers as tr

    from smc_jax.models import from_pretrained

    if min(args.batch, args.src_len - 2, args.tgt_len - 2, args.layers, args.gen_len - 1, args.torch_threads) < 1:
        raise SystemExit("--batch, --layers, --torch_threads must be >= 1; --src_len, --tgt_len >= 3; --gen_len >= 2")
    torch.set_num_threads(args.torch_threads)
    config = bench_config(args.layers, args.width, args.heads, args.ffn, args.vocab, args.dropout,
                          args.attention_dropout)
    torch.manual_seed(0)
    model = tr.MBartForConditionalGeneration(
        tr.MBartConfig(**{k: v for k, v in config.items() if k != "model_type"}, attn_implementation="sdpa"))
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        module, params = from_pretrained(directory)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"MBartForConditionalGeneration {args.layers}+{args.layers} layers, width {args.width}, {args.heads} heads, "
          f"ffn {args.ffn}, vocab {args.vocab} ({n_params / 1e6:.1f}M params, random); JAX on {machine()}; "
          f"PyTorch {torch.__version__} with {args.torch_threads} thread(s)", flush=True)
    if args.part in ("all", "train"):
        bench_train(args, model, module, params)
    if args.part in ("all", "generate"):
        bench_generate(args, model, module, params)


# -------------------------------------------------------------------------------------------- memory plan


def _analysis(compiled) -> dict[str, float]:
    m = compiled.memory_analysis()
    out = {k: getattr(m, f"{k}_size_in_bytes") / GiB for k in ("argument", "output", "alias", "temp")}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _plan_shapes(devices: int = 1) -> dict[str, dict[str, float]]:
    """Compile (never run) the cc25 training step and generation; per-device GiB figures."""
    import flax.linen as nn
    import optax

    from smc_jax.models.decoding import BeamSearchConfig, generate
    from smc_jax.models.hf import abstract_params
    from smc_jax.models.mbart import MBartConfig, MBartForConditionalGeneration

    module = MBartForConditionalGeneration(MBartConfig(dropout=0.3, attention_dropout=0.1))
    boxed = abstract_params(module)
    params = nn.meta.unbox(boxed)
    optimizer = optax.adam(3e-5, b1=0.9, b2=0.98, eps=1e-6)
    opt_state = jax.eval_shape(optimizer.init, params)
    ids = jax.ShapeDtypeStruct((8, 128), jnp.int32)

    def train_step(params, opt_state, batch, rng):
        value, grads = jax.value_and_grad(_jax_loss(module, batch))(params, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    batch = {k: ids for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels")}
    rng = jax.eval_shape(lambda: jax.random.key(0))
    out = {}
    if devices == 1:
        step = jax.jit(train_step, donate_argnums=(0, 1))
    else:
        from smc_jax.train.partitioning import Partitioner, Partitioning

        part = Partitioner(Partitioning(data=1, fsdp=devices))
        p_sh = part.param_shardings(params, nn.get_partition_spec(boxed))
        o_sh = part.like_params(opt_state, params, p_sh)
        b_sh = jax.tree.map(lambda _: part.batch_sharding(8), batch)
        step = jax.jit(train_step, donate_argnums=(0, 1), in_shardings=(p_sh, o_sh, b_sh, part.replicated),
                       out_shardings=(p_sh, o_sh, part.replicated))
    start = time.perf_counter()
    out["train"] = _analysis(step.lower(params, opt_state, batch, rng).compile())
    out["train"]["compile_s"] = time.perf_counter() - start
    if devices == 1:
        src = jax.ShapeDtypeStruct((32, 128), jnp.int32)
        rows = jax.ShapeDtypeStruct((32,), jnp.int32)
        prefix = jax.ShapeDtypeStruct((32, 1), jnp.int32)
        start = time.perf_counter()
        compiled = generate.lower(module, params, src, src, rows, prefix,
                                  config=BeamSearchConfig(beam_size=5, max_len=200)).compile()
        out["generate"] = _analysis(compiled)
        out["generate"]["compile_s"] = time.perf_counter() - start
    out["params"] = {"argument": sum(np.prod(x.shape) * 4 for x in jax.tree.leaves(params)) / GiB}
    return out


def memory_plan(fsdp: int = 0) -> dict:
    """Print (and return) the memory plan; ``fsdp`` > 1 adds the per-device training figures on that mesh."""
    plan = {"1": _plan_shapes(1)}
    if fsdp > 1:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={fsdp}", JAX_PLATFORMS="cpu")
        child = subprocess.run([sys.executable, "-m", "smc_jax.cli.bench_mbart", "--_plan_child", str(fsdp)],
                               env=env, capture_output=True, text=True, check=True)
        plan[str(fsdp)] = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"mbart-large-cc25 shapes, compiled on {machine()} (not run); GiB per device: peak = arguments + outputs "
          "- aliased + temporaries")
    print(f"{'program':34s} {'args':>7s} {'outputs':>8s} {'aliased':>8s} {'temp':>7s} {'peak':>7s} {'compile s':>10s}")
    for devices, figures in plan.items():
        for name, label in (("train", "fp32 Adam step, 1024 tokens"), ("generate", "beam-5, 32 sentences, len 200")):
            if name in figures:
                f = figures[name]
                print(f"{label + (f' (fsdp={devices})' if devices != '1' else ''):34s} {f['argument']:7.2f} "
                      f"{f['output']:8.2f} {f['alias']:8.2f} {f['temp']:7.2f} {f['peak']:7.2f} {f['compile_s']:10.0f}")
    print(f"fp32 params: {plan['1']['params']['argument']:.2f} GiB")
    return plan


def add_mbart_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``mbart`` benchmark to ``subparsers`` (of ``argparse``); returns its parser."""
    p = subparsers.add_parser("mbart", help="mBART training step and beam-5 generation, JAX vs HF PyTorch; "
                                            "--memory_plan: cc25 memory analysis")
    p.add_argument("--part", choices=("all", "train", "generate"), default="all")
    p.add_argument("--layers", type=int, default=6, help="encoder and decoder layers each")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--ffn", type=int, default=2048)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=8, help="training pairs per batch")
    p.add_argument("--src_len", type=int, default=128)
    p.add_argument("--tgt_len", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--attention_dropout", type=float, default=0.1)
    p.add_argument("--gen_batches", default="32,1", help="comma-separated sentence counts for generation")
    p.add_argument("--gen_src_len", type=int, default=32)
    p.add_argument("--gen_len", type=int, default=32, help="generated tokens per sentence, EOS included")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--torch_threads", type=int, default=2)
    p.add_argument("--memory_plan", action="store_true", help="compile the cc25 shapes and print the memory plan")
    p.add_argument("--fsdp", type=int, default=0, help="with --memory_plan: also the training step on N devices")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smc_jax.cli.bench_mbart [flags]``: the benchmark on its own."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_plan_child"]:  # the fsdp memory plan in a process with N fake devices
        print(json.dumps(_plan_shapes(int(argv[1]))))
        return 0
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_mbart_parser(top.add_subparsers(dest="bench", required=True))
    bench_mbart(top.parse_args(["mbart", *argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
