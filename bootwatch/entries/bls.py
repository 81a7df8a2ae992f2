"""Reading a directory of Boot Loader Specification type #1 entries (``<entries>/*.conf``).

The texts are parsed by :mod:`bootwatch.entries.bls_type1`; this module only reads them, safely:
regular files, bounded, ``O_NONBLOCK``, a symlink out of the directory's filesystem refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bootwatch.errors import FileTooLargeError, NotRegularFileError
from bootwatch.safety import read_regular

# Entries larger than this are not boot entries; refusing them keeps a hostile file cheap.
MAX_ENTRY_SIZE = 1 << 20


@dataclass(frozen=True)
class EntryTexts:
    """The text of each ``*.conf`` that could be read.

    ``problem`` is None when the directory was listed and every ``*.conf`` in it was read (or
    refused for what it is: not a regular file). Otherwise it is one line saying what could not
    be read; the texts are then only a part of the truth, never "no entries". ``refused``: one
    line for each ``*.conf`` refused for what it is, for a warning.
    """

    texts: list[tuple[Path, str]]
    problem: str | None = None
    refused: list[str] = field(default_factory=list)


def read_entry_texts(entries_dir: Path) -> EntryTexts:
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
