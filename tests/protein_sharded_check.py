"""Run by test_protein_sharded.py in a subprocess with 8 fake CPU devices: the protein task with a from-config ESM
(2 layers, width 64, rotary) trained 4 updates under RigL (mask updates every 2) with the protein recipe's
optimizer (AdamW, OneCycle per epoch, frozen head) and masking rule, on one device and on an fsdp mesh
(``Partitioning.fsdp=8``): the losses, masks and sparsity agree, and the fsdp mask-update program gathers no
whole parameter (multidevice_check.gathers_whole_param, as for GTS). Prints one JSON object.

``protein_sharded_check.py TAPE_DIR``."""

import json
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from multidevice_check import gathers_whole_param  # noqa: E402  (tests/ is this script's directory)

import smc_jax.sparsity as sp
from smc_jax.tasks.protein import ProteinTask, protein_head_group
from smc_jax.tasks.protein.head import EMB_HEADS
from smc_jax.train.checkpoints import RunCheckpoints
from smc_jax.train.optim import OneCycle, Optimizer
from smc_jax.train.partitioning import Partitioner, Partitioning
from smc_jax.train.trainer import MaskRules, TrainConfig, fit

MESHES = {"one": Partitioning(data=1), "fsdp8": Partitioning(data=1, fsdp=8)}
OPTIMIZER = Optimizer(kind="adamw", learning_rate=1e-3, weight_decay=0.01, schedule=OneCycle(),
                      groups={"head": protein_head_group(False)})
RULES = MaskRules(emb_heads=EMB_HEADS, no_pruning_emb_heads=True)


def run(task, algorithm, partitioning, workdir):
    params = task.init_params(jax.random.key(0))
    masks = algorithm.init_masks(params, RULES.masks(params, algorithm.name), key=jax.random.key(1))
    summary = fit(task, algorithm, workdir, seed=0, num_epochs=2, params=sp.apply_masks(params, masks), masks=masks,
                  optimizer=OPTIMIZER, config=TrainConfig(progress="off", log_every=1), partitioning=partitioning)
    losses = [e["loss"] for e in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
              if e["event"] == "train"]
    best, _ = RunCheckpoints(workdir / "checkpoints").restore_best({"params": params, "masks": masks})
    return summary, losses, jax.tree.map(np.asarray, best["masks"]), masks


def main():
    assert jax.device_count() == 8, jax.device_count()
    task = ProteinTask(dataset="stability", pretrained=None, data_dir=sys.argv[1], batch_size=8,
                       model_config={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
                       max_train_examples=16, max_eval_examples=8, length_buckets=(64,))
    algorithm = sp.RigL(sparsity=0.5, update_frequency=2)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(task, algorithm, part, Path(tmp) / name) for name, part in MESHES.items()}
    (s1, l1, m1, start), (s8, l8, m8, _) = results["one"], results["fsdp8"]
    out["losses"] = [l1, l8]
    out["loss_diff"] = float(np.max(np.abs(np.asarray(l1) - np.asarray(l8))))
    out["masks_equal"] = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m8)))
    out["masks_moved"] = not all(np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(m1),
                                                                               jax.tree.leaves(start)))
    out["sparsity"] = [s1["actual_sparsity"], s8["actual_sparsity"]]
    out["reported"] = [s1["reported"], s8["reported"]]
    params = task.init_params(jax.random.key(0))
    specs = Partitioner(MESHES["fsdp8"]).param_shardings(params, task.param_axes())
    out["fsdp_sharded"] = all("fsdp" in str(s.spec) for s, x in zip(jax.tree.leaves(specs), jax.tree.leaves(params))
                              if np.ndim(x) >= 2)
    gathered, grad_gathers, _ = gathers_whole_param(task, algorithm, MESHES["fsdp8"], OPTIMIZER)
    out["fsdp_update_gathers_a_whole_param"] = gathered
    out["fsdp_gradient_all_gathers"] = grad_gathers
    print(json.dumps(out))


if __name__ == "__main__":
    main()
