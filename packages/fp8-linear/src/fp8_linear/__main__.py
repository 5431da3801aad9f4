"""``python -m fp8_linear explain ...`` (see :mod:`fp8_linear.cli`)."""

import sys

from .cli import main

sys.exit(main())
