"""Benchmarks, not tests (see ``smc_jax/cli/bench.py`` or ``--help``; figures in docs/benchmarks.md).

    python scripts/bench.py gts|sparsity|models|commonsense|scaling [--flags]   # `<subcommand> --help` lists them
"""

import sys

from smc_jax.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
