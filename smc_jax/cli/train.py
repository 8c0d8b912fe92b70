r"""Train one smc_jax experiment from gin files (T5X-style flags).

    python scripts/train.py --gin_file=gin/mawps_rigl.gin [--gin_file=more.gin] \
        [--gin.SPARSITY=0.738] [--gin.FOLD="'all'"] [--gin_bindings="ArithmeticTask.hidden = 256"]

Flags: ``--gin_file`` (repeatable; relative paths are tried as given, then under the repo's ``gin/``),
``--gin_bindings`` (repeatable), ``--gin.NAME=VALUE`` (one binding; NAME is a macro such as ``SPARSITY``
or a parameter such as ``TrainConfig.log_every``). A bad flag, an unknown macro, a wrong binding, a
missing file, an unknown algorithm or a bad value prints one line and exits with status 2; rerunning an
interrupted command resumes it from its last checkpoint. Results land in ``WORKDIR``: ``config.gin``,
``metrics.jsonl``, ``summary.json``, ``checkpoints/``. A run whose training loss stops being finite ends
with ``"diverged": true`` in its summary.json, prints one line and exits with status 3 (as does a rerun).

Many devices and hosts: the run uses every device it sees (mesh from ``Partitioning.*``: by default all on
``data``). In a multi-host environment (a TPU VM pod slice, a SLURM job with several tasks) the same command
runs on every host and ``jax.distributed.initialize()`` is called first; ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`` set it up explicitly (e.g. several processes on one machine). Only
process 0 writes ``metrics.jsonl``, ``summary.json`` and progress; all of them write the checkpoints.

Compiled programs are kept on disk in ``$JAX_COMPILATION_CACHE_DIR`` (default ``~/.cache/smc_jax/jax``;
set it to the empty string to turn the cache off): the runs of a sweep share their gradient programs and a
resumed run does not compile again.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from smc_jax.cli import arguments, fail

USAGE = "usage: python scripts/train.py --gin_file=gin/mawps_rigl.gin [--gin.NAME=VALUE ...] [--gin_bindings=...]"
DISTRIBUTED_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")
DIVERGED = 3  # the exit status of a run that diverged (its summary.json says where)
INTERRUPTED = 130

_distributed_done = False  # jax.distributed.initialize may run once per process (a sweep calls main per run)


def _enable_compilation_cache() -> None:
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "smc_jax" / "jax"))
    if path:
        import jax

        jax.config.update("jax_compilation_cache_dir", path)


def _pop_distributed_flags(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """``--coordinator_address=..``, ``--num_processes=..``, ``--process_id=..`` out of ``argv``."""
    found, rest = {}, []
    for arg in argv:
        name, _, value = arg.partition("=")
        if name in DISTRIBUTED_FLAGS:
            if not value:
                raise ValueError(f"{name} needs a value: {name}=...")
            found[name[2:]] = value
        else:
            rest.append(arg)
    return found, rest


def _multihost_environment() -> bool:
    """A TPU VM (pod slice or single host: JAX reads the workers from the metadata server), a GKE TPU pod
    (several worker hostnames) or a SLURM job with several tasks."""
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if "," in hosts or slurm_tasks > 1 or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    try:  # JAX's own detection of a Cloud TPU VM (private module; absent in other JAX versions)
        from jax._src.clusters import cloud_tpu_cluster

        return bool(cloud_tpu_cluster.GceTpuCluster.is_env_present())
    except Exception:  # noqa: BLE001  (any failure means: not a TPU VM we can detect)
        return False


def initialize_distributed(flags: Mapping[str, str]) -> None:
    """``jax.distributed.initialize`` from the flags (all three needed) or the environment; else nothing.
    Once per process: later calls (the next runs of a sweep) do nothing."""
    global _distributed_done
    if _distributed_done:
        return
    import jax

    if flags:
        missing = [f"--{k}" for k in ("coordinator_address", "num_processes", "process_id") if k not in flags]
        if missing:
            raise ValueError(f"multi-process flags need all of {', '.join(DISTRIBUTED_FLAGS)}; "
                             f"missing {', '.join(missing)}")
        try:
            num, pid = int(flags["num_processes"]), int(flags["process_id"])
        except ValueError:
            raise ValueError("--num_processes and --process_id must be integers") from None
        if not 0 <= pid < num:
            raise ValueError(f"--process_id={pid} must be in [0, --num_processes={num})")
        try:  # CPU processes need gloo for cross-process collectives (no effect on GPU/TPU backends)
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except (AttributeError, ValueError):
            pass
        jax.distributed.initialize(coordinator_address=flags["coordinator_address"], num_processes=num,
                                   process_id=pid)
    elif _multihost_environment():
        jax.distributed.initialize()
    _distributed_done = True


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, build the experiment from gin, run it; returns the exit status (0; 2 for bad input;
    :data:`DIVERGED`; :data:`INTERRUPTED`)."""
    argv = arguments(argv, __doc__)
    if argv is None:
        return 0
    try:
        distributed, argv = _pop_distributed_flags(argv)
        initialize_distributed(distributed)
    except (ValueError, RuntimeError) as err:
        return fail(err)
    from smc_jax.cli import gin_cli
    from smc_jax.train import config, pipelines
    from smc_jax.train.trainer import Diverged

    _enable_compilation_cache()
    try:
        files, bindings, rest = gin_cli.split_gin_args(argv)
        if rest:
            raise gin_cli.ConfigError(f"unknown argument {rest[0]!r}; {USAGE}")
        gin_cli.parse_run(files, bindings)
        experiment = config.experiment()
    except (gin_cli.ConfigError, ValueError, TypeError) as err:
        return fail(err)
    try:
        pipelines.run_experiment(experiment, config_text=gin_cli.config_str())
    except Diverged as err:  # summary.json says where; a rerun stops at once
        return fail(err, DIVERGED)
    except ValueError as err:  # bad data paths, values only a task can check, another model's checkpoint
        if os.environ.get("SMC_DEBUG"):
            raise
        return fail(err)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return INTERRUPTED
    return 0
