"""Boot Loader Specification entries: which boot files each entry needs.

A type #1 entry is ``<entries>/*.conf``, one ``key value`` per line, ``#`` comments. The keys
that name files on the boot partition are ``linux``, ``initrd`` (repeatable, and a line may hold
several paths separated by spaces), ``efi``, ``devicetree`` and ``devicetree-overlay`` (several
paths). Paths are relative to the root of the partition and written with a leading ``/``, exactly
as boom's cache index writes them, so references are matched by exact string.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from bootwatch.errors import BootwatchError
from bootwatch.safety import read_regular

SINGLE_PATH_KEYS = ("linux", "efi", "devicetree")
MULTI_PATH_KEYS = ("initrd", "devicetree-overlay")
# Entries larger than this are not boot entries; refusing them keeps a hostile file cheap.
MAX_ENTRY_SIZE = 1 << 20


@dataclass(frozen=True)
class BootEntry:
    """The parts of one entry file that matter to the cache."""

    file: Path
    title: str = ""
    paths: Tuple[str, ...] = field(default_factory=tuple)


def parse_entry(text: str, file: Path) -> BootEntry:
    title = ""
    paths: List[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if "\t" in key:  # the spec allows any whitespace between key and value
            key, _, rest = key.partition("\t")
            value = rest + " " + value
        value = value.strip()
        if key == "title":
            title = value
        elif key in SINGLE_PATH_KEYS and value:
            paths.append(value)
        elif key in MULTI_PATH_KEYS:
            paths.extend(value.split())
    return BootEntry(file, title, tuple(dict.fromkeys(paths)))


def read_entries(entries_dir: Path) -> List[BootEntry]:
    """Every readable ``*.conf`` regular file in the entries directory, sorted by name.

    A missing directory means no entries. Unreadable or oversized files are skipped: an entry the
    boot loader cannot read either references nothing.
    """
    entries: List[BootEntry] = []
    try:
        names = sorted(os.listdir(entries_dir))
    except (FileNotFoundError, NotADirectoryError):
        return entries
    for name in names:
        if not name.endswith(".conf") or name.startswith("."):
            continue
        path = entries_dir / name
        try:
            # Not by name (stat, then open): a FIFO swapped in between would block the read.
            text = read_regular(path, follow_symlinks=True, limit=MAX_ENTRY_SIZE).decode("utf-8", errors="replace")
        except (OSError, BootwatchError):
            continue
        entries.append(parse_entry(text, path))
    return entries


def reference_counts(entries: List[BootEntry]) -> Dict[str, int]:
    """How many entries name each path (an entry naming a path twice counts once)."""
    counts: Counter = Counter()
    for entry in entries:
        counts.update(set(entry.paths))
    return dict(counts)
