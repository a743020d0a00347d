"""``python -m relaypolicy.testing.fuzz``."""

from relaypolicy.testing.fuzz import main

raise SystemExit(main())
