"""Reading back the journal's native protocol that bootwatch.log writes (what journald parses)."""

from __future__ import annotations

import struct


def parse_entry(data: bytes) -> list[tuple[str, bytes]]:
    """The inverse of bootwatch.log.encode_entry, strict: a journal entry as journald reads it."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        line = data[pos:newline]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = newline + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, newline + 1)
            start = newline + 1 + 8
            value = data[start:start + size]
            if len(value) != size or data[start + size:start + size + 1] != b"\n":
                raise ValueError(f"truncated binary field {name!r}")
            pos = start + size + 1
        fields.append((name.decode("ascii"), value))
    return fields
