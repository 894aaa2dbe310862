"""``python -m bidsflux``: the same as the ``bidsflux`` console script."""

import sys

from .cli import main

sys.exit(main())
