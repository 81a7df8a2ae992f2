"""Where a host's boot entries live: the ESP, XBOOTLDR and ``/boot``, found as ``bootctl`` finds them.

Pure functions over the mount table (:func:`bootwatch.linux.mountinfo`'s records) and a few
small files; nothing here mounts, probes a device or runs a program.

**Which mounts.** As ``bootctl`` (systemd's ``find_esp_and_warn`` / ``find_xbootldr_and_warn``):
the ESP is looked for at ``/efi``, ``/boot`` and ``/boot/efi`` in that order, XBOOTLDR at
``/boot``. A candidate counts only when a filesystem is mounted exactly there (the last mount on
that point in ``/proc/self/mountinfo``: what a path lookup reaches); ``/boot`` without a mount of
its own is a directory of the root filesystem.

**Which partition it is.** bootctl probes the device with libblkid; bootwatch may not open
devices, so it reads the partition type GUID the way udev recorded it: ``E:ID_PART_ENTRY_TYPE=``
in ``/run/udev/data/b<major>:<minor>`` (udev's database; the key is what ``blkid -p`` reports as
``PART_ENTRY_TYPE``). ``/sys/class/block/<dev>/uevent`` has ``PARTN`` and ``PARTNAME`` but no type
GUID, so it cannot tell. ``c12a7328-f81f-11d2-ba4b-00a0c93ec93b`` is the ESP,
``bc13c2ff-59e6-4262-a352-b275fd779f72`` XBOOTLDR. Without a udev record (containers, early
boot, hosts without udev) the fallback is bootctl's own relaxed check (``SYSTEMD_RELAX_ESP_CHECKS``):
a ``vfat`` filesystem with an ``EFI`` directory is taken as the ESP, and the :class:`Evidence`
says it was a guess. A separate ``/boot`` that is neither is ``/boot`` (:attr:`Role.BOOT`): its
entries are read all the same, as GRUB's and kernel-install's are.

**Automounts.** systemd's gpt-auto-generator (or an fstab ``x-systemd.automount``) puts an
``autofs`` mount on ``/efi`` or ``/boot`` that mounts the partition at the first access and
unmounts it after an idle time. Looking inside would mount it (and a watch would keep it
mounted), so an ``autofs`` that nothing is mounted over yet is reported as
:attr:`MountState.AUTOMOUNT`: present, contents unknown; its sources are *unknown*, never empty.
Its role follows gpt-auto-generator's mount points (``/efi``, ``/boot/efi``: the ESP; ``/boot``:
XBOOTLDR if an ESP is elsewhere, else the ESP).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bootwatch.entries.bls_type1 import read_type1_entries
from bootwatch.entries.grubenv import GrubEnv
from bootwatch.entries.model import EntrySource, Partition, PartitionKind, SourceRead, SourceResult
from bootwatch.entries.uki import UKI_DIR, read_uki_source
from bootwatch.errors import FileTooLargeError, NotRegularFileError
from bootwatch.linux import MountInfo, mountinfo
from bootwatch.safety import read_regular

ESP_TYPE_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
XBOOTLDR_TYPE_GUID = "bc13c2ff-59e6-4262-a352-b275fd779f72"
ESP_MOUNT_POINTS = ("/efi", "/boot", "/boot/efi")
XBOOTLDR_MOUNT_POINTS = ("/boot",)
UDEV_DATA = Path("/run/udev/data")
MAX_UDEV_RECORD = 64 * 1024
ENTRIES_DIR = Path("loader") / "entries"


class Role(enum.Enum):
    ESP = "esp"
    XBOOTLDR = "xbootldr"
    BOOT = "boot"
    """A separate ``/boot`` filesystem that is neither ESP nor XBOOTLDR as far as can be told."""


class MountState(enum.Enum):
    MOUNTED = "mounted"
    AUTOMOUNT = "automount"
    """An autofs trigger with nothing mounted on it yet: present, contents unknown."""


class Evidence(enum.Enum):
    TYPE_GUID = "partition type GUID (udev)"
    VFAT_EFI_DIR = "vfat with an EFI directory (no partition type known)"
    SEPARATE_BOOT = "a filesystem mounted at /boot"
    MOUNT_POINT = "an automount point (gpt-auto-generator's mount points)"


@dataclass(frozen=True)
class BootPartition:
    role: Role
    mount_point: str
    state: MountState
    evidence: Evidence
    mount: MountInfo

    @property
    def mounted(self) -> bool:
        return self.state is MountState.MOUNTED


@dataclass(frozen=True)
class BootLayout:
    """The host's boot partitions. ``boot`` is what is mounted at ``/boot`` when that is its own
    filesystem (the XBOOTLDR, the ESP, or a plain /boot), else None: /boot is a directory of root."""

    esp: BootPartition | None
    xbootldr: BootPartition | None
    boot: BootPartition | None

    @property
    def boot_on_root(self) -> bool:
        return self.boot is None

    @property
    def dollar_boot(self) -> BootPartition | None:
        """The spec's ``$BOOT``: XBOOTLDR if there is one, else the ESP."""
        return self.xbootldr or self.esp


@dataclass(frozen=True)
class EntryLocation:
    """One place entries may be: ``directory`` (``loader/entries`` or ``EFI/Linux``) on the
    partition mounted at ``root``; ``partition`` is what its entries' paths are relative to."""

    root: Path
    directory: Path
    partition: Partition
    unknown: str | None = None
    """Why nothing below ``root`` may be read (an automount not mounted): the source is unknown."""


def _top_mount(mounts: Sequence[MountInfo], mount_point: str) -> MountInfo | None:
    found = [m for m in mounts if m.mount_point == mount_point]
    return found[-1] if found else None


def partition_type(dev: str, udev_data: Path = UDEV_DATA) -> str | None:
    """The partition type GUID udev recorded for the block device ``dev`` (``major:minor``), or
    None when there is no readable record or it has none."""
    if not dev or ":" not in dev or not all(p.isdigit() for p in dev.split(":")):
        return None
    try:
        data = read_regular(udev_data / f"b{dev}", limit=MAX_UDEV_RECORD)
    except (FileTooLargeError, NotRegularFileError, OSError):
        return None
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.startswith("E:ID_PART_ENTRY_TYPE="):
            return line.partition("=")[2].strip().lower() or None
    return None


def _is_vfat_esp(mount: MountInfo, prefix: Path) -> bool:
    return mount.fstype == "vfat" and os.path.isdir(prefix / mount.mount_point.lstrip("/") / "EFI")


def _probe(mount: MountInfo, prefix: Path, udev_data: Path) -> tuple[Role, Evidence] | None:
    guid = partition_type(mount.dev, udev_data)
    if guid == ESP_TYPE_GUID:
        return Role.ESP, Evidence.TYPE_GUID
    if guid == XBOOTLDR_TYPE_GUID:
        return Role.XBOOTLDR, Evidence.TYPE_GUID
    if guid is None and _is_vfat_esp(mount, prefix):
        return Role.ESP, Evidence.VFAT_EFI_DIR
    return None


def detect_layout(mounts: Sequence[MountInfo], *, udev_data: Path = UDEV_DATA, prefix: Path = Path("/")) -> BootLayout:
    """The ESP, XBOOTLDR and /boot of the mount table ``mounts`` (see the module docstring).

    ``prefix`` is where the mount points are reached (``/``; a test's directory tree): only a
    mounted, non-autofs candidate is looked into, and only for its ``EFI`` directory.
    """
    seen: dict[str, BootPartition] = {}
    automounts: list[tuple[str, MountInfo]] = []
    for point in dict.fromkeys(ESP_MOUNT_POINTS + XBOOTLDR_MOUNT_POINTS):
        mount = _top_mount(mounts, point)
        if mount is None:
            continue
        if mount.fstype == "autofs":
            automounts.append((point, mount))
            continue
        probed = _probe(mount, prefix, udev_data)
        if probed is not None:
            seen[point] = BootPartition(probed[0], point, MountState.MOUNTED, probed[1], mount)
        elif point == "/boot":
            seen[point] = BootPartition(Role.BOOT, point, MountState.MOUNTED, Evidence.SEPARATE_BOOT, mount)
    esp = next((seen[p] for p in ESP_MOUNT_POINTS if p in seen and seen[p].role is Role.ESP), None)
    xbootldr = next((seen[p] for p in XBOOTLDR_MOUNT_POINTS if p in seen and seen[p].role is Role.XBOOTLDR), None)
    esp_elsewhere = esp is not None or any(point != "/boot" for point, _ in automounts)
    for point, mount in automounts:
        role = Role.XBOOTLDR if point == "/boot" and esp_elsewhere else Role.ESP
        found = BootPartition(role, point, MountState.AUTOMOUNT, Evidence.MOUNT_POINT, mount)
        seen[point] = found
        if role is Role.ESP and esp is None:
            esp = found
        elif role is Role.XBOOTLDR and xbootldr is None:
            xbootldr = found
    return BootLayout(esp, xbootldr, seen.get("/boot"))


def host_layout() -> BootLayout:
    """:func:`detect_layout` of this process's mount namespace (``/proc/self/mountinfo``)."""
    return detect_layout(mountinfo())


def _kind(part: BootPartition) -> PartitionKind:
    return PartitionKind.BOOT if part.mount_point == "/boot" else PartitionKind.ESP


def _location(part: BootPartition, relative: Path, prefix: Path) -> EntryLocation:
    root = prefix / part.mount_point.lstrip("/")
    unknown = None
    if not part.mounted:
        unknown = (f"{part.mount_point}: the {part.role.value.upper()} is an automount point that is not "
                   "mounted; its entries are unknown until it is (bootwatch does not mount it)")
    return EntryLocation(root, root / relative, Partition(_kind(part)), unknown)


def _partitions(layout: BootLayout) -> list[BootPartition]:
    found: list[BootPartition] = []
    for part in (layout.boot, layout.xbootldr, layout.esp):
        if part is not None and all(p.mount_point != part.mount_point for p in found):
            found.append(part)
    return found


def type1_locations(layout: BootLayout, *, prefix: Path = Path("/")) -> list[EntryLocation]:
    """Every ``loader/entries`` the Boot Loader Specification names for ``layout``: ``$BOOT``'s
    (XBOOTLDR or ``/boot``) and the ESP's, each once; ``/boot/loader/entries`` on the root
    filesystem (paths with ``/boot/``) when /boot is no filesystem of its own."""
    locations = [_location(p, ENTRIES_DIR, prefix) for p in _partitions(layout)]
    if layout.boot_on_root:
        root = prefix
        locations.insert(0, EntryLocation(root, root / "boot" / ENTRIES_DIR, Partition(PartitionKind.ROOT)))
    return locations


def uki_locations(layout: BootLayout, *, prefix: Path = Path("/")) -> list[EntryLocation]:
    """Where type #2 entries are: ``EFI/Linux`` on the ESP and on XBOOTLDR."""
    return [_location(p, UKI_DIR, prefix) for p in _partitions(layout) if p.role in (Role.ESP, Role.XBOOTLDR)]


def read_boot_entries(layout: BootLayout, *, prefix: Path = Path("/"),
                      grubenv: GrubEnv | None = None) -> list[SourceRead]:
    """The type #1 and type #2 entries of every location of ``layout``, one :class:`SourceRead`
    each: unknown for an automount that is not mounted (not looked into), known and empty where
    the directory does not exist (nothing is installed there), otherwise what the readers say."""
    reads: list[SourceRead] = []
    for source, locations in ((EntrySource.BLS, type1_locations(layout, prefix=prefix)),
                              (EntrySource.UKI, uki_locations(layout, prefix=prefix))):
        for location in locations:
            if location.unknown is not None:
                reads.append(SourceRead(SourceResult.unreadable(source, location.directory, location.unknown)))
            elif source is EntrySource.BLS:
                if not os.path.lexists(location.directory):
                    reads.append(SourceRead(SourceResult(source, location.directory)))
                else:
                    reads.append(read_type1_entries(location.directory, location.partition, grubenv=grubenv))
            else:
                reads.append(read_uki_source(location.root, location.partition))
    return reads
