"""Run by test_multidevice.py in a subprocess with 8 fake CPU devices: short runs under RigL and GMP on one
device, on a data-parallel mesh (data=8) and on an fsdp mesh (fsdp=8) give the same losses, masks and
sparsity; the fsdp mask-update program gathers no whole parameter. Prints one JSON object.

``multidevice_check.py DATA_DIR [mlp|gts]``: ``mlp`` (the default suite) is a small embedding + MLP task that
compiles in seconds; ``gts`` is GTS on 64 MAWPS problems (the slow suite)."""

import json
import re
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from fake_tasks import MLPTask  # noqa: E402  (tests/ is this script's directory)

import smc_jax.sparsity as sp
from smc_jax.tasks.arithmetic.task import ArithmeticTask
from smc_jax.train.checkpoints import RunCheckpoints
from smc_jax.train.optim import Optimizer, StepLR
from smc_jax.train.partitioning import Partitioner, Partitioning
from smc_jax.train.steps import place, placed_state, train_step
from smc_jax.train.trainer import MaskRules, TrainConfig, fit

GTS_OPTIMIZER = Optimizer(kind="adam_l2", learning_rate=1e-3, weight_decay=1e-5, schedule=StepLR(20, 0.5),
                          groups={"embedding": {"learning_rate": 8e-6}})
MLP_OPTIMIZER = Optimizer(kind="adam", learning_rate=1e-2)

MESHES = {"one": Partitioning(data=1), "data8": Partitioning(data=8), "fsdp8": Partitioning(data=1, fsdp=8)}


def run(task, algorithm, partitioning, workdir, optimizer):
    params = task.init_params(jax.random.key(0))
    masks = algorithm.init_masks(params, MaskRules().masks(params, algorithm.name), key=jax.random.key(1))
    summary = fit(task, algorithm, workdir, seed=0, num_epochs=1, params=sp.apply_masks(params, masks), masks=masks,
                  optimizer=optimizer, config=TrainConfig(progress="off", log_every=1), partitioning=partitioning)
    losses = [e["loss"] for e in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
              if e["event"] == "train"]
    best, _ = RunCheckpoints(workdir / "checkpoints").restore_best({"params": params, "masks": masks})
    return summary, losses, jax.tree.map(np.asarray, best["masks"])


def gathers_whole_param(task, algorithm, partitioning, optimizer) -> tuple[bool, int]:
    """Compile the fsdp train step's mask-update program; any all-gather whose result has a parameter's full
    shape? Also returns how many all-gathers the gradient program has (fsdp needs some there)."""
    partitioner = Partitioner(partitioning)
    params = task.init_params(jax.random.key(0))
    masks = algorithm.init_masks(params, MaskRules().masks(params, algorithm.name), key=jax.random.key(1))
    params, masks, params_sh = place(partitioner, task, params, masks)
    tx = sp.sparse_optimizer(optimizer.build(task.param_groups, task.steps_per_epoch, 8), algorithm, masks, 8)
    state, state_sh = placed_state(partitioner, params, params_sh, tx, 0)
    step = train_step(task, tx, True, 1, state_sh, partitioner)
    batch = partitioner.put_batch(task.epoch_batches(0, 0)[0])
    gradient_fn, update_fns = step.programs(batch)
    grads = jax.tree.map(lambda p: p * 0, state["params"])
    update_hlo = update_fns[True].lower(state, grads).compile().as_text()
    grad_hlo = gradient_fn.lower(state["params"], state["rng"], state["step"], batch).compile().as_text()
    full_shapes = {tuple(np.shape(x)) for x in jax.tree.leaves(params) if np.ndim(x) >= 2}
    gathered = set()
    for line in update_hlo.splitlines():
        if "all-gather" in line:
            m = re.search(r"=\s*\w+\[([\d,]*)\]", line)
            if m:
                gathered.add(tuple(int(d) for d in m.group(1).split(",") if d))
    # every parameter sharded 8 ways on some axis? (else "no gather" would say nothing)
    sharded = all(any(a is not None for a in s.spec)
                  for s, x in zip(jax.tree.leaves(params_sh), jax.tree.leaves(params))
                  if np.ndim(x) >= 2)
    return bool(gathered & full_shapes), grad_hlo.count("all-gather"), sharded


def main():
    data_dir, model = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "mlp")
    assert jax.device_count() == 8, jax.device_count()
    if model == "gts":
        task = ArithmeticTask(data_dir=data_dir, max_train_examples=64, max_eval_examples=16, batch_size=8, hidden=32,
                              embedding_size=32, input_buckets=(96,), target_buckets=(16,), eval_batch_size=16)
        optimizer = GTS_OPTIMIZER
    else:
        task, optimizer = MLPTask(), MLP_OPTIMIZER
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in (sp.RigL(sparsity=0.5, update_frequency=2), sp.GMP(sparsity=0.5, update_frequency=2)):
            results = {name: run(task, algorithm, part, Path(tmp) / f"{algorithm.name}_{name}", optimizer)
                       for name, part in MESHES.items()}
            (s1, l1, m1) = results["one"]
            for name in ("data8", "fsdp8"):
                s, losses, masks = results[name]
                out[f"{algorithm.name}/{name}"] = {
                    "loss_diff": float(np.max(np.abs(np.asarray(losses) - np.asarray(l1)))),
                    "num_losses": len(losses),
                    "masks_equal": all(np.array_equal(a, b)
                                       for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(masks))),
                    "sparsity": [s["actual_sparsity"], s1["actual_sparsity"]],
                    "per_leaf_equal": s["per_leaf_sparsity"] == s1["per_leaf_sparsity"],
                    "accuracy": [s["reported"], s1["reported"]],
                }
            out[f"{algorithm.name}/masks_moved"] = not all(
                np.array_equal(a, b) for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(
                    algorithm.init_masks(task.init_params(jax.random.key(0)), MaskRules().masks(
                        task.init_params(jax.random.key(0)), algorithm.name), key=jax.random.key(1)))))
        gathered, grad_gathers, sharded = gathers_whole_param(task, sp.RigL(sparsity=0.5, update_frequency=2),
                                                              MESHES["fsdp8"], optimizer)
        out["fsdp_update_gathers_a_whole_param"] = gathered
        out["fsdp_gradient_all_gathers"] = grad_gathers
        out["fsdp_every_kernel_sharded"] = sharded
    print(json.dumps(out))


if __name__ == "__main__":
    main()
