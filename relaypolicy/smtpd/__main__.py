"""``python -m relaypolicy.smtpd smtpd|passwd ...``: the two subcommands on their own."""

import sys

from relaypolicy.smtpd.command import main

sys.exit(main())
