"""`python -m bench`: the benchmark in bench/run.py."""

import sys

from bench.run import main

sys.exit(main())
