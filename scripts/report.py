"""Tables and plots like SMC-Bench's figures from finished runs (see ``smc_jax/cli/report.py`` or ``--help``).

    python scripts/report.py runs/ [more_dirs ...] [--out report/] [--tolerance 0.01]
    python scripts/report.py --layers RUN_DIR [--out report/]
"""

import sys

from smc_jax.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
