"""``python -m bootwatch``."""

import sys

from bootwatch.cli import main

sys.exit(main())
