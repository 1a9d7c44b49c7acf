"""``python -m core.merging CONFIG.yaml``: see :mod:`core.merging.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
