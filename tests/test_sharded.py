import json
import os
import subprocess
import sys
from pathlib import Path


def test_sharded_trees_give_the_same_masks_without_gathering():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    script = Path(__file__).with_name("sharded_masks_check.py")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)
    assert results.pop("sparse_active") == int((64 * 16 + 32 * 24 + 64 + 16 * 8) * 0.3)
    assert len(results) == 2 * 9  # two meshes x nine operations
    for name, result in results.items():
        assert result["same"], name
        assert not result["all_gather"], name
        assert result["output_sharded"], name
