"""The index's :class:`~bootwatch.cache.index.SignatureTable`, in a small file of its own: a full
pass that finds nothing changed then needs neither the lock nor a parse of the index.

With ``track = "all"`` a full pass (``bootwatch scan``, the daemon's start, SIGHUP and
``rescan_interval``) compares the lstat of every tracked boot file with the signature recorded when
it was hashed. On a host with 10,000 tracked files the index is some 5 MB of JSON, and parsing and
checking it costs more than the 10,000 lstat calls of the walk. Yet most passes find nothing
changed. So the signature table every tier asks (:meth:`CacheIndex.signatures`) is also kept, as
it is, in ``.bootwatch-signatures`` in the cache directory:

    bootwatch-signatures/3 <SHA1 of the exact cacheindex.json bytes it was derived from> <SHA1 of the body>
    <body: marshal (version 4) of SignatureTable.entries:
           {"<boom path>": (dev, ino, size, mtime_ns, ctime_ns, "<image id>", <is the newest image>) | None}>

A file of another format (such as ``bootwatch-signatures/2``, of an older bootwatch, which held the
signatures of newest images only) is stale, as one of another index is.

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

from bootwatch.cache.index import SignatureTable
from bootwatch.cache.store import SIGNATURES_NAME, CacheStore

FORMAT = b"bootwatch-signatures/3"
MARSHAL_VERSION = 4  # read by every Python bootwatch runs on (3.9 and later)
# The types of a SignatureEntry, exactly (marshal keeps bool apart from int).
ENTRY_TYPES = (int, int, int, int, int, str, bool)


def _key(digest: str) -> bytes:
    return FORMAT + b" " + digest.encode() + b" "


def encode(table: SignatureTable, digest: str) -> bytes:
    """The file for ``table``, derived from the index whose bytes have the SHA1 ``digest``."""
    body = marshal.dumps(table.entries, MARSHAL_VERSION)
    return _key(digest) + hashlib.sha1(body).hexdigest().encode() + b"\n" + body


def decode(data: bytes, digest: str) -> SignatureTable | None:
    """The table in ``data`` if it is a complete file derived from the index ``digest``, else None."""
    header, newline, body = data.partition(b"\n")
    key = _key(digest)
    if not newline or not header.startswith(key) or header[len(key):] != hashlib.sha1(body).hexdigest().encode():
        return None  # stale, torn, rotten or of another format: only costs an ordinary pass
    try:
        entries = marshal.loads(body)
    except (EOFError, ValueError, TypeError):
        return None
    return SignatureTable(entries) if _is_table(entries) else None


def _is_table(entries: object) -> bool:
    """Whether ``entries`` has exactly the shape of :attr:`SignatureTable.entries`.

    A body whose SHA1 matches is only self-consistent: whatever wrote it, anything but a dict of
    boom paths to None or a :data:`~bootwatch.cache.index.SignatureEntry` is no table, and the
    ordinary pass runs.
    """
    return entries.__class__ is dict and all(
        path.__class__ is str
        and (entry is None or (entry.__class__ is tuple and tuple(map(type, entry)) == ENTRY_TYPES))
        for path, entry in entries.items())


def read_signatures(store: CacheStore, digest: str) -> SignatureTable | None:
    """The table derived from the index ``digest``; None if the file is missing or stale."""
    data = store.read_derived(SIGNATURES_NAME)
    return None if data is None else decode(data, digest)


def write_signatures(store: CacheStore, table: SignatureTable, digest: str) -> None:
    """Keep ``table``, derived from the index whose JSON has SHA1 ``digest``. The caller holds the lock.

    Not written again if the file holds exactly these bytes already (a pass that changed nothing).
    """
    data = encode(table, digest)
    if store.read_derived(SIGNATURES_NAME) != data:
        store.write_derived(SIGNATURES_NAME, data)
