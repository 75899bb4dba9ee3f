"""`python -m rapl` and the `rapl` console script: the command line in rapl.cli.

With no subcommand it serves the API with waitress on HOST:PORT, as it always has.
"""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
