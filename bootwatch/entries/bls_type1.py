"""Boot Loader Specification type #1 entries as :class:`~bootwatch.entries.model.Entry` records.

The files are read as :func:`bootwatch.entries.bls.read_entry_texts` reads them (the cache's
reader: ``*.conf`` regular files, bounded, ``O_NONBLOCK``, a symlink out of the directory's
filesystem refused), and parsed by the spec's rules (the UAPI group's Boot Loader
Specification, "Type #1 Boot Loader Entry Keys"):

- one ``KEY VALUE`` per line, separated by white space; ``#`` lines are comments;
- ``title``, ``version``, ``machine-id``, ``sort-key``, ``linux``, ``efi``, ``devicetree``: one
  value; a key given twice keeps the last (systemd's ``bootspec.c`` does the same);
- ``initrd``: repeatable, each line one or several paths (Fedora's GRUB ``blscfg`` splits a line
  into words: ``initrd /initramfs-X.img $tuned_initrd``); ``devicetree-overlay``: several paths;
- ``options``: repeatable, the lines joined with a space in order;
- other keys (``architecture``, GRUB's ``grub_users``, ``grub_arg``, ``grub_class``, ``id``)
  are not needed to tell which files an entry needs, and are skipped.

The id is the file name as systemd-boot gives it (:func:`~bootwatch.entries.model.entry_id`:
``NAME+LEFT-DONE.conf`` and ``NAME+LEFT.conf`` are ``NAME.conf``); the title is ``title``, else
the id. An entry with neither ``linux`` nor ``efi`` is invalid by the spec and no loader boots
it: it is refused (:attr:`~bootwatch.entries.model.SourceRead.refused`), not yielded.

Paths are relative to the partition holding the entry: the caller says which one it is
(:class:`~bootwatch.entries.model.Partition`), and
:meth:`~bootwatch.entries.model.BootFile.boot_path` maps them to ``/boot`` (a ``/boot/`` prefix
when the entry is on the root filesystem).

GRUB's variables (``$kernelopts``, ``$tuned_params``, ``$tuned_initrd``, which RHEL 8 and Fedora
write, the values in ``grubenv``) are expanded by :func:`bootwatch.entries.grub.expand_words`
with the given :class:`~bootwatch.entries.grubenv.GrubEnv`: an unset one is dropped from a path
and kept as written in options, with one debug line (no ``grubenv``: every variable is unset).
Only when the ``grubenv`` could not be read and a *path* needs a variable is the source unknown:
which files the entry needs cannot then be told.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from bootwatch.entries.bls import read_entry_texts
from bootwatch.entries.grub import expand_words
from bootwatch.entries.grubenv import GrubEnv
from bootwatch.entries.model import (
    BootFile,
    Entry,
    EntrySource,
    FileRole,
    Partition,
    SourceRead,
    SourceResult,
    entry_id,
)

log = logging.getLogger("bootwatch.entries.bls_type1")

SINGLE_KEYS = frozenset({"title", "version", "machine-id", "sort-key", "linux", "efi", "devicetree"})
_LINE = re.compile(r"(\S+)(?:\s+(.*))?")


class EntryVariableError(ValueError):
    """A path of the entry needs a GRUB variable from a ``grubenv`` that could not be read."""


def _words(value: str, env: GrubEnv | None, origin: Path, *, paths: bool) -> list[str]:
    if "$" not in value:
        return value.split()
    variables = env.values if env is not None else {}
    try:
        return expand_words(value, variables, paths=paths, origin=origin,
                            env_unknown=env.unknown if env is not None else None)
    except ValueError as e:
        raise EntryVariableError(str(e)) from None


def parse_type1(text: str, origin: Path, partition: Partition, *, grubenv: GrubEnv | None = None) -> Entry | None:
    """The entry of one ``.conf`` file's ``text`` (see the module docstring); None if it names
    neither ``linux`` nor ``efi``. :class:`EntryVariableError` as the module docstring says."""
    single: dict[str, str] = {}
    initrds: list[str] = []
    overlays: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            continue
        key, value = match.group(1), (match.group(2) or "").strip()
        if key in SINGLE_KEYS:
            single[key] = value
        elif key == "initrd":
            initrds.extend(_words(value, grubenv, origin, paths=True))
        elif key == "devicetree-overlay":
            overlays.extend(_words(value, grubenv, origin, paths=True))
        elif key == "options":
            options.extend(_words(value, grubenv, origin, paths=False))
    files: list[BootFile] = []
    for key, role in (("linux", FileRole.KERNEL), ("efi", FileRole.EFI)):
        if single.get(key):
            files.extend(BootFile(p, role, partition) for p in _words(single[key], grubenv, origin, paths=True)[:1])
    if not files:
        return None
    files.extend(BootFile(p, FileRole.INITRD, partition) for p in initrds)
    if single.get("devicetree"):
        files.extend(BootFile(p, FileRole.DEVICETREE, partition)
                     for p in _words(single["devicetree"], grubenv, origin, paths=True)[:1])
    files.extend(BootFile(p, FileRole.DEVICETREE, partition) for p in overlays)
    ident = entry_id(origin.name, ".conf")
    return Entry(EntrySource.BLS, ident, single.get("title") or ident, single.get("version") or None,
                 tuple(files), " ".join(options), origin, machine_id=single.get("machine-id") or None,
                 sort_key=single.get("sort-key") or None)


def read_type1_entries(entries_dir: Path, partition: Partition, *, grubenv: GrubEnv | None = None) -> SourceRead:
    """Every type #1 entry in ``entries_dir`` (``<partition>/loader/entries``), sorted by file name.

    Unknown (with the reason, and the entries that could be read) when the directory is missing,
    not a directory or cannot be listed, when a ``.conf`` cannot be read, or when a path needs a
    variable of an unreadable ``grubenv``. A missing directory is unknown here, as for the cache's
    reader: the caller, which knows the layout, asks only where entries belong and decides
    whether a missing directory means none (a ``$BOOT`` without ``loader/entries``).
    """
    texts = read_entry_texts(entries_dir)
    entries: list[Entry] = []
    refused = list(texts.refused)
    problem = texts.problem
    for path, text in texts.texts:
        try:
            entry = parse_type1(text, path, partition, grubenv=grubenv)
        except EntryVariableError as e:
            problem = problem or f"{path}: {e}"
            continue
        if entry is None:
            refused.append(f"{path}: neither 'linux' nor 'efi'; not a valid boot entry")
        else:
            entries.append(entry)
    if problem is not None:
        return SourceRead(SourceResult.unreadable(EntrySource.BLS, entries_dir, problem, tuple(entries)),
                          tuple(refused))
    return SourceRead(SourceResult(EntrySource.BLS, entries_dir, tuple(entries)), tuple(refused))
