"""Sharded training on 8 fake CPU devices (a subprocess with --xla_force_host_platform_device_count=8): RigL and
GMP give the same losses, masks and sparsity on one device, a data-parallel mesh and an fsdp mesh, and the
fsdp mask update gathers no whole parameter. The default suite checks a small MLP task (the engine and the
sparse optimizer under sharding); the slow suite checks GTS."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA / "arithmetic"


def check(model: str) -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = Path(__file__).with_name("multidevice_check.py")
    out = subprocess.run([sys.executable, str(script), str(DATA), model], capture_output=True, text=True, env=env,
                         timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results():
    return check("mlp")


RUNS = ["rigl/data8", "rigl/fsdp8", "gmp/data8", "gmp/fsdp8"]


@pytest.mark.parametrize("run", RUNS)
def test_sharded_runs_match_one_device(results, run):
    assert_matches_one_device(results[run], run)


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"arithmetic data not found at {DATA}")
def test_gts_sharded_runs_match_one_device():
    """The same with GTS (LSTMs, the tree decoder, beam search) on 64 MAWPS problems."""
    results = check("gts")
    for run in RUNS:
        assert_matches_one_device(results[run], run)
    test_the_mask_updates_ran(results)
    test_fsdp_mask_update_gathers_no_whole_parameter(results)


def assert_matches_one_device(r: dict, run: str) -> None:
    assert r["num_losses"] == 8 and r["loss_diff"] <= 1e-4, r
    assert r["masks_equal"] and r["per_leaf_equal"], r
    assert r["sparsity"][0] == r["sparsity"][1], r
    assert abs(r["sparsity"][0] - 0.5) < (1e-9 if run.startswith("gmp") else 0.01), r  # RigL: Bernoulli init


def test_the_mask_updates_ran(results):
    assert results["rigl/masks_moved"] and results["gmp/masks_moved"]


def test_fsdp_mask_update_gathers_no_whole_parameter(results):
    assert results["fsdp_every_kernel_sharded"]
    assert results["fsdp_gradient_all_gathers"] > 0  # fsdp does gather for the forward pass: the check can see them
    assert not results["fsdp_update_gathers_a_whole_param"]
