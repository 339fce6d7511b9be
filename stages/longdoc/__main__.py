"""`python -m longdoc COMMAND ...`: the same command line as `longdoc` and `python cli.py`."""

import sys

from longdoc.cli import main

sys.exit(main())
