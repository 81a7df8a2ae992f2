"""The console entry point: ``scan --quiet`` of an unchanged boot directory proved by the scan
proof (:mod:`bootwatch.scanproof`) before the full command line (:mod:`bootwatch.cli.main`) is
imported; everything else, and every scan the proof does not cover, runs the full command line."""

from __future__ import annotations

import sys

from bootwatch import scanproof


def main() -> int:
    try:
        if scanproof.main():
            return 0
    except KeyboardInterrupt:  # as the full command line: no traceback
        return 130
    # Imported only here: its imports are what the fast path exists to avoid.
    from bootwatch.cli.main import main as full_main
    return full_main()


if __name__ == "__main__":
    sys.exit(main())
