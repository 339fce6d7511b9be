"""`python cli.py COMMAND ...` in a checkout: the same command line as the installed `longdoc`
(and `python -m longdoc`), whose code is `longdoc.cli` (stages/longdoc/cli.py).

    python cli.py embed --split train --out data/cache/train.h5
    torchrun --standalone --nproc_per_node 2 cli.py embed ...

`make install` (or `pip install -e .`) installs the package this imports.
"""

import sys

try:
    from longdoc.cli import main
except ModuleNotFoundError as error:
    if error.name != "longdoc":
        raise
    print("error: the longdoc package is not installed here; run `make install` (or `pip install -e .`) first",
          file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
