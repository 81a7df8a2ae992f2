"""When a file counts as unchanged: its stat signature.

One rule for every part that remembers something about a file's content without reading it
again: the cache's hashes (:mod:`bootwatch.cache`), the health facts of an image
(:mod:`bootwatch.health.facts`) and what a boot proof booted (:mod:`bootwatch.prove.proof`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class StatSignature:
    """The fields that change when a file's content may have changed.

    If a boot file's signature equals the one recorded when it was last hashed, its content is
    taken as unchanged and it is not read again. ``ctime`` catches a rewrite that restored the
    mtime (``touch -r``); device and inode catch a rename over the file.
    """

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatSignature:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def to_json(self) -> list[int]:
        return [self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns]

    @classmethod
    def from_json(cls, value: object) -> StatSignature | None:
        if (isinstance(value, list) and len(value) == 5
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            return cls(*value)
        return None
