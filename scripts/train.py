"""Train one smc_jax experiment from gin files (T5X-style flags).

    python scripts/train.py --gin_file=gin/mawps_rigl.gin [--gin_file=more.gin] \
        [--gin.SPARSITY=0.738] [--gin.FOLD="'all'"] [--gin_bindings="ArithmeticTask.hidden = 256"]

Flags: ``--gin_file`` (repeatable; relative paths are tried as given, then under the repo's ``gin/``),
``--gin_bindings`` (repeatable), ``--gin.NAME=VALUE`` (one binding; NAME is a macro such as ``SPARSITY``
or a parameter such as ``TrainConfig.log_every``). A bad flag, an unknown macro, a wrong binding, a
missing file, an unknown algorithm or a bad value prints one line and exits with status 2; rerunning an
interrupted command resumes it from its last checkpoint. Results land in ``WORKDIR``: ``config.gin``,
``metrics.jsonl``, ``summary.json``, ``checkpoints/``.

Compiled programs are kept on disk in ``$JAX_COMPILATION_CACHE_DIR`` (default ``~/.cache/smc_jax/jax``;
set it to the empty string to turn the cache off): the runs of a sweep share their gradient programs and a
resumed run does not compile again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

USAGE = "usage: python scripts/train.py --gin_file=gin/mawps_rigl.gin [--gin.NAME=VALUE ...] [--gin_bindings=...]"


def _fail(message: str, status: int = 2) -> int:
    first = str(message).strip().splitlines()[0] if str(message).strip() else type(message).__name__
    print(f"error: {first}", file=sys.stderr)
    return status


def _enable_compilation_cache() -> None:
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR", str(Path.home() / ".cache" / "smc_jax" / "jax"))
    if path:
        import jax

        jax.config.update("jax_compilation_cache_dir", path)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, build the experiment from gin, run it; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from smc_jax.train import config, gin_utils, pipelines

    _enable_compilation_cache()
    try:
        files, bindings, rest = gin_utils.split_gin_args(argv)
        if rest:
            raise gin_utils.ConfigError(f"unknown argument {rest[0]!r}; {USAGE}")
        config.register()
        gin_utils.parse_config(files, bindings, search_paths=[REPO / "gin"])
        experiment = config.experiment()
    except (gin_utils.ConfigError, ValueError, TypeError) as err:
        return _fail(err)
    try:
        pipelines.run_experiment(experiment, config_text=gin_utils.config_str())
    except ValueError as err:  # bad data paths, values only a task can check, another model's checkpoint
        if os.environ.get("SMC_DEBUG"):
            raise
        return _fail(err)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
