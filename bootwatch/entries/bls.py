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
from typing import Any

from bootwatch.errors import FileTooLargeError, NotRegularFileError
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
    paths: tuple[str, ...] = field(default_factory=tuple)


def parse_entry(text: str, file: Path) -> BootEntry:
    title = ""
    paths: list[str] = []
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


@dataclass(frozen=True)
class EntriesRead:
    """The entries that could be read, and why that may not be all of them.

    ``problem`` is None when the directory was listed and every ``*.conf`` in it was read (or
    refused for what it is: not a regular file). Otherwise it is one line saying what
    could not be read; the entries are then only a part of the truth, never "no entries".
    ``refused``: one line for each ``*.conf`` refused for what it is, for a warning.
    """

    entries: list[BootEntry]
    problem: str | None = None
    refused: list[str] = field(default_factory=list)


def read_entry_source(entries_dir: Path) -> EntriesRead:
    """Every readable ``*.conf`` regular file in the entries directory, sorted by name.

    A missing directory, one that is not a directory or cannot be listed, and an entry file
    that cannot be read (EIO, EACCES, a symlink loop, larger than :data:`MAX_ENTRY_SIZE`) are
    problems: a boot loader may still see what bootwatch could not read (a long comment block
    is still an entry). Files that are not regular (a FIFO: opened without blocking) are no
    boot entries and are skipped (``refused`` says so), and so is an entry that is a symlink out
    of the entries directory's filesystem (``/proc/kmsg``, whose read would block): a boot loader,
    reading that filesystem alone, cannot follow it either. Every file is read with
    ``O_NONBLOCK`` kept set.
    """
    texts = read_entry_texts(entries_dir)
    return EntriesRead([parse_entry(text, path) for path, text in texts.texts], texts.problem, texts.refused)


@dataclass(frozen=True)
class EntryTexts:
    """The text of each ``*.conf`` that could be read, with :class:`EntriesRead`'s ``problem`` and ``refused``."""

    texts: list[tuple[Path, str]]
    problem: str | None = None
    refused: list[str] = field(default_factory=list)


def read_entry_texts(entries_dir: Path) -> EntryTexts:
    """The reading half of :func:`read_entry_source` (same rules), for every parser of type #1 entries."""
    texts: list[tuple[Path, str]] = []
    refused: list[str] = []
    try:
        device = os.stat(entries_dir).st_dev
        names = sorted(os.listdir(entries_dir))
    except FileNotFoundError:
        return EntryTexts(texts, f"{entries_dir}: the boot entries directory does not exist")
    except NotADirectoryError:
        return EntryTexts(texts, f"{entries_dir}: the boot entries directory is not a directory")
    except OSError as e:
        return EntryTexts(texts, f"{entries_dir}: the boot entries directory cannot be read "
                                 f"({os.strerror(e.errno).lower() if e.errno else e})")
    problem: str | None = None
    for name in names:
        if not name.endswith(".conf") or name.startswith("."):
            continue
        path = entries_dir / name
        try:
            # Not by name (stat, then open): a FIFO swapped in between would block the read.
            text = read_regular(path, follow_symlinks=True, limit=MAX_ENTRY_SIZE,
                                device=(device, entries_dir)).decode("utf-8", errors="replace")
        except NotRegularFileError as e:
            refused.append(f"{path}: {e.strerror}; not a boot entry")  # a FIFO, a device, /proc/kmsg
            continue
        except FileTooLargeError:
            problem = problem or (f"{path}: a boot entry larger than {MAX_ENTRY_SIZE} bytes, not read "
                                  "(a boot loader may still read it)")
            continue
        except FileNotFoundError:
            if not os.path.lexists(path):
                continue  # removed since the listing
            problem = problem or f"{path}: a boot entry that cannot be read (a dangling symlink)"
            continue
        except OSError as e:
            problem = problem or (f"{path}: a boot entry that cannot be read "
                                  f"({os.strerror(e.errno).lower() if e.errno else e})")
            continue
        texts.append((path, text))
    return EntryTexts(texts, problem, refused)


def read_entries(entries_dir: Path) -> list[BootEntry]:
    """The entries :func:`read_entry_source` could read (whatever could not be read)."""
    return read_entry_source(entries_dir).entries


class References(dict[str, int]):
    """How many boot entries name each path, and whether that is the whole truth.

    ``unknown`` is None when it is; otherwise one line saying why not. While references are
    unknown nothing may be uncached, trimmed, un-restored or deleted on their strength.
    ``confirmable``: the reason is a judgement from history (no trustworthy record of an
    earlier read, the boot or entries directory not on the mount it was, every recorded entry
    gone at once), which an operator may overrule (``clean --force``); a source that cannot be
    read is never overruled.
    ``boot_moved``: the boot directory is not the filesystem it was; nothing is restored into it.
    ``observed``: the record of this read when every entry could be read (what ``clean --force``
    records); ``record``: what the lock holder records when the transaction ends, if anything.
    """

    def __init__(self, counts: dict[str, int] | None = None, *, unknown: str | None = None,
                 confirmable: bool = False, boot_moved: bool = False, entry_files: int = 0,
                 record: dict[str, Any] | None = None, observed: dict[str, Any] | None = None) -> None:
        super().__init__(counts or {})
        self.unknown = unknown
        self.confirmable = confirmable
        self.boot_moved = boot_moved
        self.entry_files = entry_files
        self.record = record
        self.observed = observed


def reference_counts(entries: list[BootEntry]) -> dict[str, int]:
    """How many entries name each path (an entry naming a path twice counts once)."""
    counts: Counter[str] = Counter()
    for entry in entries:
        counts.update(set(entry.paths))
    return dict(counts)
