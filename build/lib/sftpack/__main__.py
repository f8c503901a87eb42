"""`python -m sftpack ...`: the same command line as `sftpack ...`."""

import sys

from sftpack.cli import main

sys.exit(main())
