"""The boot entry record that every entry source yields (issue 13's entry inventory).

An :class:`Entry` is one thing a boot loader can boot: where it came from (:class:`EntrySource`),
its id, title, kernel version, the files it needs and its options. Each :class:`BootFile` names
its path as the loader reads it, its :class:`FileRole` and the :class:`Partition` it lives on.

A source is read into a :class:`SourceResult`: the entries it holds, or *unknown* with the reason.
Unknown is not none: a source that cannot be read (or read completely) never passes for one with
no entries, because nothing may be uncached, trimmed or deleted on the strength of an empty list
that was really an unreadable file.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path


class EntrySource(enum.Enum):
    """What wrote an entry, and how it is read. The values are the JSON names of ``entries --json``."""

    BLS = "bls"
    """A Boot Loader Specification type #1 ``.conf`` file."""
    UKI = "uki"
    """A type #2 unified kernel image: the ``.efi`` file is the entry."""
    GRUB = "grub"
    """A ``menuentry`` of a generated ``grub.cfg`` (or a file it includes)."""


class FileRole(enum.Enum):
    """What a file is to the entry that needs it."""

    KERNEL = "kernel"
    INITRD = "initrd"
    DEVICETREE = "devicetree"
    EFI = "efi"
    """An EFI program the loader starts (BLS ``efi``, GRUB ``chainloader``)."""
    UKI = "uki"


class PartitionKind(enum.Enum):
    """How a file's path relates to the host's ``/boot``, as far as the entry tells.

    An entry names a filesystem (GRUB's ``search --fs-uuid``) or only implies one (a BLS entry's
    paths start at the partition that holds the entry). Which of the host's filesystems that is,
    the integration confirms from the host's mounts; the kind here is what the entry's path says.
    """

    BOOT = "boot"
    """The filesystem whose root is ``/boot`` (a separate ``/boot``, XBOOTLDR, or an ESP mounted
    at ``/boot``): ``/vmlinuz-6.1.0`` is ``/boot/vmlinuz-6.1.0`` on the host."""
    ROOT = "root"
    """The root filesystem, ``/boot`` a directory of it: the path carries the ``/boot/`` prefix."""
    ESP = "esp"
    """The EFI system partition, mounted elsewhere than ``/boot`` (``/efi``, ``/boot/efi``)."""
    UNKNOWN = "unknown"
    """The entry does not say (a device GRUB names that the path does not explain)."""


@dataclass(frozen=True)
class Partition:
    """The filesystem a boot file is on, identified as the entry identifies it.

    ``fs_uuid`` is the filesystem UUID the loader searches for (GRUB's ``search --fs-uuid``),
    ``label`` a filesystem label (``search --label``), ``device`` a GRUB device name
    (``set root='hd0,gpt2'``, without parentheses). All three are None when the entry only implies
    the partition: a BLS entry's own partition, or GRUB's ``$root`` as it was when GRUB started
    (the partition holding ``grub.cfg``).
    """

    kind: PartitionKind
    fs_uuid: str | None = None
    label: str | None = None
    device: str | None = None
    search_file: str | None = None
    """GRUB's ``search --file FILE --set=root``: the partition is the first filesystem holding
    FILE, which only the host can tell (``kind`` is then UNKNOWN; the inventory resolves it)."""


BOOT_PREFIX = "/boot/"


@dataclass(frozen=True)
class BootFile:
    """One file an entry needs: the path as the loader reads it, relative to the root of its partition."""

    path: str
    role: FileRole
    partition: Partition

    def boot_path(self, *, root_subvolume: str = "") -> str | None:
        """The path relative to the host's ``/boot`` (the key boom's cache index uses), or None
        when the file is not under ``/boot`` (on the ESP, or the entry does not say where).

        The one place the ``/boot/`` prefix rule lives: on the root filesystem the loader reads
        ``/boot/vmlinuz-6.1.0``, which is ``/vmlinuz-6.1.0`` relative to ``/boot``.
        ``root_subvolume`` is the btrfs subvolume mounted at ``/`` (the root field of
        ``/proc/self/mountinfo``, ``/@``), for a caller that knows the file is on the root
        filesystem: the loader reads that filesystem from its top, so ``/@/boot/vmlinuz-6.1.0`` is
        ``/boot/vmlinuz-6.1.0`` on the host. Any other subvolume's ``boot`` (a snapshot's,
        ``/@/.snapshots/12/snapshot/boot/...``) is not the host's ``/boot``: None.
        """
        kind = self.partition.kind
        if kind is PartitionKind.BOOT:
            return self.path
        if kind is PartitionKind.ESP:
            return None
        prefix = root_subvolume.rstrip("/") + BOOT_PREFIX
        if self.path.startswith(prefix) and (root_subvolume.strip("/") or kind is PartitionKind.ROOT):
            return self.path[len(prefix) - 1:]
        return None


@dataclass(frozen=True)
class Entry:
    """One boot entry, whatever wrote it.

    ``id`` is unique within its source (for GRUB, the ``>``-joined path of menu ids GRUB's
    ``default`` and ``saved_entry`` use). ``version`` is the kernel version when the entry states
    it or its kernel's file name does, else None: reading it from the image is the caller's job.
    ``options`` is the kernel command line as the loader passes it, variables expanded where
    their value is known. ``origin`` is the file the entry was read from (an included file for
    grub-btrfs's snapshot entries).
    """

    source: EntrySource
    id: str
    title: str
    version: str | None
    files: tuple[BootFile, ...]
    options: str
    origin: Path
    machine_id: str | None = None
    """A BLS entry's ``machine-id``: which installation wrote it."""
    sort_key: str | None = None
    """A BLS entry's ``sort-key`` (the OS's ``IMAGE_ID`` or ``ID``), which orders the loader's menu."""

    def files_with_role(self, role: FileRole) -> tuple[BootFile, ...]:
        return tuple(f for f in self.files if f.role is role)


@dataclass(frozen=True)
class SourceResult:
    """What one entry source held: its entries, or unknown with the reason.

    ``unknown`` is None when the source was read completely: ``entries`` is then the whole
    truth, also when it is empty. Otherwise it is one line saying what could not be read, and
    ``entries`` holds only what could (for display): never to be taken as all there is.
    """

    source: EntrySource
    location: Path
    entries: tuple[Entry, ...] = ()
    unknown: str | None = None

    @property
    def known(self) -> bool:
        return self.unknown is None

    @classmethod
    def unreadable(cls, source: EntrySource, location: Path, reason: str,
                   partial: tuple[Entry, ...] = ()) -> SourceResult:
        return cls(source, location, partial, reason)


@dataclass(frozen=True)
class SourceRead:
    """A :class:`SourceResult` and the files of the source that are no entry (a FIFO among the
    ``.conf`` files, a UKI without ``.osrel``): one line each, for a warning. Refused files do not
    make the source unknown: a boot loader does not boot them either."""

    result: SourceResult
    refused: tuple[str, ...] = ()


_BOOT_COUNTER = re.compile(r"\+\d+(-\d+)?$")


def entry_id(file_name: str, suffix: str) -> str:
    """A BLS entry's id as systemd-boot and ``bootctl list`` give it: the file name with the
    boot-counting counter before ``suffix`` (``.conf``, ``.efi``) removed and the suffix kept
    (``fedora-6.1+3-1.conf`` is ``fedora-6.1.conf``). The counter is no part of the entry's name
    (the Boot Loader Specification's boot counting), so the id stays while the counter counts; it
    is what ``loader.conf``'s ``default`` and the ``LoaderEntryDefault`` EFI variable name."""
    if not file_name.lower().endswith(suffix):
        return file_name
    stem = file_name[:-len(suffix)]
    return (_BOOT_COUNTER.sub("", stem) or stem) + file_name[len(stem):]
