"""The translation train step sharded on 8 fake CPU devices: this file re-runs itself as a script in a subprocess
with --xla_force_host_platform_device_count=8. RigL (mask updates every 2 updates, 2 accumulated micro-batches) on
an fsdp=8 mesh gives the one-device losses to 1e-5 and the same sparsity, and its mask-update program gathers no
whole parameter (the shared embedding and the position tables included)."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # compiles the mBART programs for two meshes


@pytest.fixture(scope="module")
def results():
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "flores200").is_dir():
        pytest.skip("FLORES-200 not found")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, __file__, str(SHARED_DATA)], capture_output=True, text=True, env=env,
                         timeout=1200, cwd=REPO)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fsdp_losses_match_one_device(results):
    assert len(results["losses"][0]) == 4 and results["loss_diff"] <= 1e-5, results
    assert results["sparsity"][0] == results["sparsity"][1], results


def test_fsdp_mask_update_gathers_no_whole_parameter(results):
    assert results["fsdp_sharded"], results
    assert results["gradient_all_gathers"] > 0
    assert not results["update_gathers"], results


def _main(shared: Path) -> None:
    import jax
    import numpy as np

    import smc_jax.sparsity as sp
    from smc_jax.tasks.translation import TranslationTask
    from smc_jax.train.optim import InverseSqrt, Optimizer
    from smc_jax.train.partitioning import Partitioner, Partitioning
    from smc_jax.train.steps import place, placed_state, train_step
    from smc_jax.train.trainer import MaskRules, TrainConfig, fit

    sys.path.insert(0, str(Path(__file__).parent))
    from hf_fixtures import tiny_translation_checkpoint

    assert jax.device_count() == 8, jax.device_count()
    optimizer = Optimizer(kind="adam", learning_rate=1e-3, b2=0.98, eps=1e-6, schedule=InverseSqrt(warmup_steps=2),
                          groups={"final_logits_bias": {"frozen": True}})
    rules = MaskRules(exclude=("final_logits_bias",))
    algorithm = sp.RigL(sparsity=0.5, update_frequency=2)
    meshes = {"one": Partitioning(data=1), "fsdp8": Partitioning(data=1, fsdp=8)}
    out: dict = {"losses": [], "sparsity": []}
    tmp = tempfile.mkdtemp()
    ckpt = tiny_translation_checkpoint(Path(tmp) / "ckpt", shared)
    task = TranslationTask(setting="2to2", source="flores200", data_dir=str(shared / "flores200"),
                           pretrained=str(ckpt), cache_dir=str(Path(tmp) / "cache"), max_train_examples=8,
                           max_eval_examples=1, eval_directions=("en-fr",), max_length=256, length_buckets=(256,),
                           truncate_eval=True, beam_size=2, max_len_b=4, eval_batch_size=8)
    for name, mesh in meshes.items():
        params = task.init_params(jax.random.key(0))
        masks = algorithm.init_masks(params, rules.masks(params, algorithm.name), key=jax.random.key(1))
        workdir = Path(tmp) / name
        summary = fit(task, algorithm, workdir, seed=0, train_steps=4, params=sp.apply_masks(params, masks),
                      masks=masks, optimizer=optimizer, partitioning=mesh,
                      config=TrainConfig(progress="off", log_every=1, grad_accum_steps=2))
        out["losses"].append([e["loss"] for e in map(json.loads, (workdir / "metrics.jsonl").read_text()
                                                     .splitlines()) if e["event"] == "train"])
        out["sparsity"].append(summary["actual_sparsity"])
    out["loss_diff"] = float(np.max(np.abs(np.subtract(*out["losses"]))))
    partitioner = Partitioner(meshes["fsdp8"])
    params = task.init_params(jax.random.key(0))
    masks = algorithm.init_masks(params, rules.masks(params, algorithm.name), key=jax.random.key(1))
    params, masks, params_sh = place(partitioner, task, params, masks)
    tx = sp.sparse_optimizer(optimizer.build(task.param_groups, None, 8), algorithm, masks, 8)
    state, state_sh = placed_state(partitioner, params, params_sh, tx, 0)
    step = train_step(task, tx, True, 2, state_sh, partitioner)
    batch = partitioner.put_batch(task.snip_batch(0))
    gradient_fn, update_fns = step.programs(batch)
    grads = jax.tree.map(lambda p: p * 0, state["params"])
    update_hlo = update_fns[True].lower(state, grads).compile().as_text()
    grad_hlo = gradient_fn.lower(state["params"], state["rng"], state["step"], batch).compile().as_text()
    full = {tuple(np.shape(x)) for x in jax.tree.leaves(params) if np.ndim(x) >= 2}
    gathered = set()
    for line in update_hlo.splitlines():
        m = re.search(r"=\s*\w+\[([\d,]*)\]\S*\s+all-gather", line)
        if m:
            gathered.add(tuple(int(d) for d in m.group(1).split(",") if d))
    out["update_gathers"] = sorted(map(list, gathered & full))
    out["gradient_all_gathers"] = grad_hlo.count("all-gather")
    out["fsdp_sharded"] = all(any(a is not None for a in s.spec) for s, x in
                              zip(jax.tree.leaves(params_sh), jax.tree.leaves(params)) if np.ndim(x) >= 2)
    out["shared_embedding_shape"] = list(np.shape(params["model"]["shared"]["embedding"]))
    shutil.rmtree(tmp)
    print(json.dumps(out))


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
