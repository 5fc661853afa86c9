"""``python -m dscaledgd``: the command line (:mod:`dscaledgd.cli`)."""

import sys

from .cli import main

sys.exit(main())
