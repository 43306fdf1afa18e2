"""``python -m spare_core.runner``: the batch runner's command line (``spare_core.runner.batch``)."""

import sys

from .batch import main

sys.exit(main())
