"""Which cached paths the host's boot entries need, and whether that is the whole truth.

The entries come from the inventory (:mod:`bootwatch.entries.inventory`): every source the host
has. What they reference is counted by cache key. Whether the count is the whole truth is judged
against ``.bootwatch-references``, the record of the last complete read (its format is stated in
store.py): :func:`judge` says what makes references unknown. Before any of that, a boot
directory or ESP that ``/etc/fstab`` lists as a mount point and that is not a mount root now is
an unmounted partition's mount point: no read of it is judged, trusted or recorded (see
:mod:`bootwatch.cache.fstab` and :meth:`bootwatch.cache.operations.BootCache.references`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bootwatch.cache import mountid
from bootwatch.entries.inventory import Inventory
from bootwatch.entries.model import EntrySource
from bootwatch.errors import BootwatchError
from bootwatch.linux import MountInfo, mountinfo

# The format of .bootwatch-references; a record of another format is no record.
REFERENCES_VERSION = 4

# What a source's location is, in a journal line.
_LOCATION_KIND = {EntrySource.BLS: "entries directory", EntrySource.UKI: "UKI directory",
                  EntrySource.GRUB: "GRUB configuration"}


class References(dict[str, int]):
    """How many boot entries name each cache key, and whether that is the whole truth.

    ``unknown`` is None when it is; otherwise one line saying why not. While references are
    unknown nothing may be uncached, trimmed, un-restored or deleted on their strength.
    ``confirmable``: the reason is a judgement from history (no trustworthy record of an
    earlier read, a source location gone or not on the filesystem it was, the ESP not the mount
    it was, every recorded entry gone at once), which an operator may overrule (``clean
    --force``); a source that cannot be read, or a boot directory that is not the filesystem it
    was, is never overruled.
    ``boot_moved``: the boot directory is not the filesystem it was; nothing is restored into it.
    ``observed``: the record of this read when every source could be read (what ``clean --force``
    records); ``record``: what the lock holder records when the transaction ends, if anything.
    ``absent``: the ESP's mount point when the ESP is not the mount it was (not mounted, another
    filesystem): its files look gone, so nothing below it is restored, forgotten or taken away.
    ``inventory``: the entries as read.
    """

    def __init__(self, counts: dict[str, int] | None = None, *, unknown: str | None = None,
                 confirmable: bool = False, boot_moved: bool = False, absent: str | None = None,
                 entries: int = 0, record: dict[str, Any] | None = None, observed: dict[str, Any] | None = None,
                 inventory: Inventory | None = None) -> None:
        super().__init__(counts or {})
        self.unknown = unknown
        self.confirmable = confirmable
        self.boot_moved = boot_moved
        self.absent = absent
        self.entries = entries
        self.record = record
        self.observed = observed
        self.inventory = inventory

    def is_absent(self, name: Path) -> bool:
        """Whether the boot file ``name`` lies on a partition that is not mounted as it was."""
        return self.absent is not None and (str(name) + "/").startswith(self.absent.rstrip("/") + "/")

    def confirmed(self) -> References:
        """These references as the operator confirms them (``clean --force``): known, and recorded."""
        return References(self, absent=self.absent, entries=self.entries, record=self.observed,
                          observed=self.observed, inventory=self.inventory)


class _Identities:
    """Mount identities for one read: ``/proc/self/mountinfo`` read once, not once per location."""

    def __init__(self) -> None:
        self.mounts: Sequence[MountInfo] | None = None

    def __call__(self, path: Path | str) -> mountid.MountIdentity:
        if self.mounts is None:
            self.mounts = mountinfo()
        return mountid.mount_identity(Path(path), mounts=self.mounts)


def entry_name(source: EntrySource, ident: str) -> str:
    """How the record names an entry: ``bls:fedora-6.1.conf``, ``grub:gnulinux-simple-...``."""
    return f"{source.value}:{ident}"


def record_of_read(inventory: Inventory, boot_real: Path, counts: dict[str, int]) -> dict[str, Any]:
    """The record of a complete read (see store.py). Raises OSError when the mount of the boot
    directory, the ESP or a source location cannot be told."""
    identity = _Identities()
    esp = inventory.roots.esp
    locations = [{"source": r.source.value, "path": str(r.location), "real": os.path.realpath(r.location),
                  "mount": identity(r.location)} for r in inventory.found]
    return {"version": REFERENCES_VERSION, "boot": str(boot_real), "boot_mount": identity(boot_real),
            "esp": str(esp) if esp is not None else None,
            "esp_mount": _esp_mount(identity, esp),
            "locations": sorted(locations, key=lambda loc: (loc["source"], loc["path"])),
            "entries": sorted({entry_name(e.source, e.id) for e in inventory.entries}), "paths": sorted(counts)}


def _esp_mount(identity: _Identities, esp: Path | None) -> mountid.MountIdentity | None:
    """The ESP's mount, only where the ESP is a mount: the bare mount point of an ESP that is not
    mounted now is never recorded as the ESP (the real one would then look foreign)."""
    if esp is None or not os.path.isdir(esp):
        return None
    mount = identity(esp)
    return mount if mount["mount_root"] else None


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def parse_record(data: bytes | None, where: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The last complete read, if ``data`` (the file ``where``) is a well-formed record; else None
    and why not."""
    if data is None:
        return None, f"{where} is missing or cannot be read"
    try:
        record = json.loads(data)
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict) or record.get("version") != REFERENCES_VERSION \
            or not isinstance(record.get("boot"), str) or not isinstance(record.get("boot_mount"), dict) \
            or not isinstance(record.get("esp"), (str, type(None))) \
            or not isinstance(record.get("esp_mount"), (dict, type(None))) \
            or not isinstance(record.get("locations"), list) \
            or not all(isinstance(loc, dict) and all(isinstance(loc.get(k), str) for k in ("source", "path", "real"))
                       and isinstance(loc.get("mount"), dict) for loc in record["locations"]) \
            or not _strings(record.get("entries")) or not _strings(record.get("paths")):
        return None, f"{where} is not a record this bootwatch wrote"
    return record, None


@dataclass(frozen=True)
class Judgement:
    """Why a complete read is not trusted: one line, whether the operator may confirm it, and
    whether the boot directory is not the filesystem it was."""

    why: str
    subject: str
    confirmable: bool = True
    boot_moved: bool = False
    absent: str | None = None
    """The ESP's mount point, when the judgement is that the ESP is not mounted as it was."""


def judge(last: dict[str, Any], observed: dict[str, Any], inventory: Inventory, boot_dir: Path) -> Judgement | None:
    """What makes a complete read ``observed`` untrusted against the record ``last`` of the same
    boot directory, or None (see :meth:`bootwatch.cache.operations.BootCache.references`)."""
    boot_moved = _boot_moved(last["boot_mount"], observed["boot_mount"], boot_dir)
    esp = last["esp"]
    esp_was, esp_now = last["esp_mount"], observed["esp_mount"]
    # The ESP was a mount and nothing is mounted there now: what is under its mount point is not
    # the ESP, and the operator cannot confirm it is (mount it; see README, "Unknown references").
    esp_unmounted = esp_was is not None and esp_was.get("mount_root") is True and esp_now is None

    def on_esp(loc: dict[str, Any]) -> str | None:
        inside = esp is not None and (loc["real"] + "/").startswith(esp.rstrip("/") + "/")
        return esp if inside else None

    def confirmable(absent: str | None) -> bool:
        return boot_moved is None and not (absent is not None and esp_unmounted)

    read_now = {str(r.location) for r in inventory.results}
    now = {loc["path"]: loc for loc in observed["locations"]}
    for loc in last["locations"]:
        kind = _kind(loc["source"])
        if loc["path"] not in read_now:
            return Judgement(f"the {kind} was there at the last complete read of the boot entries, and is not read "
                             "now (is the ESP mounted? did [paths] or [entries] change?)", loc["path"],
                             confirmable=confirmable(on_esp(loc)), boot_moved=boot_moved is not None,
                             absent=on_esp(loc))
        if loc["path"] not in now:
            return Judgement(f"the {kind} does not exist now, though it was there at the last complete read of "
                             "the boot entries; is its partition mounted?", loc["path"],
                             confirmable=confirmable(on_esp(loc)), boot_moved=boot_moved is not None,
                             absent=on_esp(loc))
    subject = ", ".join(sorted({loc["path"] for loc in last["locations"]})) or str(boot_dir)
    if boot_moved is not None:
        # Never the operator's to confirm: an unmounted /boot's mount point holding a stale
        # grub.cfg would make every kernel of the real partition unreferenced (see README,
        # "Unknown references", for a boot partition that was really replaced).
        return Judgement(boot_moved, subject, confirmable=False, boot_moved=True)
    for loc in last["locations"]:
        was, is_now = loc["mount"], now[loc["path"]]["mount"]
        if not mountid.same_filesystem(was, is_now, same_directory=False):
            kind = _kind(loc["source"])
            return Judgement(f"the {kind} is not on the filesystem it was ({mountid.describe(was)}, now "
                             f"{mountid.describe(is_now)}); is the right partition mounted?", loc["path"],
                             confirmable=confirmable(on_esp(loc)), absent=on_esp(loc))
    if esp is not None and esp_was is not None \
            and (esp_now is None or not mountid.same_filesystem(esp_was, esp_now)):
        if esp_unmounted:
            return Judgement("the ESP is no longer a mount point (it was one when the boot entries were last "
                             "read); is the ESP mounted?", esp, confirmable=False, absent=esp)
        now_text = mountid.describe(esp_now) if esp_now is not None else "missing"
        return Judgement(f"the ESP is not the mount it was ({mountid.describe(esp_was)}, now {now_text}); is "
                         "the right partition mounted?", esp, absent=esp)
    recorded = set(last["entries"])
    if len(recorded) >= 2 and last["paths"] and recorded.isdisjoint(observed["entries"]):
        return Judgement(f"every boot entry vanished at once (none of the {len(recorded)} entries of the last "
                         f"read is left, {len(observed['entries'])} now); more likely an unmount than a decision",
                         subject)
    return None


def _kind(source: str) -> str:
    return next((kind for s, kind in _LOCATION_KIND.items() if s.value == source), "entry source")


def _boot_moved(was: dict[str, Any], now: dict[str, Any], boot_dir: Path) -> str | None:
    # Whether it is a mount root alone says nothing (a bind mount of itself, in the daemon's
    # namespace, is the same directory: see mountid); it only words the line.
    if mountid.same_filesystem(was, now):
        return None
    if was.get("mount_root") is True and not now["mount_root"]:
        return (f"the boot directory {boot_dir} is no longer a mount point (it was one when the boot entries "
                "were last read); is the boot partition mounted?")
    return (f"the boot directory {boot_dir} is not the mount it was ({mountid.describe(was)}, now "
                f"{mountid.describe(now)}); is the right partition mounted?")


def has_evidence(counts: dict[str, int], boot_file: Callable[[str], Path],
                 image_of: Callable[[str, os.stat_result], str | None] | None) -> bool:
    """Whether a read without a record is of the real boot partitions, by positive evidence: an
    entry names a boot file (by its cache key, on any partition) that is the very file bootwatch
    cached for that key (``image_of``: its recorded stat signature), or, with nothing cached yet
    (``image_of`` None), names a boot file that is there."""
    for key in sorted(counts):
        try:
            st = os.stat(boot_file(key))
        except (OSError, BootwatchError):
            continue
        if image_of is None or image_of(key, st) is not None:
            return True
    return False
