"""``renameat2(RENAME_EXCHANGE)``: swap two names atomically, as an attacker would."""

from __future__ import annotations

import os

from bootwatch import linux


def exchange(a: os.PathLike[str] | str, b: os.PathLike[str] | str) -> None:
    """Atomically swap the directory entries ``a`` and ``b`` (both must exist)."""
    linux.renameat2(os.fspath(a), os.fspath(b), linux.RENAME_EXCHANGE)
