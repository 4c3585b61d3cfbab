"""``python -m lmdbio.study [options]``: the storage study (``--help`` lists the options)."""

import sys

from lmdbio.cli import run_guarded

from lmdbio.study.cli import main

sys.exit(run_guarded(main))
