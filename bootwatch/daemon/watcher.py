"""inotify watches on the boot, entries and cache directories, through watchdog.

The handlers only put :class:`Change` records on a queue; the daemon's worker thread applies them.
The inotify mask is narrowed with watchdog's ``event_filter`` to creations, closes after
writing, moves and deletions: bootwatch reads every file it hashes, and ``IN_OPEN``,
``IN_ACCESS`` or ``IN_CLOSE_NOWRITE`` events for those reads would come straight back to it.
``IN_MODIFY`` is left out on purpose too: a file being written is only worth looking at once
it is closed or renamed into place (dracut and package managers write a temp file and rename).

The kernel's event queue can overflow (``IN_Q_OVERFLOW``). watchdog 7.1.1 and later then repairs
its recursive watches and gives every watch an ``EventsLostEvent``; it is in the event filters, and
it becomes a :attr:`ChangeKind.EVENTS_LOST` change, which the daemon answers with a full reconcile.
The daemon's periodic reconcile remains the safety net for whatever else inotify cannot see (a
remount, a change made while bootwatch was not running).

watchdog 2.2.1 (Debian 12's python3-watchdog, the oldest supported: see pyproject.toml) has
neither. Its own inotify mask already leaves out ``IN_OPEN``, ``IN_ACCESS`` and
``IN_CLOSE_NOWRITE``; the event filters are applied to its events by :class:`FilteredHandler`.
It drops ``IN_Q_OVERFLOW`` without a word, so there an overflow is repaired only by the periodic
reconcile (``[watch] rescan_interval``). Each feature is looked for in the installed watchdog,
never inferred from a version number.

An ESP outside the boot directory (its ``loader/entries`` and ``EFI/Linux``, and the files its
entries name) has a recursive watch of its own, armed only while the ESP is mounted:
an automount point with nothing mounted on it (``autofs`` in ``/proc/self/mountinfo``) is never
looked into, which would mount it. inotify marks do not hold a filesystem mounted, and are
dropped when it is unmounted: :meth:`Watcher.esp_changed` tells, from the mount table alone
(never a look at the ESP, which would keep an automount from expiring), when the ESP may have
been mounted, unmounted or replaced, and :meth:`Watcher.rearm_esp` watches it again. Mount ids
are reused at once (an unmount and a mount of the same partition give the very same
``mountinfo`` line), so a change is told by the kernel's own signal: ``poll(2)`` on an open
``/proc/self/mountinfo`` reports ``POLLPRI`` once the mount table changed since the last poll.
An ESP mounted inside the boot directory (Debian's ``/boot/efi``) is watched by the boot
directory's recursive watch; its mount is followed the same way, and a change arms the boot
directory's watch again (the marks on the ESP went with its unmount).
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import logging
import os
import select
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import watchdog.events
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyEmitter

from bootwatch import linux
from bootwatch.errors import describe_oserror

log = logging.getLogger("bootwatch.daemon.watcher")

EventFilter = list[type[FileSystemEvent]]

# watchdog's event for a queue overflow, None when the installed watchdog has none (before 7.1.1).
EVENTS_LOST_EVENT: type[FileSystemEvent] | None = getattr(watchdog.events, "EventsLostEvent", None)
# Whether Observer.schedule takes an event_filter (watchdog 4 and later).
HAS_EVENT_FILTER = "event_filter" in inspect.signature(BaseObserver.schedule).parameters
_LOST: EventFilter = [EVENTS_LOST_EVENT] if EVENTS_LOST_EVENT is not None else []

EVENT_FILTER: EventFilter = [FileCreatedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
                             DirCreatedEvent, DirMovedEvent, DirDeletedEvent, *_LOST]

# The cache directory only needs other programs' changes: a deleted image, an image or index
# rewritten in place (boom writes its index with open("w")). bootwatch itself only renames
# complete files into it from its unwatched temp subdirectory, which these events do not show.
CACHE_EVENT_FILTER: EventFilter = [FileDeletedEvent, FileClosedEvent, *_LOST]


class StoppedOnceEmitter(InotifyEmitter):
    """watchdog's inotify emitter, whose stops never overlap.

    An emitter stops itself, in its own thread, when its directory goes (``IN_DELETE_SELF``), and
    the observer stops it again when the watches are re-armed. watchdog 2.x (Debian 12's) closes
    the inotify descriptor on each stop with no guard: two stops at once close it twice, and the
    second close(2) closes whatever file took the number meanwhile (the daemon's cache lock). Once
    serialised, the second stop does nothing (the emitter has dropped its inotify by then); later
    watchdogs guard the close themselves.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop_lock = threading.Lock()

    def on_thread_stop(self) -> None:
        with self._stop_lock:
            super().on_thread_stop()


class Observer(BaseObserver):
    """An inotify observer whose emitters are :class:`StoppedOnceEmitter`."""

    def __init__(self) -> None:
        super().__init__(StoppedOnceEmitter)


class FilteredHandler(FileSystemEventHandler):
    """Passes on to *handler* only the events of the filter's types: the event filter, where the
    installed watchdog cannot apply it itself. The filters are not only narrower masks: the cache
    directory's leaves out the creations and renames of bootwatch's own writes, which would
    otherwise read as another program's changes (and each make the daemon reconcile everything)."""

    def __init__(self, handler: FileSystemEventHandler, event_filter: EventFilter) -> None:
        super().__init__()
        self.handler = handler
        self.types = tuple(event_filter)

    def dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, self.types):
            self.handler.dispatch(event)


def _schedule(observer: Observer, handler: FileSystemEventHandler, directory: Path, *,
              recursive: bool, event_filter: EventFilter) -> None:
    """observer.schedule, with the event filter applied by watchdog where it takes one, else by
    :class:`FilteredHandler`."""
    if HAS_EVENT_FILTER:
        observer.schedule(handler, str(directory), recursive=recursive, event_filter=event_filter)
    else:
        observer.schedule(FilteredHandler(handler, event_filter), str(directory), recursive=recursive)


class ChangeKind(enum.Enum):
    """What happened, by watchdog's event type (``FileSystemEvent.event_type``)."""

    CREATED = "created"
    CLOSED = "closed"  # closed after writing
    MOVED = "moved"
    DELETED = "deleted"
    EVENTS_LOST = "events_lost"  # the kernel's queue overflowed: events of every watch were lost


_KINDS = {kind.value: kind for kind in ChangeKind}


@dataclass(frozen=True)
class Change:
    """One file system event, reduced to what the worker needs: a kind and up to two names."""

    kind: ChangeKind
    path: str
    dest: str | None = None
    is_directory: bool = False

    def names(self) -> list[str]:
        return [p for p in (self.path, self.dest) if p]


class ChangeSink(Protocol):
    """Where changes go: a ``queue.Queue`` of them (or of anything a Change is)."""

    def put(self, item: Change) -> None: ...


class QueueingHandler(FileSystemEventHandler):
    """Turns watchdog events into :class:`Change` records on a queue. Does nothing else."""

    def __init__(self, changes: ChangeSink) -> None:
        super().__init__()
        self.changes = changes

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = _KINDS.get(event.event_type)
        if kind is None:
            return  # the emitter's own DirModifiedEvent for a parent directory
        src = os.fsdecode(event.src_path)
        # watchdog 2.x gives only moved events a dest_path; later ones give every event one ("" when none).
        dest_path = getattr(event, "dest_path", "")
        dest = os.fsdecode(dest_path) if dest_path else None
        self.changes.put(Change(kind, src, dest, event.is_directory))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


EspState = tuple[int, str] | None
"""The mount at the ESP's mount point (mount id, filesystem type), None when it is no mount point."""

AUTOFS = "autofs"


def esp_state(esp: Path) -> EspState:
    """What is mounted at ``esp``, from ``/proc/self/mountinfo`` (never from the path itself,
    whose lookup would mount an automount and keep it from expiring)."""
    try:
        mounts = linux.mountinfo()
    except OSError:
        return None
    found = [m for m in mounts if m.mount_point == str(esp)]
    return (found[-1].mount_id, found[-1].fstype) if found else None


@dataclass(frozen=True)
class EntryLocations:
    """Where the entry sources are: directories (inside the boot directory or not) and the ESP."""

    directories: tuple[Path, ...] = ()
    esp: Path | None = None


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


class Watcher:
    """One inotify observer over the boot, entries and cache directories, and one over the entry
    sources on the ESP outside the boot directory.

    ``needs_rearm()`` is True when a watched directory was removed, replaced or remounted (its
    device or inode changed): the daemon then calls :meth:`rearm` and reconciles, because events
    from the old directory are lost. A directory that does not exist is simply not watched until
    it appears. ``locations`` gives the entry sources, asked at every arming.
    """

    def __init__(self, boot: Path, entries: Path, cache: Path, changes: ChangeSink,
                 locations: Callable[[], EntryLocations] = EntryLocations) -> None:
        self.changes = changes
        self.boot = Path(boot)
        self.directories = self._select(boot, entries, cache)
        self.locations = locations
        self.observer: Observer | None = None
        self.identities: dict[Path, tuple[int, int] | None] = {}
        self._lock = threading.Lock()
        self.esp_observer: Observer | None = None
        self.esp: Path | None = None
        # An ESP inside the boot directory (Debian's /boot/efi): watched by the boot directory's
        # recursive watch, whose marks on it go with an unmount and do not come back with a mount.
        self.esp_inside: Path | None = None
        self.esp_armed: EspState = None
        self.esp_watched: tuple[Path, ...] = ()
        self.esp_dirty = threading.Event()  # arming failed: try again
        self._mount_table: MountTableSignal | None = None

    @staticmethod
    def _select(boot: Path, entries: Path, cache: Path) -> list[tuple[Path, bool, EventFilter]]:
        """(directory, recursive, event filter): boot recursively, entries and cache only if outside boot."""
        boot_real = Path(os.path.realpath(boot))
        chosen: list[tuple[Path, bool, EventFilter]] = [(Path(boot), True, EVENT_FILTER)]
        for extra, event_filter in ((entries, EVENT_FILTER), (cache, CACHE_EVENT_FILTER)):
            real = Path(os.path.realpath(extra))
            if real != boot_real and boot_real not in real.parents:
                chosen.append((Path(extra), False, event_filter))
        return chosen

    def start(self) -> None:
        """Arm the watches. Directories that do not exist yet are skipped (and make us unhealthy)."""
        with self._lock:
            observer = Observer()
            handler = QueueingHandler(self.changes)
            observer.daemon = True
            try:
                for directory, recursive, event_filter in self.directories:
                    self.identities[directory] = _identity(directory)
                    if self.identities[directory] is None:
                        continue
                    _schedule(observer, handler, directory, recursive=recursive, event_filter=event_filter)
                observer.start()
            except OSError as e:
                # A directory vanished between its stat and its watch (or a subdirectory of it
                # did): nothing is armed, not alive(), and needs_rearm() is True until start()
                # succeeds; the daemon tries again at its next tick.
                log.warning("cannot arm the inotify watches now (%s); trying again shortly", describe_oserror(e))
                _stop(observer)
                return
            self.observer = observer
        self.start_esp()

    def start_esp(self) -> None:
        """Watch the entry sources on the ESP outside the boot directory, if it is mounted (an
        automount with nothing mounted is left alone). A failure is logged and retried with the
        next :meth:`esp_changed`."""
        with self._lock:
            self.esp_dirty.clear()
            try:
                locations = self.locations()
            except (OSError, ValueError) as e:
                log.warning("cannot tell where the ESP is now (%s); its entries are not watched", e)
                return
            boot_real = Path(os.path.realpath(self.boot))
            esp = Path(os.path.realpath(locations.esp)) if locations.esp is not None else None
            self.esp = esp if esp is not None and not _inside(esp, boot_real) else None
            self.esp_inside = esp if self.esp is None else None
            if esp is None:
                return
            if self._mount_table is None:
                self._mount_table = MountTableSignal()
            self._mount_table.changed()  # what is armed now is as of this mount table
            self.esp_armed = state = esp_state(esp)
            if self.esp is None:
                return  # inside the boot directory: its watch covers it (rearm_esp arms it again)
            if state is not None and state[1] == AUTOFS:
                return  # not mounted: nothing to watch, and looking would mount it
            observer = Observer()
            observer.daemon = True
            handler = QueueingHandler(self.changes)
            try:
                # The whole ESP: its entries, and the files they name wherever they are on it.
                present = [self.esp] if os.path.isdir(self.esp) else []
                for directory in present:
                    _schedule(observer, handler, directory, recursive=True, event_filter=EVENT_FILTER)
                observer.start()
            except OSError as e:
                log.warning("cannot watch the entries on the ESP %s now (%s); trying again shortly", self.esp,
                            describe_oserror(e))
                _stop(observer)
                self.esp_dirty.set()
                return
            self.esp_observer, self.esp_watched = observer, tuple(present)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both observers (:meth:`start` arms them again)."""
        with self._lock:
            if self.observer is not None:
                self.observer.stop()
                self.observer.join(timeout)
                self.observer = None
        self.stop_esp(timeout)

    def stop_esp(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self.esp_observer is not None:
                _stop(self.esp_observer, timeout)
                self.esp_observer, self.esp_watched = None, ()

    def rearm(self) -> None:
        self.stop()
        self.start()

    def rearm_esp(self) -> None:
        if self.esp_inside is not None:
            self.rearm()  # the boot directory's recursive watch is the ESP's
            return
        self.stop_esp()
        self.start_esp()

    def retarget(self, boot: Path, entries: Path, cache: Path) -> None:
        """Watch these directories instead (a reload changed the paths)."""
        self.stop()
        self.boot = Path(boot)
        self.directories = self._select(boot, entries, cache)
        self.start()

    def alive(self) -> bool:
        """The observer thread runs (the watchdog's question)."""
        observer = self.observer
        return observer is not None and observer.is_alive()

    def needs_rearm(self) -> bool:
        """A watched directory appeared, vanished, or was replaced or remounted (device or inode
        changed), or an emitter stopped (inotify's IN_DELETE_SELF): events may have been lost."""
        observer = self.observer
        if observer is None:
            return True
        for directory, _, _ in self.directories:
            if _identity(directory) != self.identities.get(directory):
                return True
        return any(not emitter.is_alive() for emitter in list(observer.emitters))

    def esp_changed(self) -> bool:
        """The ESP was mounted, unmounted or replaced since its entries were watched, or a directory
        appeared or went on it: its watches must be armed again (:meth:`rearm_esp`), and the entries
        read again. From the mount table alone: the ESP itself is not looked at. An ESP inside the
        boot directory counts only while it is a mount of its own."""
        esp = self.esp or self.esp_inside
        if esp is None:
            return False
        if self.esp_dirty.is_set() or esp_state(esp) != self.esp_armed:
            return True
        if self._mount_table is not None and self._mount_table.changed():
            # Some mount changed: maybe the ESP was unmounted and mounted again (the same line).
            if self.esp is None:
                return self.esp_armed is not None and self.esp_armed[1] != AUTOFS
            return self.esp_armed is None or self.esp_armed[1] != AUTOFS
        observer = self.esp_observer
        return observer is not None and any(not emitter.is_alive() for emitter in list(observer.emitters))

    def close(self) -> None:
        if self._mount_table is not None:
            self._mount_table.close()
            self._mount_table = None


class MountTableSignal:
    """The kernel's word that the mount table changed: ``poll(2)`` on ``/proc/self/mountinfo``
    gives ``POLLPRI`` (with ``POLLERR``) once after each change, and the poll itself takes the
    news. A descriptor of a procfs file holds no mount of ours."""

    def __init__(self) -> None:
        self.fd: int | None = None
        with contextlib.suppress(OSError):
            self.fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)

    def changed(self) -> bool:
        """Whether the mount table changed since the last call (True if that cannot be told)."""
        if self.fd is None:
            return True
        poller = select.poll()
        poller.register(self.fd, select.POLLPRI | select.POLLERR)
        return any(events & (select.POLLPRI | select.POLLERR) for _, events in poller.poll(0))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _stop(observer: Observer, timeout: float = 5.0) -> None:
    observer.stop()
    with contextlib.suppress(RuntimeError):  # its thread may not have started
        observer.join(timeout)
