"""``python -m bootwatch``."""

import sys

from bootwatch.cli.main import main

sys.exit(main())
