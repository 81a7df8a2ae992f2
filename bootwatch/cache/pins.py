"""Pins: hard links in ``<cache>/links/`` that keep a cached image alive while a program uses it.

Protocol (the one thing ``gc`` trusts is the owner identity in the link's name)::

    links/<image_id>.<pid>.<starttime>.<bootid>.<seq>.img

* ``<image_id>`` first: ``CacheStore.pinned_image_ids()`` takes everything before the first dot,
  and clean never deletes (nor uncaches the path of) an image that some link names.
* ``<pid>.<starttime>.<bootid>`` is the owner: its PID, its start time in clock ticks after boot
  (``/proc/PID/stat`` field 22) and the kernel's boot id (``/proc/sys/kernel/random/boot_id``,
  without dashes). The kernel never gives two processes of one boot the same PID *and* start
  time, so the triple names exactly one process, ever: a PID reused by an unrelated process has a
  later start time, and after a reboot the boot id differs.
* ``<seq>`` makes the name unique when one owner pins the same image twice.

A link is *live* while a process with that PID exists, is not a zombie, and has that start time,
on this boot. ``gc`` removes every other link, under the cache lock; it never needs the owner's
cooperation. No flock is used: a lock fd would be inherited by the owner's children (and kept by
a daemon it forks), or closed by a program that closes its descriptors, so it would say less
about the owner than its identity does.

Links are created under the cache lock, so clean cannot run between "the image exists" and "the
image is pinned". They are removed without the lock: removing a pin only makes an image
deletable, and a clean that saw the pin just keeps the image until its next run.

Owner PIDs are those of the PID namespace whose ``/proc`` bootwatch reads; pinning programs and
the daemon must share it (they do on a host).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bootwatch.cache.index import is_image_id
from bootwatch.cache.operations import BootCache
from bootwatch.cache.proc import PROC, process_start_time
from bootwatch.cache.store import IMAGE_SUFFIX
from bootwatch.errors import BootwatchError, UsageError, describe_oserror
from bootwatch.safety import listing

BOOT_ID_PATH = PROC / "sys/kernel/random/boot_id"
_NUMBER = re.compile(r"[0-9]{1,19}")


# ------------------------------------------------------------------------------------ owners

def boot_id() -> str:
    return BOOT_ID_PATH.read_text().strip().replace("-", "")


@dataclass(frozen=True)
class Owner:
    """One process, for ever: PID, start time and boot id."""

    pid: int
    start_time: int
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> Owner:
        start = process_start_time(pid)
        if start is None:
            raise BootwatchError(f"process {pid} does not exist; it cannot own a pin")
        return cls(pid, start, boot_id())

    def is_alive(self, current_boot_id: str) -> bool:
        return self.boot_id == current_boot_id and process_start_time(self.pid) == self.start_time


@dataclass(frozen=True)
class PinLink:
    """A link name, parsed."""

    name: str
    image_id: str
    owner: Owner
    seq: int

    @staticmethod
    def make_name(image_id: str, owner: Owner, seq: int) -> str:
        return f"{image_id}.{owner.pid}.{owner.start_time}.{owner.boot_id}.{seq}{IMAGE_SUFFIX}"

    @classmethod
    def parse(cls, name: str) -> PinLink | None:
        """None for a name that does not follow the protocol (gc leaves those alone)."""
        if not name.endswith(IMAGE_SUFFIX):
            return None
        parts = name[:-len(IMAGE_SUFFIX)].split(".")
        # ASCII digits only: str.isdigit() takes "²", which int() refuses. At most 19: an int64.
        if len(parts) != 5 or not is_image_id(parts[0]) \
                or not all(_NUMBER.fullmatch(p) for p in (parts[1], parts[2], parts[4])):
            return None
        if len(parts[3]) != 32 or any(c not in "0123456789abcdef" for c in parts[3]):
            return None
        return cls(name, parts[0], Owner(int(parts[1]), int(parts[2]), parts[3]), int(parts[4]))


def list_links(cache: BootCache) -> tuple[list[PinLink], list[str]]:
    """The protocol links and the names that do not follow the protocol."""
    links_fd = cache.store.links_fd(create=False)
    if links_fd is None:
        return [], []
    try:
        with listing(links_fd) as it:
            names = [entry.name for entry in it]
    finally:
        os.close(links_fd)
    links, unknown = [], []
    for name in sorted(names):
        link = PinLink.parse(name)
        if link is None:
            unknown.append(name)
        else:
            links.append(link)
    return links, unknown


def count_pins(cache: BootCache) -> int:
    """How many links exist (live or not yet collected); for metrics."""
    if not os.path.lexists(cache.store.directory):
        return 0
    links, unknown = list_links(cache)
    return len(links) + len(unknown)


# ------------------------------------------------------------------------------------ pinning

def image_id_from_argument(value: str) -> str:
    """A command line image id; anything else is a usage error (exit 2)."""
    if not is_image_id(value):
        raise UsageError(f"{value!r} is not an image id (40 lowercase hexadecimal digits)")
    return value


def _resolve_image_ids(cache: BootCache, paths: Sequence[str], image_ids: Sequence[str]) -> list[str]:
    """Paths first (their newest image), then the ids; checked under the lock by the caller."""
    index = cache.store.load_index()
    ids = []
    for path in paths:
        if path not in index:
            raise BootwatchError("is not cached; nothing to pin", path=path)
        ids.append(index.newest(path))
    ids += [image_id_from_argument(image_id) for image_id in image_ids]
    for image_id in ids:
        if not cache.store.has_image(image_id):
            raise BootwatchError("the image file is missing; nothing to pin",
                                 path=cache.store.image_path(image_id), hint="run 'bootwatch fsck'")
    return ids


def create_links(cache: BootCache, *, paths: Sequence[str] = (), image_ids: Sequence[str] = (),
                 owner: Owner) -> list[Path]:
    """Make the links under the cache lock; return them in the order asked (paths, then ids).

    On any failure, the links made so far are removed again.
    """
    made: list[Path] = []
    with cache.store.locked(create=False, waiter=cache.lock_waiter()):
        links_fd = cache.store.links_fd(create=True)
        assert links_fd is not None
        try:
            for image_id in _resolve_image_ids(cache, paths, image_ids):
                made.append(_link_one(cache, links_fd, image_id, owner))
            os.fsync(links_fd)
        except BaseException:
            _unlink_in(links_fd, [link.name for link in made])
            raise
        finally:
            os.close(links_fd)
    return made


def _link_one(cache: BootCache, links_fd: int, image_id: str, owner: Owner) -> Path:
    """Link the image into ``links/``, both named relative to their checked descriptors."""
    source = cache.store.image_path(image_id)
    directory = cache.store.links_dir
    for seq in range(10000):
        target = directory / PinLink.make_name(image_id, owner, seq)
        try:
            os.link(source.name, target.name, src_dir_fd=cache.store.fd, dst_dir_fd=links_fd, follow_symlinks=False)
            return target
        except FileExistsError:
            continue
        except OSError as e:
            raise BootwatchError(f"cannot pin image {image_id}: {describe_oserror(e)}") from None
    raise BootwatchError(f"cannot pin image {image_id}: too many pins by process {owner.pid}", path=directory)


def remove_links(links: Sequence[Path]) -> None:
    for link in links:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)


def _unlink_in(links_fd: int, names: Sequence[str]) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=links_fd)


@contextlib.contextmanager
def pin(cache: BootCache, *, paths: Sequence[str] = (), image_ids: Sequence[str] = (),
        owner_pid: int | None = None) -> Iterator[list[Path]]:
    """Pin the newest image of each boom-style path and each image id while the block runs.

    Yields the link paths (paths first, then ids), which are readable copies of the images that
    no clean will delete. ``owner_pid`` (default: this process) is the process whose life keeps
    the links alive if this block never gets to remove them (a crash, SIGKILL): gc collects them
    once that process is gone.
    """
    owner = Owner.of(os.getpid() if owner_pid is None else owner_pid)
    links = create_links(cache, paths=paths, image_ids=image_ids, owner=owner)
    try:
        yield links
    finally:
        remove_links(links)


def release_owner(cache: BootCache, owner: Owner) -> list[str]:
    """Remove every link of ``owner`` (whatever gc would say); return their names."""
    links, _ = list_links(cache)
    mine = [link for link in links if link.owner == owner]
    remove_links([cache.store.links_dir / link.name for link in mine])
    return [link.name for link in mine]


# ------------------------------------------------------------------------------------ gc

@dataclass
class GcReport:
    removed: list[str] = field(default_factory=list)  # links of dead owners (removed unless dry run)
    kept: list[str] = field(default_factory=list)  # links of live owners
    unknown: list[str] = field(default_factory=list)  # names that are not ours: left alone

    def to_json(self) -> dict[str, list[str]]:
        return dict(self.__dict__)


def gc(cache: BootCache, *, dry_run: bool = False) -> GcReport:
    """Remove the links whose owner is dead (gone, a zombie, a reused PID, or a previous boot).

    Runs under the cache lock, so a pin being made is never seen half-way. Images that lose their
    last link are deleted by the next clean if no path lists them.
    """
    report = GcReport()
    if not os.path.lexists(cache.store.directory):
        return report
    with cache.store.locked(create=False, waiter=cache.lock_waiter()):
        links, report.unknown = list_links(cache)
        current = boot_id()
        for link in links:
            if link.owner.is_alive(current):
                report.kept.append(link.name)
            else:
                report.removed.append(link.name)
        if not dry_run and report.removed:
            links_fd = cache.store.links_fd(create=False)
            if links_fd is not None:
                try:
                    _unlink_in(links_fd, report.removed)
                    os.fsync(links_fd)
                finally:
                    os.close(links_fd)
    return report
