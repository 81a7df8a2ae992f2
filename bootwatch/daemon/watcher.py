"""inotify watches on the boot, entries and cache directories, through watchdog.

The handlers only put :class:`Change` records on a queue; the daemon's worker thread applies them.
The inotify mask is narrowed with watchdog's ``event_filter`` to creations, closes after
writing, moves and deletions: bootwatch reads every file it hashes, and ``IN_OPEN``,
``IN_ACCESS`` or ``IN_CLOSE_NOWRITE`` events for those reads would come straight back to it.
``IN_MODIFY`` is left out on purpose too: a file being written is only worth looking at once
it is closed or renamed into place (dracut and package managers write a temp file and rename).

The kernel's event queue can overflow (``IN_Q_OVERFLOW``). watchdog only logs a warning then and
delivers no event, so :class:`OverflowDetector` listens for that warning on watchdog's logger and
asks for a full reconcile. The daemon's periodic reconcile remains the safety net for whatever
else inotify cannot see (a remount, a change made while bootwatch was not running).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

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
from watchdog.observers.inotify import InotifyObserver

EVENT_FILTER = [FileCreatedEvent, FileClosedEvent, FileMovedEvent, FileDeletedEvent,
                DirCreatedEvent, DirMovedEvent, DirDeletedEvent]

# The cache directory only needs other programs' changes: a deleted image, an image or index
# rewritten in place (boom writes its index with open("w")). bootwatch itself only renames
# complete files into it from its unwatched temp subdirectory, which these events do not show.
CACHE_EVENT_FILTER = [FileDeletedEvent, FileClosedEvent]

# watchdog logs this (watchdog.observers.inotify_c) when the kernel reports IN_Q_OVERFLOW.
OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
OVERFLOW_TEXT = "queue overflow"


@dataclass(frozen=True)
class Change:
    """One file system event, reduced to what the worker needs: a kind and up to two names."""

    kind: str  # "created", "closed", "moved", "deleted", "overflow", "watch-lost"
    path: str
    dest: str | None = None
    is_directory: bool = False

    def names(self) -> list[str]:
        return [p for p in (self.path, self.dest) if p]


class QueueingHandler(FileSystemEventHandler):
    """Turns watchdog events into :class:`Change` records on a queue. Does nothing else."""

    def __init__(self, changes: queue.Queue[Change]) -> None:
        super().__init__()
        self.changes = changes

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind not in ("created", "closed", "moved", "deleted"):
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if getattr(event, "dest_path", "") else None
        self.changes.put(Change(kind, src, dest, event.is_directory))


class OverflowDetector(logging.Handler):
    """Notices watchdog's "Inotify queue overflowed" warning and queues an ``overflow`` change."""

    def __init__(self, changes: queue.Queue[Change]) -> None:
        super().__init__(level=logging.WARNING)
        self.changes = changes

    def emit(self, record: logging.LogRecord) -> None:
        if OVERFLOW_TEXT in record.getMessage().lower():
            self.changes.put(Change("overflow", ""))


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

    def __init__(self, boot: Path, entries: Path, cache: Path, changes: queue.Queue[Change]) -> None:
        self.changes = changes
        self.directories = self._select(boot, entries, cache)
        self.observer: InotifyObserver | None = None
        self.identities: dict[Path, tuple[int, int] | None] = {}
        self.overflow = OverflowDetector(changes)
        self._lock = threading.Lock()

    @staticmethod
    def _select(boot: Path, entries: Path, cache: Path) -> list[tuple[Path, bool, list]]:
        """(directory, recursive, event filter): boot recursively, entries and cache only if outside boot."""
        boot_real = Path(os.path.realpath(boot))
        chosen = [(Path(boot), True, EVENT_FILTER)]
        for extra, event_filter in ((entries, EVENT_FILTER), (cache, CACHE_EVENT_FILTER)):
            real = Path(os.path.realpath(extra))
            if real != boot_real and boot_real not in real.parents:
                chosen.append((Path(extra), False, event_filter))
        return chosen

    def start(self) -> None:
        """Arm the watches. Directories that do not exist yet are skipped (and make us unhealthy)."""
        with self._lock:
            logging.getLogger(OVERFLOW_LOGGER).addHandler(self.overflow)
            observer = InotifyObserver()
            handler = QueueingHandler(self.changes)
            for directory, recursive, event_filter in self.directories:
                self.identities[directory] = _identity(directory)
                if self.identities[directory] is None:
                    continue
                observer.schedule(handler, str(directory), recursive=recursive, event_filter=event_filter)
            observer.daemon = True
            observer.start()
            self.observer = observer

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            logging.getLogger(OVERFLOW_LOGGER).removeHandler(self.overflow)
            if self.observer is not None:
                self.observer.stop()
                self.observer.join(timeout)
                self.observer = None

    def rearm(self) -> None:
        self.stop()
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
