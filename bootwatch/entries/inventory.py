"""The host's boot entries, whatever wrote them: one inventory read from every entry source.

**Where the sources are.** With ``[entries] sources = "auto"`` every source the host has is read:

- BLS type #1 entries in ``<boot>/loader/entries`` (or ``[paths] entries`` when set), and in the
  ESP's ``loader/entries``;
- type #2 UKIs in ``EFI/Linux`` on the boot directory and on the ESP;
- GRUB's generated ``grub.cfg`` (``<boot>/grub/grub.cfg``, ``<boot>/grub2/grub.cfg``) and the
  files it includes (grub-btrfs's snapshot entries).

A location that does not exist holds no entries, as far as ``auto`` is concerned. A source named
in an explicit list (``sources = ["grub"]``) is expected: none of its locations there makes it
unknown; found in any one of them (BLS entries only on the ESP), it is known.
For the host's own ``/boot`` the ESP is found as ``bootctl`` finds it
(:mod:`bootwatch.entries.layout`); ``[entries] esp`` names it instead, and a boot directory other
than ``/boot`` (a test's, ``--boot-dir``) has no ESP unless ``esp`` names one.

**Cache keys.** Boom's cache index keys a path by where it is relative to ``/boot``
(``/vmlinuz-6.1.0``), and boom joins the key to its boot path to find the file. Every file an
entry needs gets its key by that one rule (:meth:`Inventory.key`):

- a file on the boot partition, or under ``/boot`` on the root filesystem (the loader reads
  ``/boot/vmlinuz-6.1.0`` there): the path relative to the boot directory, ``/vmlinuz-6.1.0``;
- a file on the ESP: its path relative to the boot directory too, through the ESP's mount point:
  ``/efi/EFI/Linux/arch.efi`` for an ESP mounted at ``/boot/efi``, and
  ``/../efi/EFI/Linux/arch.efi`` for one mounted at ``/efi``. A file below ``/boot`` never has a
  ``..`` component, so an ESP key cannot collide with a ``/boot`` key; boom, joining the key to
  ``/boot``, finds the very file (``/boot/../efi/EFI/Linux/arch.efi`` is ``/efi/EFI/Linux/arch.efi``);
- a file the entry places nowhere bootwatch can tell (another disk's filesystem UUID, a btrfs
  snapshot's ``boot``, a path GRUB builds at boot): no key. It is listed, never cached.

**GRUB's ``search --file FILE``** picks the first filesystem that holds FILE. bootwatch looks
for FILE where GRUB would find it among the host's partitions: the boot partition (when the boot
directory is one), the root filesystem (the directory holding the boot directory) and the ESP.
FILE on exactly one of them: that is the partition, keyed as above. On none (deleted, the case a
restore is for) or on several (GRUB's disk order decides, which bootwatch cannot see): the key
is what the path's own shape says, as for an entry without ``search``, and every key the file
could have on any of the host's partitions counts as referenced (:meth:`Inventory.keys`):
"cannot tell" never becomes "referenced by nothing".

Pure reading: nothing here mounts, writes or runs a program.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bootwatch.entries.bls_type1 import read_type1_entries
from bootwatch.entries.grub import path_kind, read_grub_config
from bootwatch.entries.grubenv import GrubEnv, read_grubenv
from bootwatch.entries.layout import BootLayout, detect_layout, type1_locations, uki_locations
from bootwatch.entries.model import (
    BootFile,
    Entry,
    EntrySource,
    Partition,
    PartitionKind,
    SourceRead,
    SourceResult,
)
from bootwatch.entries.uki import read_uki_source
from bootwatch.linux import MountInfo, mountinfo

HOST_BOOT = Path("/boot")
GRUB_CONFIGS = (Path("grub") / "grub.cfg", Path("grub2") / "grub.cfg")
GRUB_ENVS = (Path("grub2") / "grubenv", Path("grub") / "grubenv")
BY_UUID = Path("/dev/disk/by-uuid")


@dataclass(frozen=True)
class InventorySettings:
    """What the configuration says about where entries are (``[paths]`` and ``[entries]``)."""

    boot: Path
    entries: Path | None = None
    """``[paths] entries`` when a file set it; None: ``<boot>/loader/entries``."""
    sources: tuple[EntrySource, ...] | None = None
    """None: ``auto``."""
    esp: Path | None = None
    """``[entries] esp``; None: found as bootctl finds it (host ``/boot`` only)."""


@dataclass(frozen=True)
class PartitionRoots:
    """Where the partitions an entry can name are on this host: what :meth:`Inventory.key` needs."""

    boot: Path
    """The boot directory, symlinks resolved."""
    boot_separate: bool
    """The boot directory is a filesystem of its own (not a directory of the root filesystem)."""
    esp: Path | None = None
    """The ESP's mount point, symlinks resolved, when there is one."""
    root_subvolume: str = ""
    """The btrfs subvolume mounted at ``/`` (``/@``), else ""."""
    devices: dict[PartitionKind, str] = field(default_factory=dict)
    """The block device (resolved path) of each partition, for GRUB's ``search --fs-uuid``."""


@dataclass(frozen=True)
class Inventory:
    """Every source read, and what that makes of the host's entries.

    ``unknown`` is None when every source was read completely: the entries are then the whole
    truth (also when there are none). Otherwise it names the first source that could not be read,
    and nothing may be uncached, forgotten or deleted on the strength of these entries.
    """

    reads: tuple[SourceRead, ...]
    roots: PartitionRoots
    layout: BootLayout | None = None

    @property
    def entries(self) -> tuple[Entry, ...]:
        return tuple(e for read in self.reads for e in read.result.entries)

    @property
    def results(self) -> tuple[SourceResult, ...]:
        return tuple(read.result for read in self.reads)

    @property
    def unknown(self) -> str | None:
        return next((r.unknown for r in self.results if r.unknown is not None), None)

    @property
    def refused(self) -> tuple[str, ...]:
        return tuple(line for read in self.reads for line in read.refused)

    @property
    def found(self) -> tuple[SourceResult, ...]:
        """The sources that exist on this host (their location is there, or could not be read)."""
        return tuple(r for r in self.results if r.unknown is not None or os.path.lexists(r.location))

    def key(self, file: BootFile) -> str | None:
        """The cache key of ``file`` (see the module docstring), or None when it has none."""
        return cache_key(file, self.roots)

    def keys(self, file: BootFile) -> frozenset[str]:
        """Every key ``file`` may be at: its key, and for a file whose partition GRUB finds by
        ``search --file`` and bootwatch cannot tell, the key it has on each of the host's partitions."""
        return candidate_keys(file, self.roots)

    def reference_counts(self) -> dict[str, int]:
        """How many entries name each cache key (an entry naming a file twice counts once)."""
        counts: Counter[str] = Counter()
        for entry in self.entries:
            counts.update({k for f in entry.files for k in self.keys(f)})
        return dict(counts)

    def keys_of(self, entry: Entry) -> tuple[str | None, ...]:
        return tuple(self.key(f) for f in entry.files)


def _clean(path: str) -> str | None:
    """``path`` as a key below the boot directory: absolute, normalised, no ``..``; else None."""
    if not path.startswith("/") or "\0" in path:
        return None
    parts = PurePosixPath(path).parts[1:]
    if not parts or ".." in parts:
        return None
    return "/" + "/".join(p for p in parts if p != ".")


def _kind_by_uuid(file: BootFile, roots: PartitionRoots) -> PartitionKind | None:
    """The partition GRUB's ``search --fs-uuid`` names, when udev's link tells which it is;
    ``PartitionKind.UNKNOWN`` for a filesystem that is none of the host's boot partitions. None
    (the path's shape decides) unless the devices of root and of a separate boot are both known:
    a partition whose device could not be told must not pass for a foreign one."""
    uuid = file.partition.fs_uuid
    needed = {PartitionKind.ROOT} | ({PartitionKind.BOOT} if roots.boot_separate else set())
    if not uuid or "/" in uuid or uuid in (".", "..") or not needed <= roots.devices.keys():
        return None
    try:
        device = os.path.realpath(BY_UUID / uuid, strict=True)
    except OSError:
        return None  # no udev link (a container, early boot): the path tells
    for kind, known in roots.devices.items():
        if device == known:
            return kind
    return PartitionKind.UNKNOWN


def _search_file_holders(file: BootFile, roots: PartitionRoots) -> list[PartitionKind]:
    """The host's partitions holding the file GRUB's ``search --file`` looks for, now."""
    wanted = _clean(file.partition.search_file or "")
    if wanted is None:
        return []
    places = ((PartitionKind.BOOT, roots.boot if roots.boot_separate else None),
              (PartitionKind.ROOT, roots.boot.parent), (PartitionKind.ESP, roots.esp))
    return [kind for kind, top in places if top is not None and os.path.lexists(str(top) + wanted)]


def _searched(file: BootFile) -> bool:
    """The file's partition is GRUB's ``search --file`` result, which the entry cannot tell."""
    return file.partition.search_file is not None and file.partition.kind is PartitionKind.UNKNOWN


def candidate_keys(file: BootFile, roots: PartitionRoots) -> frozenset[str]:
    """See :meth:`Inventory.keys`."""
    key = cache_key(file, roots)
    keys = {key} if key is not None else set()
    if _searched(file) and len(_search_file_holders(file, roots)) != 1:
        for kind in (PartitionKind.BOOT, PartitionKind.ROOT, PartitionKind.ESP):
            other = cache_key(BootFile(file.path, file.role, Partition(kind)), roots)
            if other is not None:
                keys.add(other)
    return frozenset(keys)


def cache_key(file: BootFile, roots: PartitionRoots) -> str | None:
    """The cache key of ``file`` on the host ``roots`` describes (see the module docstring)."""
    by_uuid = _kind_by_uuid(file, roots)
    found: PartitionKind | None = None
    kind = file.partition.kind
    if _searched(file):
        holders = _search_file_holders(file, roots)
        found = holders[0] if len(holders) == 1 else None
        kind = found or path_kind(file.path)  # on none or several: the path's shape says
    kind = by_uuid or kind
    if kind is PartitionKind.ESP:
        if roots.esp is None or _clean(file.path) is None:
            return None
        relative = os.path.relpath(str(roots.esp) + file.path, roots.boot)
        return "/" + relative
    if kind is PartitionKind.BOOT:
        return _clean(file.path)
    if kind is PartitionKind.ROOT:
        if file.path.startswith("/boot/"):
            return None if roots.boot_separate else _clean(file.path[len("/boot"):])
        if by_uuid is not None or found is not None:
            return None  # on the root filesystem, outside /boot (Debian's /vmlinuz symlink)
        # A BLS entry in the boot directory written relative to /boot although /boot is on the
        # root filesystem (as boom writes it): taken as written, as bootwatch always has.
        return _clean(file.path)
    mapped = file.boot_path(root_subvolume=roots.root_subvolume)
    return _clean(mapped) if mapped is not None else None


def _is_mount_point(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def _source_device(mounts: Sequence[MountInfo], point: str) -> str | None:
    found = [m for m in mounts if m.mount_point == point]
    if not found or not found[-1].source.startswith("/dev/"):
        return None
    return os.path.realpath(found[-1].source)


def _grubenv(boot: Path) -> GrubEnv | None:
    for relative in GRUB_ENVS:
        if os.path.lexists(boot / relative):
            return read_grubenv(boot / relative)
    return None


def _wanted(settings: InventorySettings, source: EntrySource) -> bool:
    return settings.sources is None or source in settings.sources


def _expected(settings: InventorySettings, reads: list[SourceRead]) -> list[SourceRead]:
    """An explicitly configured source none of whose locations is there is unknown, not empty.

    Once per source, not per location: a source lives in one of several places (BLS entries in
    ``<boot>/loader/entries`` or on the ESP), and a listed source found in any of them is there.
    The first of its locations then carries the reason."""
    if settings.sources is None:
        return reads
    found = {r.result.source for r in reads if r.result.unknown is not None or os.path.lexists(r.result.location)}
    missing = set(settings.sources) - found
    kept: list[SourceRead] = []
    for read in reads:
        result = read.result
        if result.source in missing:
            missing.discard(result.source)
            read = SourceRead(SourceResult.unreadable(
                result.source, result.location, f"{result.location}: missing, but [entries] sources names "
                f"{result.source.value!r} and none of its locations is there; is the partition mounted?"),
                read.refused)
        kept.append(read)
    return kept


def host_roots(settings: InventorySettings, mounts: Sequence[MountInfo],
               layout: BootLayout | None) -> PartitionRoots:
    """Where the boot directory, the ESP and the root subvolume are (see :class:`PartitionRoots`)."""
    boot = settings.boot
    boot_separate = _is_mount_point(boot)
    esp = settings.esp
    if esp is None and layout is not None and layout.esp is not None and layout.esp.mount_point != "/boot":
        esp = Path(layout.esp.mount_point)
    root_mount = [m for m in mounts if m.mount_point == "/"]
    subvolume = root_mount[-1].root if root_mount and root_mount[-1].fstype == "btrfs" else ""
    candidates = ((PartitionKind.BOOT, str(boot) if boot_separate else None), (PartitionKind.ROOT, "/"),
                  (PartitionKind.ESP, str(esp) if esp is not None else None))
    devices = {kind: dev for kind, point in candidates if point is not None
               for dev in [_source_device(mounts, point)] if dev is not None}
    return PartitionRoots(Path(os.path.realpath(boot)), boot_separate,
                          Path(os.path.realpath(esp)) if esp is not None else None,
                          "" if subvolume == "/" else subvolume, devices)


def read_inventory(settings: InventorySettings, *, mounts: Sequence[MountInfo] | None = None) -> Inventory:
    """Read every entry source ``settings`` names (see the module docstring)."""
    if mounts is None:
        try:
            mounts = mountinfo()
        except OSError:
            mounts = []
    layout = detect_layout(mounts) if settings.boot == HOST_BOOT and settings.esp is None else None
    roots = host_roots(settings, mounts, layout)
    reads: list[SourceRead] = []
    if _wanted(settings, EntrySource.BLS):
        reads += _type1_reads(settings, roots, layout)
    if _wanted(settings, EntrySource.UKI):
        reads += _uki_reads(settings, roots, layout)
    if _wanted(settings, EntrySource.GRUB):
        reads += _grub_reads(settings)
    return Inventory(tuple(_expected(settings, _dedupe(reads))), roots, layout)


def _own_partition(roots: PartitionRoots) -> Partition:
    return Partition(PartitionKind.BOOT if roots.boot_separate else PartitionKind.ROOT)


def _type1_reads(settings: InventorySettings, roots: PartitionRoots, layout: BootLayout | None) -> list[SourceRead]:
    boot = settings.boot
    locations = [(settings.entries or boot / "loader" / "entries", _own_partition(roots))]
    reads: list[SourceRead] = []
    if layout is not None:
        for loc in type1_locations(layout):
            if loc.unknown is not None:
                reads.append(SourceRead(SourceResult.unreadable(EntrySource.BLS, loc.directory, loc.unknown)))
            elif loc.root not in (Path("/"), boot):
                locations.append((loc.directory, loc.partition))
    elif settings.esp is not None:
        locations.append((settings.esp / "loader" / "entries", Partition(PartitionKind.ESP)))
    grubenv = _grubenv(boot)
    for directory, partition in locations:
        if not os.path.lexists(directory):
            reads.append(SourceRead(SourceResult(EntrySource.BLS, directory)))
        else:
            reads.append(read_type1_entries(directory, partition, grubenv=grubenv))
    return reads


def _uki_reads(settings: InventorySettings, roots: PartitionRoots, layout: BootLayout | None) -> list[SourceRead]:
    boot = settings.boot
    partitions = [(boot, _own_partition(roots))]
    reads: list[SourceRead] = []
    if layout is not None:
        for loc in uki_locations(layout):
            if loc.unknown is not None:
                reads.append(SourceRead(SourceResult.unreadable(EntrySource.UKI, loc.directory, loc.unknown)))
            elif loc.root != boot:
                partitions.append((loc.root, loc.partition))
    elif settings.esp is not None:
        partitions.append((settings.esp, Partition(PartitionKind.ESP)))
    for root, partition in partitions:
        read = read_uki_source(root, partition)
        reads.append(read)
    return reads


def _grub_reads(settings: InventorySettings) -> list[SourceRead]:
    configs = [settings.boot / relative for relative in GRUB_CONFIGS]
    present = [c for c in configs if os.path.lexists(c)]
    if not present:
        return [SourceRead(SourceResult(EntrySource.GRUB, configs[0]))]
    return [SourceRead(read_grub_config(config)) for config in present]


def _dedupe(reads: list[SourceRead]) -> list[SourceRead]:
    """Each location once (``/boot`` can be both the boot directory and the ESP or XBOOTLDR)."""
    seen: set[tuple[EntrySource, str]] = set()
    kept: list[SourceRead] = []
    for read in reads:
        where = (read.result.source, os.path.realpath(read.result.location))
        if where not in seen:
            seen.add(where)
            kept.append(read)
    return kept
