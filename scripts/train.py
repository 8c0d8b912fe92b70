"""Train one smc_jax experiment from gin files (see ``smc_jax/cli/train.py`` or ``--help``).

    python scripts/train.py --gin_file=gin/mawps_rigl.gin [--gin.SPARSITY=0.738] [--gin_bindings=...]
"""

import sys

from smc_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
