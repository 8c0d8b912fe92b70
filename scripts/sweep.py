"""Run a grid of smc_jax experiments one after another (see ``smc_jax/cli/sweep.py`` or ``--help``).

    python scripts/sweep.py --gin_file=gin/mawps_rigl.gin [--algorithms=rigl,gmp|all] [--sparsities=paper] \
        [--seeds=0,1,2] [--folds=all] [--workdir=runs/NAME] [--dry_run]
    python scripts/sweep.py --task=mawps --algorithms=dense,lth [...]
"""

import sys

from smc_jax.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
