"""The daemon's health pass: every boot entry's verdict (:mod:`bootwatch.health`) after a batch,
and a journal event for each entry whose state changed for the worse or back.

The pass runs on the worker after the batch's cache work, outside the cache lock. It keeps one
:class:`~bootwatch.health.facts.FactsMemo` for the daemon's life, so a pass over an unchanged
host reads no image again: it stats each file, and reads only what is new or changed.

Each image's check is bounded (``image_timeout``: half the time without progress after which the
watchdog counts the worker as stuck, so a check never gets the daemon restarted): a hostile or
huge image (a small gzip that inflates to gigabytes) is "not checked: gave up after N seconds",
its entry UNKNOWN, and the next batch waits no longer than that; the journal says so once (a
warning) until the image is checked in time or changes. The memo does not remember a check cut
short, so each pass tries again, within the same bound. A stop of the daemon cuts the check
short at once (the worker's cancel event).

The journal hears of transitions, not of states: an entry that becomes BROKEN logs
``ENTRY_BROKEN`` once (error), one that becomes AT_RISK ``ENTRY_AT_RISK`` once (warning), and
one reported so that is neither any more ``ENTRY_RECOVERED`` (notice), with the state it is in
now. The first pass after the start reports every entry that is BROKEN or AT_RISK then: a
restarted daemon says again what is still wrong. An entry that leaves the inventory is forgotten,
but only when the inventory was read completely: the entries of a source that cannot be read now
are not gone, and are not reported again when it can be.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from bootwatch.cache.operations import BootCache
from bootwatch.entries.inventory import Inventory
from bootwatch.health.facts import FactsMemo
from bootwatch.health.judge import check_host
from bootwatch.health.model import EntryHealth, EntryState
from bootwatch.log import NOTICE, Event, log_event

log = logging.getLogger("bootwatch.daemon.health")

_REPORTED = {EntryState.BROKEN: (Event.ENTRY_BROKEN, logging.ERROR),
             EntryState.AT_RISK: (Event.ENTRY_AT_RISK, logging.WARNING)}


def _named(health: EntryHealth) -> str:
    """The entry as a log line names it: ``source:id (title)``, the title left out where it is the
    id itself (a GRUB menuentry without --id is known by its title) or empty."""
    title = health.entry.title
    return health.name if not title or title == health.entry.id else f"{health.name} ({title})"


class HealthWatch:
    """The worker's: the facts memo, and each entry's state as the last pass found it."""

    def __init__(self, runtime_dir: Path, *, image_timeout: float | None = None,
                 cancel: threading.Event | None = None) -> None:
        self.facts = FactsMemo(runtime_dir, timeout=image_timeout, cancel=cancel)
        self.states: dict[str, EntryState] = {}
        self._gave_up: dict[Path, str] = {}  # the images whose cut-short check was logged, with its message

    def check(self, cache: BootCache, inventory: Inventory, *, progress: Callable[[], None],
              cancel: threading.Event) -> tuple[EntryHealth, ...] | None:
        """Every entry's health, its transitions logged; ``progress`` is called after each entry
        (an image read can take a while: the watchdog sees the worker alive). None: cancelled."""
        self.facts.incomplete.clear()  # of this pass: a check cut short is never remembered, so read again
        host = check_host(cache, inventory, self.facts)
        healths = []
        for entry in inventory.entries:
            if cancel.is_set():
                return None
            healths.append(host.entry(entry))
            progress()
        self.note(healths, complete=inventory.unknown is None)
        self._note_gave_up()
        return tuple(healths)

    def _note_gave_up(self) -> None:
        """A warning for each image whose check the bound cut short, once while it stays so."""
        incomplete = {path: check.message for path, check in self.facts.incomplete.items()}
        for path, message in incomplete.items():
            if self._gave_up.get(path) != message:
                log.warning("%s: %s; the entries that need it are UNKNOWN until it is checked in time", path,
                            message)
        self._gave_up = incomplete

    def note(self, healths: Sequence[EntryHealth], *, complete: bool) -> None:
        """Remember the states of a pass and log its transitions; ``complete``: the inventory was
        read completely, so an entry not in ``healths`` is gone."""
        states = {} if complete else dict(self.states)
        for health in healths:
            name, state = health.name, health.state
            before = self.states.get(name)
            states[name] = state
            if state is before:
                continue
            findings = "\n".join(f.message for f in health.findings) or "none"
            if state in _REPORTED:
                event, level = _REPORTED[state]
                log_event(log, event, "boot entry %s is %s: %s", _named(health), state.value,
                          "; ".join(f.message for f in health.findings if f.state is state),
                          level=level, path=health.entry.origin, state=state, entry=name,
                          title=health.entry.title, findings=findings)
            elif before is not None and before in _REPORTED:
                log_event(log, Event.ENTRY_RECOVERED, "boot entry %s is no longer %s: %s now%s", _named(health),
                          before.value, state.value,
                          "" if state is EntryState.BOOTABLE else f" ({health.findings[0].message})",
                          level=NOTICE, path=health.entry.origin, state=state, entry=name,
                          title=health.entry.title, findings=findings, previous_state=before.value)
        self.states = states
