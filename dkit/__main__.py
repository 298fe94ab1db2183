"""`python -m dkit` is the same as the `dkit` console script."""

import sys

from dkit.cli.main import main

sys.exit(main())
