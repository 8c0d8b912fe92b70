"""Benchmarks (not tests): ``python scripts/bench.py sparsity|gts|graph2tree|models|commonsense|scaling|esm|mbart``.

``gts``: GTS(S) on MAWPS fold 0 at SPEC §1.2's settings (batch 4, hidden 512, beam 5, max length 45): the
training throughput of the real train step (the engine's jitted, donated step with the sparse optimizer over
the MAWPS recipe's optimizer, ``gin/tasks/mawps.gin``) in problems/s, and the beam-search evaluation of the
whole dev split in problems/s, for dense, static sparse 0.5 (Random (Before)) and RigL 0.5 (its mask-update
step timed on its own and added at its real frequency). Every distinct batch shape is compiled first; compile
time is reported separately; figures are medians of ``--rounds`` rounds (a round: ``--round_steps``
consecutive batches of the epoch order, run for every configuration in turn, so machine drift hits them
alike); a timing waits for the whole step.

``graph2tree``: dense GTS(S) against Graph2Tree(S) at GTS's sizes and at its own, training epoch and beam-5
evaluation (:mod:`smc_jax.cli.bench_gts`).

``sparsity``: on a BERT-base-shaped parameter tree (~110M weights, random values; 2-D leaves prunable),
times one global-magnitude prune (random and position tie-breaking), one SNIP prune whose threshold falls among
zero scores (90 % of the word-embedding rows without gradient), one RigL update (also with those zero-gradient
ties), and one jitted, donated step of update + apply of
``sparse_optimizer(adamw)`` on a non-update step against plain ``adamw`` (median of interleaved rounds;
compile time reported separately).

``esm``: an ESM-2 encoder at esm2_t6_8M's shapes against HF PyTorch ``EsmModel`` (:mod:`smc_jax.cli.bench_esm`).

``mbart``: an mBART's label-smoothed training step and beam-5 generation against HF PyTorch, and the memory plan
of mbart-large-cc25 (:mod:`smc_jax.cli.bench_mbart`).

``models``: the base encoder ``RobertaModel`` at RoBERTa-base shapes (random weights) on a batch of
``--batch`` x ``--length`` tokens (some padding): one jitted ``value_and_grad`` step (forward + backward,
dropout on, loss mean(hidden**2)) for fp32, bf16 compute (fp32 params), each with and without per-layer
remat; step time (median of interleaved rounds), tokens/s, compile time, and memory: the compiled
executable's ``memory_analysis()`` (temp + argument + output - aliased bytes), on GPU also the device's
``peak_bytes_in_use``.

``commonsense``: ``RobertaForMultipleChoice`` (fairseq's ranking head) at RoBERTa-base shapes, ``--batch``
sequences of ``--length`` tokens shaped as ``batch/choices`` questions x ``--choices`` (4) choices, softmax
cross-entropy over the choices, ``sparse_optimizer`` over the CSQA recipe's optimizer (``gin/tasks/csqa.gin``:
adamw 1e-5, b2 0.98, eps 1e-6, wd 0.01, PolynomialDecay, for a run of 10 x ``--update_frequency`` updates),
the engine's train step (``steps.train_step``), for dense, static 0.5 (Random (Before)) and RigL 0.5 (fairseq
order): the non-update step, RigL's mask-update step timed on its own and averaged in at
``--update_frequency`` (500), the ratios to dense, and the evaluation throughput of a jitted deterministic
forward (argmax over the choices).

``scaling``: the engine's sharded train step (``steps.train_step`` with the state laid out as ``trainer.fit``
lays it out) for GTS on MAWPS fold 0 (batch 8, ``--hidden`` 128 by default, 512 is SPEC's size) under RigL 0.5
with the sparse optimizer, on 1, 2, 4 and 8 devices (``--devices``), each on a data-parallel mesh
(``Partitioning(data=N)``) and an fsdp mesh (``Partitioning(data=1, fsdp=N)``): steps/s of non-update steps
(median of interleaved rounds, one batch shape), compile time (the first step), the first-step loss (the
same state, batch and dropout key everywhere: it must agree across device counts; the max difference is
printed) and how the params and the batch are split. On GPU/TPU the first N real devices are used; on CPU
each count runs in a subprocess (``python -m smc_jax.cli.bench``) with N fake devices
(``--xla_force_host_platform_device_count``), which share the machine's cores: a check that the sharded step
runs, not a speed figure.

``--data_dir`` (gts, scaling): the arithmetic data folder; by default ``$SMC_DATA_DIR/arithmetic``, else the
data shipped in the package.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

import smc_jax.sparsity as sp
from smc_jax.cli.bench_common import CONFIGS, block, machine, timed
from smc_jax.cli.bench_esm import add_esm_parser, bench_esm
from smc_jax.cli.bench_mbart import add_mbart_parser, bench_mbart
from smc_jax.cli.bench_gts import add_graph2tree_parser, bench_graph2tree, bench_gts, bench_scaling
from smc_jax.cli.bench_roberta import MODEL_CONFIGS, bench_commonsense, bench_models


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


def bench_sparsity(rounds: int, scale: float) -> None:
    params = random_tree(bert_base_shapes(scale), 0)
    grads = random_tree(bert_base_shapes(scale), 1)
    masks = sp.prunable_masks(params)
    n_total = sum(x.size for x in jax.tree.leaves(params))
    print(f"BERT-base-shaped tree: {n_total / 1e6:.1f}M weights, {sp.num_prunable(masks) / 1e6:.1f}M prunable, "
          f"{machine(cpus=False)}")

    def compile_timed(fn, *args, donate=()):
        start = time.perf_counter()
        compiled = jax.jit(fn, donate_argnums=donate).lower(*args).compile()
        return compiled, time.perf_counter() - start

    prune, prune_compile = compile_timed(lambda p, m: sp.global_magnitude_masks(p, m, 0.9), params, masks)
    print(f"global prune HLO contains a sort: {'sort(' in prune.as_text()}")
    sparse_masks = block(prune(params, masks))
    # SNIP's case for the tie pass: 90 % of the word-embedding rows absent from the batch score 0, so
    # ~19 % of the scores tie at 0 and the threshold at sparsity 0.1 falls among them.
    vocab = grads["embeddings"]["word_embeddings"]["embedding"].shape[0]
    unseen = jax.random.uniform(jax.random.key(2), (vocab, 1)) < 0.9
    snip_grads = jax.tree.map(lambda g: g, grads)
    snip_grads["embeddings"]["word_embeddings"]["embedding"] = jnp.where(
        unseen, 0.0, grads["embeddings"]["word_embeddings"]["embedding"])
    operations = {
        "global magnitude prune": (lambda p, m: sp.global_magnitude_masks(p, m, 0.9), (params, masks)),
        "global magnitude prune, position ties": (
            lambda p, m: sp.global_magnitude_masks(p, m, 0.9, tie_break="position"), (params, masks)),
        "SNIP prune 0.1, zero-score ties": (lambda p, g, m: sp.snip_masks(p, g, m, 0.1),
                                            (params, snip_grads, masks)),
        "RigL update": (lambda p, g, m, f: sp.rigl_update(p, g, m, f),
                        (params, grads, sparse_masks, jnp.float32(0.3))),
        "RigL update, zero-gradient ties": (lambda p, g, m, f: sp.rigl_update(p, g, m, f),
                                            (params, snip_grads, sparse_masks, jnp.float32(0.3))),
    }
    compiled, compile_s = {}, {}
    for name, (fn, args) in operations.items():
        compiled[name], compile_s[name] = compile_timed(fn, *args)
    snip_masks = block(compiled["SNIP prune 0.1, zero-score ties"](params, snip_grads, masks))
    zero = sum(int((s == 0).sum()) for _, s in sp.mask_items(sp.snip_scores(params, snip_grads, masks)))
    kept = sum(int(m.sum()) for _, m in sp.mask_items(snip_masks))
    print(f"SNIP 0.1 keeps {kept} = int(N*0.9) = {int(sp.num_prunable(masks) * 0.9)}; {zero} scores are 0")
    times = {name: [] for name in operations}
    for _ in range(rounds):
        for name, (_, args) in operations.items():
            times[name].append(timed(compiled[name], *args))

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
        states[name] = block(steps[name](*states[name], grads))
        times[name + " step"] = []
    for _ in range(rounds):
        for name in optimizers:
            start = time.perf_counter()
            states[name] = block(steps[name](*states[name], grads))
            times[name + " step"].append(time.perf_counter() - start)

    print(f"\n{'operation':42s} {'median s':>10s} {'min s':>8s} {'compile s':>10s}")
    for name, values in times.items():
        print(f"{name:42s} {statistics.median(values):10.3f} {min(values):8.3f} {compile_s[name]:10.2f}")
    base = statistics.median(times["adamw step"])
    for name in list(optimizers)[1:]:
        ratio = statistics.median(times[name + " step"]) / base
        print(f"non-update step, {name} / plain adamw: {ratio:.3f}x  (median of {rounds} interleaved rounds)")


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per benchmark."""
    top = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="bench", required=True)
    data_help = "the arithmetic data folder (default: $SMC_DATA_DIR/arithmetic, else the packaged data)"
    sparsity = sub.add_parser("sparsity", help="mask operations and the sparse optimizer step on a BERT-base tree")
    sparsity.add_argument("--rounds", type=int, default=7, help="timed rounds per operation (median reported)")
    sparsity.add_argument("--scale", type=float, default=1.0, help="shrink the hidden sizes (smoke runs)")
    gts = sub.add_parser("gts", help="GTS training and beam-search evaluation throughput on MAWPS fold 0")
    gts.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    gts.add_argument("--round_steps", type=int, default=128, help="train steps per round")
    gts.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: dense, static, rigl")
    gts.add_argument("--data_dir", default=None, help=data_help)
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
    commonsense.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated: dense, static, rigl")
    commonsense.add_argument("--update_frequency", type=int, default=500, help="RigL's UPDATE_FREQUENCY")
    scaling = sub.add_parser("scaling", help="the sharded GTS train step (RigL 0.5) on 1, 2, 4, 8 devices, "
                             "data-parallel and fsdp meshes (fake CPU devices: a sanity check, not a speed figure)")
    scaling.add_argument("--devices", default="1,2,4,8", help="comma-separated device counts")
    scaling.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported)")
    scaling.add_argument("--round_steps", type=int, default=8, help="train steps per configuration and round")
    scaling.add_argument("--data_dir", default=None, help=data_help)
    scaling.add_argument("--hidden", type=int, default=128, help="GTS hidden size (SPEC: 512)")
    scaling.add_argument("--embedding_size", type=int, default=128, help="GTS embedding size (SPEC: 768)")
    scaling.add_argument("--batch_size", type=int, default=8, help="problems per batch (split over the mesh)")
    scaling.add_argument("--update_frequency", type=int, default=1000, help="RigL's UPDATE_FREQUENCY")
    scaling.add_argument("--epochs", type=int, default=50, help="run length the schedules are built for")
    scaling.add_argument("--_child", type=int, default=None, help=argparse.SUPPRESS)
    add_graph2tree_parser(sub)
    add_esm_parser(sub)
    add_mbart_parser(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one benchmark; returns the exit status (argparse exits 2 on bad flags)."""
    command = parser()
    args = command.parse_args(None if argv is None else list(argv))
    if args.bench in ("models", "commonsense") and not (
            args.batch >= 1 and 1 <= args.length <= 512 and args.layers >= 1
            and getattr(args, "update_frequency", 1) >= 1 and getattr(args, "choices", 1) >= 1):
        command.error("--batch, --layers, --choices and --update_frequency must be >= 1 and --length in [1, 512]")
    if args.rounds < 1 or getattr(args, "scale", 1.0) <= 0 or getattr(args, "round_steps", 1) < 1:
        command.error("--rounds and --round_steps must be >= 1 and --scale > 0")
    if args.bench == "sparsity":
        bench_sparsity(args.rounds, args.scale)
    elif args.bench == "gts":
        bench_gts(args)
    elif args.bench == "graph2tree":
        bench_graph2tree(args)
    elif args.bench == "models":
        bench_models(args)
    elif args.bench == "esm":
        bench_esm(args)
    elif args.bench == "mbart":
        bench_mbart(args)
    elif args.bench == "commonsense":
        bench_commonsense(args)
    elif args.bench == "scaling":
        if not (args.hidden >= 1 and args.embedding_size >= 1 and args.batch_size >= 1 and args.update_frequency >= 1
                and all(c.strip().isdigit() and int(c) >= 1 for c in args.devices.split(","))):
            command.error("--hidden, --embedding_size, --batch_size, --update_frequency and --devices must be >= 1")
        bench_scaling(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
