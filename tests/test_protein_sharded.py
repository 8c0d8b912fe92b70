"""The ESM protein train step sharded on 8 fake CPU devices (a subprocess with
--xla_force_host_platform_device_count=8; tests/protein_sharded_check.py): RigL on an fsdp=8 mesh gives the one-device
losses to 1e-5 and the same masks, and its mask update gathers no whole parameter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
TAPE = SHARED_DATA / "tape_stability"
pytestmark = pytest.mark.slow  # compiles the ESM programs for two meshes (test_multidevice.py covers the engine)


@pytest.fixture(scope="module")
def results():
    if not TAPE.is_dir():
        pytest.skip(f"{TAPE} not found")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = Path(__file__).with_name("protein_sharded_check.py")
    out = subprocess.run([sys.executable, str(script), str(TAPE)], capture_output=True, text=True, env=env,
                         timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_fsdp_losses_and_masks_match_one_device(results):
    assert len(results["losses"][0]) == 4 and results["loss_diff"] <= 1e-5, results
    assert results["masks_equal"] and results["masks_moved"], results
    assert results["sparsity"][0] == results["sparsity"][1] and abs(results["sparsity"][0] - 0.5) < 0.02, results


def test_fsdp_mask_update_gathers_no_whole_parameter(results):
    assert results["fsdp_sharded"]  # every >= 2-D parameter is split over fsdp
    assert results["fsdp_gradient_all_gathers"] > 0  # the forward pass gathers: the check can see all-gathers
    assert not results["fsdp_update_gathers_a_whole_param"]
