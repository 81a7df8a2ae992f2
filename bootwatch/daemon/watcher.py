"""inotify watches on the boot, entries and cache directories, through watchdog.

The handlers only put :class:`Change` records on a queue; the daemon's worker thread applies them.
The inotify mask is narrowed with watchdog's ``event_filter`` to creations, closes after
writing, moves and deletions: bootwatch reads every file it hashes, and ``IN_OPEN``,
``IN_ACCESS`` or ``IN_CLOSE_NOWRITE`` events for those reads would come straight back to it.
``IN_MODIFY`` is left out on purpose too: a file being written is only worth looking at once
it is closed or renamed into place (dracut and package managers write a temp file and rename).

The kernel's event queue can overflow (``IN_Q_OVERFLOW``). watchdog (7.1.1 and later, see
pyproject.toml) then repairs its recursive watches and gives every watch an ``EventsLostEvent``;
it is in the event filters, and it becomes a :attr:`ChangeKind.EVENTS_LOST` change, which the
daemon answers with a full reconcile. The daemon's periodic reconcile remains the safety net for
whatever else inotify cannot see (a remount, a change made while bootwatch was not running).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

from bootwatch.errors import describe_oserror

log = logging.getLogger("bootwatch.daemon.watcher")

EventFilter = list[type[FileSystemEvent]]

EVENT_FILTER: EventFilter = [FileCreatedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
                             DirCreatedEvent, DirMovedEvent, DirDeletedEvent, EventsLostEvent]

# The cache directory only needs other programs' changes: a deleted image, an image or index
# rewritten in place (boom writes its index with open("w")). bootwatch itself only renames
# complete files into it from its unwatched temp subdirectory, which these events do not show.
CACHE_EVENT_FILTER: EventFilter = [FileDeletedEvent, FileClosedEvent, EventsLostEvent]


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
        dest = os.fsdecode(event.dest_path) if event.dest_path else None
        self.changes.put(Change(kind, src, dest, event.is_directory))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Watcher:
    """One inotify observer over the boot, entries and cache directories.

    ``needs_rearm()`` is True when a watched directory was removed, replaced or remounted (its
    device or inode changed): the daemon then calls :meth:`rearm` and reconciles, because events
    from the old directory are lost. A directory that does not exist is simply not watched until
    it appears.
    """

    def __init__(self, boot: Path, entries: Path, cache: Path, changes: ChangeSink) -> None:
        self.changes = changes
        self.directories = self._select(boot, entries, cache)
        self.observer: InotifyObserver | None = None
        self.identities: dict[Path, tuple[int, int] | None] = {}
        self._lock = threading.Lock()

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
            observer = InotifyObserver()
            handler = QueueingHandler(self.changes)
            observer.daemon = True
            try:
                for directory, recursive, event_filter in self.directories:
                    self.identities[directory] = _identity(directory)
                    if self.identities[directory] is None:
                        continue
                    observer.schedule(handler, str(directory), recursive=recursive, event_filter=event_filter)
                observer.start()
            except OSError as e:
                # A directory vanished between its stat and its watch (or a subdirectory of it
                # did): nothing is armed, not alive(), and needs_rearm() is True until start()
                # succeeds; the daemon tries again at its next tick.
                log.warning("cannot arm the inotify watches now (%s); trying again shortly", describe_oserror(e))
                observer.stop()
                with contextlib.suppress(RuntimeError):  # its thread may not have started
                    observer.join()
                return
            self.observer = observer

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self.observer is not None:
                self.observer.stop()
                self.observer.join(timeout)
                self.observer = None

    def rearm(self) -> None:
        self.stop()
        self.start()

    def retarget(self, boot: Path, entries: Path, cache: Path) -> None:
        """Watch these directories instead (a reload changed the paths)."""
        self.stop()
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
