"""The headroom rule: a boot filesystem keeps room for one more kernel and initramfs.

A package manager that installs a kernel onto a full ``/boot`` can leave a truncated initramfs
and still exit 0; the host then fails at its next reboot. So bootwatch never fills a boot
filesystem itself: a restore happens only if, after it, the filesystem still has room for one
more kernel and initramfs of the largest sizes present there. The same rule, applied to the
host as it is, says which entries are AT_RISK (their partition lacks that room even before any
restore). This module is the one statement of the rule; the cache's restore and the health
check both ask it.

- **Room** is ``f_bfree * f_frsize`` of ``statvfs``: the space root can still write. The next
  kernel is written by the package manager, as root, which may use the blocks a filesystem
  reserves for root (ext4's reserved blocks); a restore is bootwatch's own write, as root too.
- **Present** is what the boot entries name on that filesystem, by role: the largest kernel
  and the largest initramfs (``initrd``), and the largest unified kernel image, which is a
  kernel and initramfs in one file. A file an entry names that is not there counts with the
  size of its newest cached image (what a restore would write); one neither there nor cached
  does not count. Files no entry names (an old kernel left behind, System.map, config) are not
  what the next install looks like, and do not count.
- **Needed** is ``max(kernel + initramfs, UKI)``, each rounded up to whole blocks
  (``f_frsize``), as is what a restore would write. A filesystem where no entry names a kernel,
  initramfs or UKI (an ESP holding only the boot loader) needs no headroom.

A restore (:meth:`HostHeadroom.restore_decision`, asked by every restore: ``bootwatch restore``,
``restore --image``, and the auto-restore of ``scan`` and the daemon) is decided so:

1. A file that does not fit at all is never written: refused, naming the free space.
2. A restore after which the filesystem lacks the headroom, counting the image restored at its
   key (a larger older initramfs put back is then the largest initramfs there), is refused,
   except where refusing it keeps no room worth keeping or costs more than the room is worth:

   a. the file is not a kernel, initramfs or UKI (a devicetree, an EFI program, a ``.hmac``):
      small, and no install grows it, so refusing it saves nothing;
   b. the operator said ``--force`` (``restore`` and ``restore --image``): the headroom is the
      only guard it overrides;
   c. ``restore --image`` replaces a file that fails its format check: the entry does not boot
      as it is, and repairing it takes no room a sound file there would not;
   d. the host needs it to boot at all: no entry has all of its files there (the room is kept
      for the next kernel, and a host that cannot boot installs none). The restore is done and
      logged as leaving the headroom short.

   A restore that takes no more room than the file it replaces is never refused: it leaves the
   filesystem as full as it found it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootwatch.entries.inventory import Inventory
from bootwatch.entries.model import Entry, FileRole
from bootwatch.errors import BootwatchError

SIZED_ROLES = (FileRole.KERNEL, FileRole.INITRD, FileRole.UKI)
"""The roles the rule sizes; devicetrees and EFI programs are small, and no install grows them."""


class HeadroomError(BootwatchError):
    """A restore refused because it would leave its filesystem without the headroom."""


@dataclass(frozen=True)
class BootImage:
    """A kernel, initramfs or UKI a boot entry names, as the rule sees it."""

    key: str
    role: FileRole
    size: int
    """Bytes: the file's; for a missing file, its newest cached image's."""
    device: int
    """The filesystem it is on (missing: the one its directory is on, where a restore writes it)."""
    directory: Path
    """The directory it is in, or would be restored into."""
    present: bool


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _mount_point(path: Path, device: int) -> Path:
    """The top directory of ``path``'s filesystem (what a sysadmin calls it: ``/boot``)."""
    path = Path(os.path.abspath(path))
    while path.parent != path:
        try:
            if os.stat(path.parent).st_dev != device:
                break
        except OSError:
            break
        path = path.parent
    return path


@dataclass(frozen=True)
class Headroom:
    """One filesystem's room against what one more kernel and initramfs would take there."""

    filesystem: Path
    device: int
    free: int
    """Bytes root can still write (``f_bfree * f_frsize``)."""
    block: int
    kernel: int = 0
    initramfs: int = 0
    uki: int = 0
    """The largest of each present there, in bytes as allocated (whole blocks)."""

    @classmethod
    def of(cls, directory: Path, images: Iterable[BootImage]) -> Headroom:
        """The headroom of the filesystem holding ``directory``, with the ``images`` on it.
        Raises OSError when ``directory`` cannot be looked at."""
        device = os.stat(directory).st_dev
        vfs = os.statvfs(directory)
        block = vfs.f_frsize or vfs.f_bsize or 1
        largest = dict.fromkeys(SIZED_ROLES, 0)
        for image in images:
            if image.device == device:
                largest[image.role] = max(largest[image.role], allocated(image.size, block))
        return cls(_mount_point(Path(directory), device), device, vfs.f_bfree * block, block,
                   largest[FileRole.KERNEL], largest[FileRole.INITRD], largest[FileRole.UKI])

    @property
    def needed(self) -> int:
        return max(self.kernel + self.initramfs, self.uki)

    def left_after(self, sizes: Iterable[int] = ()) -> int:
        """The free bytes once files of ``sizes`` are written."""
        return self.free - sum(allocated(size, self.block) for size in sizes)

    def kept_after(self, sizes: Iterable[int] = ()) -> bool:
        return self.left_after(sizes) >= self.needed

    def what_is_needed(self) -> str:
        if self.uki > self.kernel + self.initramfs:
            return f"{mib(self.needed)} that one more unified kernel image of the largest size there needs"
        return (f"{mib(self.needed)} that one more kernel and initramfs of the largest sizes there need "
                f"(kernel {mib(self.kernel)}, initramfs {mib(self.initramfs)})")


def allocated(size: int, block: int) -> int:
    """``size`` bytes as whole blocks of ``block`` bytes."""
    return -(-size // block) * block


@dataclass(frozen=True)
class Shortfall:
    """An entry's filesystem without the headroom: which, and one line saying so."""

    filesystem: Path
    message: str
    fits: bool = True
    """The file a refused restore would write fits: ``--force`` would write it."""


class Waiver(enum.Enum):
    """Why a restore that leaves its filesystem without the headroom is done anyway (rule 2a-2d)."""

    NOT_SIZED = "it is not a kernel, initramfs or unified kernel image"
    FORCED = "the operator said --force"
    REPAIR = "it replaces a file that fails its format check"
    NEEDED_TO_BOOT = "no boot entry of the host has all of its files without it"


@dataclass(frozen=True)
class RestoreDecision:
    """What the rule says of one restore: refused (``refusal``), or done; ``short`` when done
    although it leaves the filesystem without the headroom, ``waiver`` saying why."""

    refusal: Shortfall | None = None
    short: Shortfall | None = None
    waiver: Waiver | None = None


class HostHeadroom:
    """The headroom of every filesystem the host's boot entries have images on.

    ``locate`` gives the host path of a cache key (None: it has none), ``cached_size`` the size
    of a key's newest cached image (None: not cached, or the cache cannot be read). Each file is
    looked at (``stat``, never read) once, each filesystem's ``statvfs`` read once: make a new one
    to see changes.
    """

    def __init__(self, inventory: Inventory | None, locate: Callable[[str], Path | None],
                 cached_size: Callable[[str], int | None]) -> None:
        self.inventory = inventory
        self.locate = locate
        self.cached_size = cached_size
        self._images: dict[str, BootImage] | None = None
        self._rooms: dict[int, Headroom | OSError] = {}

    @property
    def images(self) -> dict[str, BootImage]:
        """Every sized image the entries name that is there or cached, by cache key."""
        if self._images is None:
            self._images = {}
            seen: set[tuple[int, int]] = set()
            for entry in self.inventory.entries if self.inventory is not None else ():
                for key, role in self._sized_keys(entry):
                    if key not in self._images:
                        image = self._image(key, role, seen)
                        if image is not None:
                            self._images[key] = image
        return self._images

    def _sized_keys(self, entry: Entry) -> Iterable[tuple[str, FileRole]]:
        assert self.inventory is not None
        for file in entry.files:
            if file.role in SIZED_ROLES:
                key = self.inventory.key(file)
                if key is not None:
                    yield key, file.role

    def _image(self, key: str, role: FileRole, seen: set[tuple[int, int]]) -> BootImage | None:
        path = self.locate(key)
        if path is None:
            return None
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return self._missing(key, role, path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            return None
        seen.add((st.st_dev, st.st_ino))
        return BootImage(key, role, st.st_size, st.st_dev, path.parent, True)

    def _missing(self, key: str, role: FileRole, path: Path) -> BootImage | None:
        size = self.cached_size(key)
        if size is None:
            return None
        try:
            device = os.stat(path.parent).st_dev
        except OSError:
            return None
        return BootImage(key, role, size, device, path.parent, False)

    def room(self, directory: Path) -> Headroom | None:
        """The headroom of ``directory``'s filesystem; None when it cannot be looked at."""
        try:
            device = os.stat(directory).st_dev
        except OSError:
            return None
        known = self._rooms.get(device)
        if known is None:
            try:
                known = Headroom.of(directory, self.images.values())
            except OSError as e:
                known = e
            self._rooms[device] = known
        return known if isinstance(known, Headroom) else None

    def role_of(self, key: str) -> FileRole | None:
        """The role the entries name ``key`` in: a sized one if any entry names it so; None when
        no entry names it (unknown: sized like a kernel)."""
        inventory = self.inventory
        roles = {f.role for e in (inventory.entries if inventory is not None else ())
                 for f in e.files if inventory is not None and inventory.key(f) == key}
        sized = [r for r in SIZED_ROLES if r in roles]
        return sized[0] if sized else next(iter(roles), None)

    def host_boots(self) -> bool:
        """Whether some entry has all of its files there (a kernel or UKI among them), so that the
        host boots without any restore. Unknown (no inventory, a file on no partition bootwatch
        can tell) is not booting."""
        return self.inventory is not None and any(self._all_there(e) for e in self.inventory.entries)

    def _all_there(self, entry: Entry) -> bool:
        assert self.inventory is not None
        if not any(f.role in (FileRole.KERNEL, FileRole.UKI) for f in entry.files):
            return False
        for file in entry.files:
            key = self.inventory.key(file)
            path = self.locate(key) if key is not None else None
            try:
                if path is None or not stat.S_ISREG(os.stat(path).st_mode):
                    return False
            except OSError:
                return False
        return True

    def restore_decision(self, key: str, name: Path, size: int, *, replacing: int = 0, force: bool = False,
                         repairing: Callable[[], bool] = lambda: False) -> RestoreDecision:
        """The rule (see the module docstring) for restoring ``size`` bytes of ``key`` at ``name``;
        ``replacing``: the bytes of the file there that the restore replaces (freed once it is
        done); ``repairing``: asked only when it matters, whether that file fails its format check.
        The filesystem is looked at now (a restore just made changes it)."""
        self._rooms.clear()
        room = self.room(name.parent)
        if room is None or allocated(size, room.block) <= allocated(replacing, room.block):
            return RestoreDecision()
        role = self.role_of(key)
        images = dict(self.images)
        if role in SIZED_ROLES:
            images[key] = BootImage(key, role, size, room.device, name.parent, True)
        try:
            room = Headroom.of(name.parent, images.values())
        except OSError:
            return RestoreDecision()
        room = dataclasses.replace(room, free=room.free + allocated(replacing, room.block))
        refused = f"not restoring it ({mib(size)}): {_leaves(room, [size])}"
        if room.left_after([size]) < 0:
            return RestoreDecision(Shortfall(room.filesystem, refused, fits=False))
        if room.kept_after([size]):
            return RestoreDecision()
        waiver = (Waiver.NOT_SIZED if role is not None and role not in SIZED_ROLES
                  else Waiver.FORCED if force
                  else Waiver.REPAIR if repairing()
                  else Waiver.NEEDED_TO_BOOT if not self.host_boots()
                  else None)
        if waiver is None:
            return RestoreDecision(Shortfall(room.filesystem, refused))
        return RestoreDecision(short=Shortfall(room.filesystem, f"restoring it ({mib(size)}), as {waiver.value}, "
                                               f"although {_leaves(room, [size])}"), waiver=waiver)

    def shortfalls(self, entry: Entry) -> list[Shortfall]:
        """Each filesystem holding images of ``entry`` that lacks the headroom now, or would once the
        entry's missing images were restored."""
        mine: dict[int, list[BootImage]] = {}
        for key, _ in self._sized_keys(entry) if self.inventory is not None else ():
            image = self.images.get(key)
            if image is not None and image not in mine.setdefault(image.device, []):
                mine[image.device].append(image)
        found = []
        for images in mine.values():
            room = self.room(images[0].directory)
            if room is None:
                continue
            missing = [i for i in images if not i.present]
            if not room.kept_after(i.size for i in missing):
                found.append(Shortfall(room.filesystem, _shortfall(room, missing)))
        return found


def _shortfall(room: Headroom, missing: Sequence[BootImage]) -> str:
    if not room.kept_after():
        return (f"{room.filesystem} has {mib(room.free)} free, less than the {room.what_is_needed()}; "
                "free space there (remove a kernel no entry needs)")
    names = ", ".join(i.key for i in missing)
    return (f"restoring {names}: {_leaves(room, [i.size for i in missing])}: free space there (remove a kernel "
            "no entry needs)")


def _leaves(room: Headroom, sizes: Sequence[int]) -> str:
    left = room.left_after(sizes)
    if left < 0:
        return f"it does not fit: {room.filesystem} has {mib(room.free)} free"
    return f"that would leave {mib(left)} free on {room.filesystem}, less than the {room.what_is_needed()}"
