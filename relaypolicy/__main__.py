"""``python -m relaypolicy``: the same as the ``relaypolicy`` command."""

import sys

from relaypolicy.cli import main

sys.exit(main())
