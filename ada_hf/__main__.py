"""`python -m ada_hf ...` runs the `ada-hf` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
