"""The stat signatures of the index, in a small file of their own: a full pass that finds nothing
changed then needs neither the lock nor a parse of the index.

With ``track = "all"`` a full pass (``bootwatch scan``, the daemon's start, SIGHUP and
``rescan_interval``) compares the lstat of every tracked boot file with the signature recorded when
it was hashed. On a host with 10,000 tracked files the index is some 5 MB of JSON, and parsing and
checking it costs more than the 10,000 lstat calls of the walk. Yet most passes find nothing
changed. So the signatures a pass needs are also kept in ``.bootwatch-signatures`` in the cache
directory:

    bootwatch-signatures/2 <SHA1 of the exact cacheindex.json bytes it was derived from> <SHA1 of the body>
    <body: marshal (version 4) of {"<boom path>": (dev, ino, size, mtime_ns, ctime_ns, "<newest id>") | None}>

It is derived data, never a source of truth:

- The body is in :mod:`marshal`'s format because it loads several times faster than JSON, and a
  pass over 10,000 paths must stay under 0.1 s (bench target 4). marshal is not meant for
  untrusted data, so the body is loaded only once its SHA1 matches the header: a torn or rotten
  file is ignored. Only root can write the cache directory (see safety.py), and root could as
  well replace bootwatch itself.
- Only a holder of the lock writes it, right after a full pass, from the index as that pass left
  it (see :meth:`BootCache.transaction`). It is not fsynced: a torn file fails to parse.
- A reader takes no lock. It reads ``cacheindex.json`` first, then this file, and uses it only if
  its first line names the SHA1 of the index bytes it just read. Any other index (written by a
  later batch, or by boom in place) makes it stale, and the pass parses the index as before.
- It can only let a pass conclude "nothing to do": every value is compared with a live lstat, and
  anything that does not match sends the pass down the ordinary path, under the lock. Deleting
  the file costs one slow pass, which writes it again.

boom lists only ``*.img`` files in the cache directory, so it never sees this file.
"""

from __future__ import annotations

import hashlib
import marshal
import os
from typing import TYPE_CHECKING, BinaryIO, Optional

from bootwatch.cache.index import CacheIndex
from bootwatch.errors import FileTooLargeError

if TYPE_CHECKING:
    from bootwatch.cache.store import CacheStore

SIGNATURES_NAME = ".bootwatch-signatures"
FORMAT = b"bootwatch-signatures/2"
MARSHAL_VERSION = 4  # read by every Python bootwatch runs on (3.9 and later)

# (dev, ino, size, mtime_ns, ctime_ns, newest image id): a path whose file still has this lstat
# needs nothing from a full pass. None: the index records no usable signature for the path.
Signatures = dict[str, Optional[tuple[int, int, int, int, int, str]]]


def index_digest(data: bytes) -> str:
    """What a signatures file is keyed by: the SHA1 of the index file's bytes."""
    return hashlib.sha1(data).hexdigest()


def _key(digest: str) -> bytes:
    return FORMAT + b" " + digest.encode() + b" "


def chunked_sha1(f: BinaryIO, *, limit: int, name: os.PathLike[str] | str) -> str:
    """:func:`index_digest` of what is left to read in ``f``, without holding it all; more than
    ``limit`` bytes raise :class:`FileTooLargeError` naming ``name``."""
    digest = hashlib.sha1()
    buffer = bytearray(1 << 18)
    view = memoryview(buffer)
    total = 0
    while True:
        n = f.readinto(buffer)
        if not n:
            return digest.hexdigest()
        total += n
        if total > limit:
            raise FileTooLargeError(name, limit)
        digest.update(view[:n])


def encode(index: CacheIndex, digest: str) -> bytes:
    signatures = {path: None if recorded is None else tuple(recorded)
                  for path, recorded in index.recorded_signatures().items()}
    body = marshal.dumps(signatures, MARSHAL_VERSION)
    return _key(digest) + hashlib.sha1(body).hexdigest().encode() + b"\n" + body


def decode(data: bytes, digest: str) -> Signatures | None:
    """The signatures in ``data`` if it is a complete file derived from the index ``digest``, else None."""
    header, newline, body = data.partition(b"\n")
    key = _key(digest)
    if not newline or not header.startswith(key) or header[len(key):] != hashlib.sha1(body).hexdigest().encode():
        return None  # stale, torn or rotten: only costs an ordinary pass
    try:
        signatures = marshal.loads(body)
    except (EOFError, ValueError, TypeError):
        return None
    return signatures if signatures.__class__ is dict else None


def read_signatures(store: CacheStore, digest: str) -> Signatures | None:
    """The signatures derived from the index ``digest``; None if the file is missing or stale."""
    data = store.read_derived(SIGNATURES_NAME)
    return None if data is None else decode(data, digest)


def write_signatures(store: CacheStore, index: CacheIndex, digest: str) -> None:
    """Derive the file from ``index``, whose JSON has SHA1 ``digest``. The caller holds the lock.

    Not written again if the file holds exactly these bytes already (a pass that changed nothing).
    """
    data = encode(index, digest)
    if store.read_derived(SIGNATURES_NAME) != data:
        store.write_derived(SIGNATURES_NAME, data)
