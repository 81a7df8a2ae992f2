"""Which boot files bootwatch keeps cached: the ``[cache] track`` policy.

``track = "referenced"`` caches what a BLS entry names; ``track = "all"`` also caches every file
of the boot directory whose name matches one of ``[cache] patterns``, referenced or not.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from typing import Callable

from bootwatch.cache.operations import BootCache
from bootwatch.config import Config
from bootwatch.errors import UnsafePathError


def matches_patterns(path: str, patterns: Iterable[str]) -> bool:
    """True if the basename of the boom-style ``path`` matches a glob."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def tracks_all(config: Config) -> bool:
    return config.cache.track == "all"


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
