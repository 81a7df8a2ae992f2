"""Flattened devicetree blobs: what a loader hands the kernel as its hardware description.

The header is the devicetree specification's ``fdt_header`` (big-endian 32-bit words): magic
``0xd00dfeed``, ``totalsize``, the offsets of the structure block, the strings block and the
memory reservation map, ``version``, ``last_comp_version``, ``boot_cpuid_phys``,
``size_dt_strings`` and (version 17) ``size_dt_struct``. A blob is checked as far as its header
goes: whole (no shorter than ``totalsize``), and each block inside it. Overlays (``.dtbo``) are
blobs of the same format.
"""

from __future__ import annotations

import struct

FDT_MAGIC = 0xD00DFEED
HEADER = struct.Struct(">10I")


def is_devicetree(head: bytes) -> bool:
    return len(head) >= 4 and struct.unpack_from(">I", head)[0] == FDT_MAGIC


def devicetree_problem(head: bytes, size: int) -> str | None:
    """What is wrong with the blob of ``size`` bytes whose first bytes are ``head`` (its magic
    checked by :func:`is_devicetree`), or None."""
    if len(head) < HEADER.size:
        return f"devicetree truncated: {size} bytes, shorter than its {HEADER.size}-byte header"
    _, total, off_struct, off_strings, off_rsvmap, version, _, _, size_strings, size_struct = HEADER.unpack_from(head)
    if total > size:
        return f"devicetree truncated: its header states {total} bytes, the file has {size}"
    if total < HEADER.size or off_rsvmap > total or off_strings + size_strings > total or off_struct > total \
            or (version >= 17 and off_struct + size_struct > total):
        return f"devicetree header corrupt: a block lies outside its {total} bytes"
    return None


def devicetree_summary(head: bytes) -> str:
    _, total, _, _, _, version, *_ = HEADER.unpack_from(head)
    return f"devicetree: version {version}, {total} bytes"
