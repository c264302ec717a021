"""``python -m magnet``: the same commands as the ``magnet`` console script."""

import sys

from magnet.cli import main

sys.exit(main())
