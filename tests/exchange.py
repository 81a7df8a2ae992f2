"""``renameat2(RENAME_EXCHANGE)`` through ctypes: swap two names atomically, as an attacker would."""

from __future__ import annotations

import ctypes
import os

AT_FDCWD = -100
RENAME_EXCHANGE = 2

_LIBC = ctypes.CDLL(None, use_errno=True)


def exchange(a: os.PathLike[str] | str, b: os.PathLike[str] | str) -> None:
    """Atomically swap the directory entries ``a`` and ``b`` (both must exist)."""
    if _LIBC.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(a))
