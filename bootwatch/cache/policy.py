"""Which boot files bootwatch keeps cached: the ``[cache] track`` policy.

``track = "referenced"`` caches what a BLS entry names; ``track = "all"`` also caches every file
of the boot directory whose name matches one of ``[cache] patterns``, referenced or not.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from typing import Callable

from bootwatch.cache.operations import BootCache
from bootwatch.config import Config, Track
from bootwatch.errors import UnsafePathError


def names_pattern(patterns: Iterable[str]) -> re.Pattern[str]:
    """Every glob of ``[cache] patterns`` at once: ``.match(name)`` says whether a file name
    matches one of them, as ``fnmatch.fnmatchcase`` decides.

    ``fnmatch.translate`` makes each glob a regular expression anchored at the end; their
    alternation, matched from the start, accepts exactly the names one of them accepts. One
    compiled expression instead of a loop of fnmatch calls per name: the walk of the boot
    directory tests every file. No globs match nothing (``(?!)`` never matches).
    """
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


def matches_patterns(path: str, patterns: Iterable[str]) -> bool:
    """True if the basename of the boom-style ``path`` matches a glob (see :func:`names_pattern`)."""
    return names_pattern(patterns).match(path.rsplit("/", 1)[-1]) is not None


def tracks_all(config: Config) -> bool:
    return config.cache.track is Track.ALL


def keep_unreferenced_predicate(config: Config, cache: BootCache) -> Callable[[str], bool]:
    """What clean keeps although no entry references it: with ``track = "all"``, a matching file still in /boot."""
    if not tracks_all(config):
        return lambda path: False

    def keep(path: str) -> bool:
        if not matches_patterns(path, config.cache.patterns):
            return False
        try:
            return os.path.isfile(cache.boot_file(path))
        except UnsafePathError:
            return False

    return keep
