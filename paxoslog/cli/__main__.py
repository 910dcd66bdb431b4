"""``python -m paxoslog.cli``: the ``paxoslog`` command."""

import sys

from paxoslog.cli import main

sys.exit(main())
