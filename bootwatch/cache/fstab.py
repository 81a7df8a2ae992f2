"""The mount points ``/etc/fstab`` names: a directory listed there and not mounted now is an
unmounted partition's mount point, whatever it holds (see :func:`unmounted`).

The file is parsed as fstab(5) says: one entry a line, whitespace-separated fields, ``#``
comments and blank lines skipped, octal escapes (``\\040`` for a space) in the fields. Entries
with ``noauto`` count (such a ``/boot`` is still where the boot partition belongs); swap entries
and mount points ``none`` are no directories.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from bootwatch import safety
from bootwatch.errors import BootwatchError

FSTAB = Path("/etc/fstab")
_LIMIT = 1 << 20  # an fstab is a few lines; a larger file is not read
_OCTAL = re.compile(r"\\([0-7]{3})")

log = logging.getLogger("bootwatch.cache.fstab")
_warned: set[str] = set()


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse(text: str) -> frozenset[str]:
    """The mount points (normalized absolute paths) of the fstab text ``text``."""
    points: set[str] = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith("#"):
            continue
        point = _unescape(fields[1])
        if (len(fields) > 2 and fields[2] == "swap") or point in ("none", "swap") or not point.startswith("/"):
            continue
        points.add(os.path.normpath(point))
    return frozenset(points)


def mount_points(path: Path = FSTAB) -> frozenset[str]:
    """The mount points ``path`` names; none when it cannot be read (logged once, at debug: a
    host without an fstab is no error)."""
    try:
        data = safety.read_regular(path, follow_symlinks=True, limit=_LIMIT)
    except (OSError, BootwatchError) as e:
        if str(path) not in _warned:
            _warned.add(str(path))
            log.debug("%s: not read (%s); no mount point is taken from it", path, e)
        return frozenset()
    return parse(data.decode("utf-8", "surrogateescape"))


def listed(directory: Path, points: frozenset[str]) -> bool:
    """Whether ``directory`` (as given, or resolved) is one of the mount points ``points``."""
    return os.path.normpath(directory) in points or os.path.realpath(directory) in points
