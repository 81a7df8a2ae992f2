"""``python -m bootwatch``."""

import sys

from bootwatch.cli.entry import main

sys.exit(main())
