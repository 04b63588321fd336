"""``python -m benchmarks``: see :mod:`benchmarks.runner` (``scripts/bench`` calls this)."""

import sys

from benchmarks.runner import main

sys.exit(main())
