"""Type #2 boot entries: unified kernel images (UKIs) in ``EFI/Linux/*.efi``.

A UKI is one PE/COFF file (systemd-stub with the kernel, initrd and metadata as sections, as
``ukify`` or the ``objcopy`` recipe of systemd-stub(7) builds it); the file *is* the entry. Read
here, never executed, with :mod:`struct` over a bounded part of the file:

- the DOS header (``MZ``, ``e_lfanew`` at 0x3C), the ``PE\\0\\0`` signature, the COFF file header
  and the section table after the optional header (the PE format, Microsoft's "PE Format"
  specification);
- the sections ``.osrel`` (an os-release(5) file), ``.uname`` (the kernel version) and ``.cmdline``
  (the kernel command line), each at most :data:`MAX_TEXT_SECTION`; the presence of ``.linux``,
  ``.initrd`` and ``.dtb`` is noted (their contents are not read).

The entry, as systemd-boot makes it (its ``config_entry_add_unified``) and the Boot Loader
Specification's type #2 rules say:

- ``id``: the file name with a boot-counting counter removed (``NAME+LEFT[-DONE].efi`` is
  ``NAME.efi``), as ``bootctl list`` shows it (:func:`~bootwatch.entries.model.entry_id`);
- ``title``: ``.osrel``'s ``PRETTY_NAME``, else ``NAME``, else ``ID``, else the id;
- ``version``: ``.uname`` when present, since :attr:`Entry.version` is the kernel version the rest
  of bootwatch compares (``bootctl list`` of systemd 252 shows ``.osrel``'s ``VERSION`` instead,
  "12 (bookworm)", which names the OS release, not the kernel); else ``.osrel``'s
  ``IMAGE_VERSION``, ``VERSION``, ``VERSION_ID`` or ``BUILD_ID``, the first set (systemd-boot's
  order);
- ``files``: the UKI itself, :attr:`~bootwatch.entries.model.FileRole.UKI`;
- ``options``: ``.cmdline``, NUL padding and surrounding white space removed.

A UKI without ``.osrel`` or without ``.linux`` is no boot entry systemd-boot shows: it is
reported in :attr:`SourceRead.refused` and yields nothing. A file that is not a PE image, or
whose headers point outside the file, name more than :data:`MAX_SECTIONS` sections or a text
section larger than its bound, or that cannot be read, makes the source *unknown* with a reason
naming the file: the firmware might still boot it, so bootwatch does not pretend it is absent.
For the restore decision: a UKI's only reference is itself, so a UKI that is gone is an entry that
is gone, and restoring it would resurrect an entry its owner removed (the kernel package's
``kernel-install remove``, ``sdbootutil``). The entry inventory therefore never counts a UKI as
needed by its own entry; only another entry that names its path (a type #1 ``efi`` line, a GRUB
``chainloader``) makes it needed.

Time and memory are bounded by the headers' size (:data:`MAX_HEADER_OFFSET`, :data:`MAX_SECTIONS`)
and the text sections' bound, never by the file's size.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

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
from bootwatch.errors import NotRegularFileError
from bootwatch.safety import open_regular

UKI_DIR = Path("EFI") / "Linux"
"""Where UKIs live, relative to the root of the ESP and of ``$BOOT`` (XBOOTLDR)."""
MAX_HEADER_OFFSET = 1 << 16
"""``e_lfanew`` beyond this is refused: real stubs put the PE header within the first few hundred bytes."""
MAX_SECTIONS = 96
"""The PE format's own limit (the Windows loader refuses more)."""
MAX_TEXT_SECTION = 64 * 1024
"""``.osrel``, ``.cmdline`` and ``.uname`` are text of a few hundred bytes; larger is refused."""
MAX_UNAME = 256
MAX_FILES = 4096
"""More ``*.efi`` files than this in one directory make the source unknown (a hostile directory)."""

_DOS = struct.Struct("<2s58xI")
_COFF = struct.Struct("<4sHHIIIHH")
_SECTION = struct.Struct("<8sIIIIIIHHI")
_PE_MAGIC = (0x10B, 0x20B)
TEXT_SECTIONS = (".osrel", ".cmdline", ".uname")
NOTED_SECTIONS = (".linux", ".initrd", ".dtb")


class UkiFormatError(ValueError):
    """The file is not a PE image bootwatch can read; the message says what is wrong."""


@dataclass(frozen=True)
class Section:
    name: str
    offset: int
    """``PointerToRawData``: where the section's bytes start in the file."""
    size: int
    """The bytes that are the section's contents: ``VirtualSize``, or ``SizeOfRawData`` if smaller
    (the raw data is padded to the file alignment; the loader maps ``VirtualSize`` bytes)."""


@dataclass(frozen=True)
class Uki:
    """What one UKI says about itself."""

    path: Path
    sections: tuple[Section, ...]
    osrel: dict[str, str] | None
    uname: str | None
    cmdline: str | None

    def has(self, name: str) -> bool:
        return any(s.name == name for s in self.sections)


def parse_sections(header: bytes, file_size: int) -> tuple[Section, ...]:
    """The section table of the PE image whose first bytes are ``header`` (at least up to the end
    of its section table), for a file of ``file_size`` bytes; :class:`UkiFormatError` if malformed."""
    if header[:2] != b"MZ":
        raise UkiFormatError("no 'MZ' signature: not a PE image")
    if len(header) < _DOS.size:
        raise UkiFormatError(f"{len(header)} bytes, too short for a DOS header")
    pe_offset: int = _DOS.unpack_from(header)[1]
    if pe_offset > MAX_HEADER_OFFSET or pe_offset + _COFF.size + 2 > len(header):
        raise UkiFormatError(f"the PE header offset {pe_offset:#x} is beyond the file's header bytes")
    signature, _machine, count, _time, _symbols, _nsymbols, optional_size, _flags = \
        _COFF.unpack_from(header, pe_offset)
    if signature != b"PE\0\0":
        raise UkiFormatError(f"no 'PE\\0\\0' signature at {pe_offset:#x}")
    if count == 0 or count > MAX_SECTIONS:
        raise UkiFormatError(f"{count} sections (a PE image has 1 to {MAX_SECTIONS})")
    optional = pe_offset + _COFF.size
    if optional_size < 2 or struct.unpack_from("<H", header, optional)[0] not in _PE_MAGIC:
        raise UkiFormatError("no PE32 or PE32+ optional header")
    table = optional + optional_size
    if table + count * _SECTION.size > len(header):
        raise UkiFormatError(f"the section table ({count} sections at {table:#x}) is beyond the file's header bytes")
    sections = []
    for i in range(count):
        raw_name, virtual_size, _va, raw_size, raw_offset, *_ = _SECTION.unpack_from(header, table + i * _SECTION.size)
        name = raw_name.rstrip(b"\0").decode("ascii", errors="replace")
        size = min(virtual_size, raw_size) if virtual_size else raw_size
        if raw_offset + size > file_size:
            raise UkiFormatError(f"section {name!r} ({size} bytes at {raw_offset:#x}) extends beyond the end "
                                 f"of the file ({file_size} bytes)")
        sections.append(Section(name, raw_offset, size))
    return tuple(sections)


def header_size_needed(header: bytes) -> int | None:
    """How many bytes from the start hold the section table, once the COFF header is in ``header``;
    None if ``header`` is too short to tell (the caller then reads the bound and lets
    :func:`parse_sections` refuse)."""
    if len(header) < _DOS.size or header[:2] != b"MZ":
        return None
    pe_offset: int = _DOS.unpack_from(header)[1]
    if pe_offset > MAX_HEADER_OFFSET or pe_offset + _COFF.size > len(header):
        return None
    count: int
    optional_size: int
    count, optional_size = struct.unpack_from("<2xH12xH", header, pe_offset + 4)
    return pe_offset + _COFF.size + optional_size + min(count, MAX_SECTIONS + 1) * _SECTION.size


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): ``KEY=value`` lines, values optionally in single or double quotes (with
    ``\\`` escapes in double quotes), ``#`` comments. Read, never evaluated as shell."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r'\\(["\\`$])', r"\1", value)
        values[key] = value
    return values


def _pread_exact(fd: int, size: int, offset: int, path: Path) -> bytes:
    chunks, done = [], 0
    while done < size:
        chunk = os.pread(fd, size - done, offset + done)
        if not chunk:
            raise UkiFormatError(f"the file ended at {offset + done} bytes while reading it (it shrank)")
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def _text(fd: int, section: Section, path: Path, limit: int) -> str:
    if section.size > limit:
        raise UkiFormatError(f"section {section.name!r} is {section.size} bytes, more than the {limit} "
                             "bootwatch reads of it")
    data = _pread_exact(fd, section.size, section.offset, path)
    return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def read_uki(path: Path, *, device: tuple[int, Path] | None = None) -> Uki:
    """The sections and text of the UKI at ``path``.

    Raises :class:`UkiFormatError` for a file that is no PE image or whose headers do not fit in
    it, :class:`OSError` (:class:`~bootwatch.errors.NotRegularFileError` among them) when it
    cannot be read. ``device``: ``(st_dev, directory)`` the file must be on (see
    :func:`bootwatch.safety.open_regular`).
    """
    fd = open_regular(path, follow_symlinks=True, device=device)
    try:
        return read_uki_at(fd, path)
    finally:
        os.close(fd)


def read_uki_at(fd: int, path: Path) -> Uki:
    """:func:`read_uki` of the file open at ``fd`` (as :func:`bootwatch.safety.open_regular`
    opens), which ``path`` names; read with ``pread``, so the descriptor's offset is left alone."""
    file_size = os.fstat(fd).st_size
    header = os.pread(fd, 4096, 0)
    needed = header_size_needed(header)
    if needed is not None and needed > len(header):
        header = os.pread(fd, min(needed, MAX_HEADER_OFFSET + 4096), 0)
    sections = parse_sections(header, file_size)
    texts: dict[str, str] = {}
    for section in sections:
        if section.name in TEXT_SECTIONS and section.name not in texts:
            limit = MAX_UNAME if section.name == ".uname" else MAX_TEXT_SECTION
            texts[section.name] = _text(fd, section, path, limit)
    osrel = parse_os_release(texts[".osrel"]) if ".osrel" in texts else None
    uname = texts[".uname"].strip() if ".uname" in texts else None
    cmdline = " ".join(texts[".cmdline"].split()) if ".cmdline" in texts else None
    return Uki(path, sections, osrel, uname or None, cmdline)


_TITLE_KEYS = ("PRETTY_NAME", "NAME", "ID")
_VERSION_KEYS = ("IMAGE_VERSION", "VERSION", "VERSION_ID", "BUILD_ID")


def uki_entry(uki: Uki, partition: Partition, relative_path: str) -> Entry | None:
    """The boot entry of ``uki`` (see the module docstring), or None when systemd-boot would not
    show it (no ``.osrel`` or no ``.linux``). ``relative_path``: its path from the partition's root."""
    if uki.osrel is None or not uki.has(".linux"):
        return None
    osrel = uki.osrel
    ident = entry_id(uki.path.name, ".efi")
    title = next((osrel[k] for k in _TITLE_KEYS if osrel.get(k)), ident)
    version = uki.uname or next((osrel[k] for k in _VERSION_KEYS if osrel.get(k)), None)
    return Entry(EntrySource.UKI, ident, title, version, (BootFile(relative_path, FileRole.UKI, partition),),
                 uki.cmdline or "", uki.path)


def _reason(e: OSError) -> str:
    if isinstance(e, NotRegularFileError):
        return e.strerror or str(e)
    return os.strerror(e.errno).lower() if e.errno else str(e)


def read_uki_source(partition_root: Path, partition: Partition) -> SourceRead:
    """Every ``EFI/Linux/*.efi`` below ``partition_root`` (the mount point of the ESP or ``$BOOT``),
    sorted by name. A missing ``EFI/Linux`` is known to hold no UKI; one that cannot be listed,
    and any ``.efi`` that cannot be read or parsed, make the result unknown (first reason kept,
    what could be read kept as the partial entries)."""
    directory = partition_root / UKI_DIR
    try:
        device = os.stat(directory).st_dev
        names = sorted(n for n in os.listdir(directory) if n.lower().endswith(".efi") and not n.startswith("."))
    except FileNotFoundError:
        return SourceRead(SourceResult(EntrySource.UKI, directory))
    except OSError as e:
        return SourceRead(SourceResult.unreadable(EntrySource.UKI, directory,
                                               f"{directory}: the UKI directory cannot be read ({_reason(e)})"))
    if len(names) > MAX_FILES:
        return SourceRead(SourceResult.unreadable(EntrySource.UKI, directory,
                                               f"{directory}: {len(names)} .efi files, more than {MAX_FILES}"))
    entries: list[Entry] = []
    refused: list[str] = []
    problem: str | None = None
    for name in names:
        path = directory / name
        try:
            uki = read_uki(path, device=(device, directory))
        except FileNotFoundError:
            if os.path.lexists(path):
                problem = problem or f"{path}: a UKI that cannot be read (a dangling symlink)"
            continue
        except NotRegularFileError as e:
            refused.append(f"{path}: {_reason(e)}; not a UKI")
            continue
        except OSError as e:
            problem = problem or f"{path}: a UKI that cannot be read ({_reason(e)})"
            continue
        except UkiFormatError as e:
            problem = problem or f"{path}: not a UKI bootwatch can read: {e}"
            continue
        entry = uki_entry(uki, partition, "/" + (UKI_DIR / name).as_posix())
        if entry is None:
            refused.append(f"{path}: no .osrel or no .linux section; systemd-boot shows no entry for it")
        else:
            entries.append(entry)
    if problem is not None:
        return SourceRead(SourceResult.unreadable(EntrySource.UKI, directory, problem, tuple(entries)),
                          tuple(refused))
    return SourceRead(SourceResult(EntrySource.UKI, directory, tuple(entries)), tuple(refused))
