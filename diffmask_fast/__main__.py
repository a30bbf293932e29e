"""``python -m diffmask_fast``: the ``diffmask`` command line."""

import sys

from .cli import main

sys.exit(main())
