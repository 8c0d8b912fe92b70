"""Two processes on 127.0.0.1 (jax.distributed, 2 fake CPU devices each) train through the CLI and write one
summary.json equal to a single-process run's in every key but the timings. The default suite runs the small MLP
task of tests/fake_tasks.py through the real train command (tests/fake_cli.py); the slow suite runs GTS."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED_DATA / "arithmetic"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"arithmetic data not found at {DATA}")


def mlp_args(workdir: Path) -> list[str]:
    return [sys.executable, "tests/fake_cli.py", "--gin_file=tests/mlp_task.gin", "--gin_file=algorithms/rigl.gin",
            "--gin.UPDATE_FREQUENCY=2", "--gin.TrainConfig.progress='off'", f"--gin.WORKDIR='{workdir}'"]


def gts_args(workdir: Path) -> list[str]:
    return [sys.executable, "scripts/train.py", "--gin_file=gin/mawps_rigl.gin", f"--gin.DATA_DIR='{DATA}'",
            "--gin.MAX_TRAIN_EXAMPLES=64", "--gin.MAX_EVAL_EXAMPLES=16", "--gin.NUM_EPOCHS=1", "--gin.BATCH_SIZE=8",
            "--gin.UPDATE_FREQUENCY=2", "--gin.ArithmeticTask.hidden=32", "--gin.ArithmeticTask.embedding_size=32",
            "--gin.ArithmeticTask.input_buckets=(96,)", "--gin.ArithmeticTask.target_buckets=(16,)",
            "--gin.TrainConfig.progress='off'", f"--gin.WORKDIR='{workdir}'"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def close(a, b, path="") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}/{i}")
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-4, (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("args", [mlp_args, pytest.param(gts_args, marks=[pytest.mark.slow, needs_data])])
def test_two_processes_write_the_single_process_summary(tmp_path, args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR="")
    single = subprocess.run(args(tmp_path / "single"), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    port = free_port()
    # Output to files, not pipes: a process blocked on a full pipe nobody reads would stall the other at
    # jax.distributed's shutdown barrier. PYTHONFAULTHANDLER: an abort dumps every thread's Python stack.
    multi_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONFAULTHANDLER="1")
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(args(tmp_path / "multi") + [f"--coordinator_address=127.0.0.1:{port}",
                                                                      "--num_processes=2", f"--process_id={i}"],
                                          cwd=REPO, env=multi_env, stdout=out, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], "".join(f"--- process {i} ---\n{log.read_text()[-4000:]}" for i, log in enumerate(logs))
    a = json.loads((tmp_path / "single" / "summary.json").read_text())
    b = json.loads((tmp_path / "multi" / "summary.json").read_text())
    for key in ("wall_time_s", "train_steps_per_s"):
        a.pop(key), b.pop(key)
    a.pop("dense_workdir", None), b.pop("dense_workdir", None)
    close(a, b)
    assert abs(a["actual_sparsity"] - 0.5) < 0.01 and a["steps"] == 8  # Bernoulli random init, then RigL
    lines = (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())  # written once


def test_incomplete_distributed_flags_are_a_one_line_error():
    out = subprocess.run([sys.executable, "scripts/train.py", "--gin_file=gin/mawps_rigl.gin",
                          "--coordinator_address=127.0.0.1:1234"], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--num_processes" in out.stderr
