"""``python tests/fake_cli.py [train flags]``: the train command (smc_jax.cli.train) with the fake tasks of
tests/fake_tasks.py registered with gin, e.g. ``--gin_file=tests/mlp_task.gin --gin_file=algorithms/rigl.gin``."""

import sys

import gin
from fake_tasks import MLPTask

from smc_jax.cli.train import main

if __name__ == "__main__":
    gin.external_configurable(MLPTask, name="MLPTask")
    sys.exit(main())
