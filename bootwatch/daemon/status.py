"""The daemon's status file, and ``bootwatch status``.

The daemon keeps ``<runtime>/status.json`` (``/run/bootwatch`` under systemd), replaced
atomically after each batch, so ``bootwatch status`` can answer without talking to the daemon:
since when it runs, the last reconcile, and the counts by state.

Whether the daemon runs is judged by one rule: some process holds the daemon lock on the cache
directory (store.CacheStore.hold_daemon_lock), as ``/proc/locks`` says. The status file is
untrusted (a daemon killed with SIGKILL leaves it behind, its PID reused by anything); it gives
the details only when its PID is the holder of that lock and every field has its type.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from bootwatch.atomic import write_atomically
from bootwatch.cache.index import IMAGE_TS_RANGE
from bootwatch.cache.operations import PathState, PathStatus
from bootwatch.cache.proc import flock_holder_pids
from bootwatch.entries.summary import Census
from bootwatch.errors import BootwatchError
from bootwatch.health.model import EntryHealth, EntryState
from bootwatch.health.summary import count_states, states_text
from bootwatch.safety import read_regular

STATUS_NAME = "status.json"
# The daemon writes well under a kilobyte; a larger file is not its own and is not read whole.
MAX_STATUS_SIZE = 1 << 20


@dataclass
class DaemonStatus:
    pid: int
    started: float
    boot_dir: str
    cache_dir: str
    last_reconcile: float | None = None
    last_batch: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    problems: int = 0
    state: str = "starting"  # starting, running, reloading, stopping
    error: str | None = None  # why the cache cannot be read now, e.g. a corrupt index
    lock_wait: str | None = None  # who holds the cache lock the daemon has waited for too long
    transaction_wait: str | None = None  # the package manager transaction a batch waits for
    references_unknown: str | None = None  # why the boot entries cannot be trusted now (cache.references.References)
    degraded: str | None = None  # what the daemon cannot do now, e.g. on a read-only cache
    # The new kernels and initramfs images written broken that are still their paths' newest,
    # with the command that puts the previous good image back (see cache.writecheck).
    written_broken: str | None = None
    # The boot entries as the last read of the inventory found them (entries.summary.Census):
    # entries by source found, the words for them ("5 boot entries (grub 4, bls 1)"), and why
    # there is nothing to keep bootable, while that is so. None: not read yet.
    entries: dict[str, int] | None = None
    entries_text: str | None = None
    entries_warning: str | None = None
    # The health of the boot entries as the last health pass found them (bootwatch.health):
    # entries by state, every state counted, and each entry's state by its name (SOURCE:ID,
    # escaped to one printable line). None: not checked yet.
    entries_by_state: dict[str, int] | None = None
    entry_states: dict[str, str] | None = None

    def set_entries(self, census: Census) -> None:
        self.entries = {source.value: count for source, count in census.by_source.items()}
        self.entries_text = census.text()
        self.entries_warning = census.warning

    def set_health(self, healths: Sequence[EntryHealth]) -> None:
        self.entries_by_state = {state.value: count for state, count in count_states(healths).items()}
        self.entry_states = {_as_line(h.name): h.state.value for h in healths}

    def states_text(self) -> str:
        """``5 bootable, 1 BROKEN``, or empty before the first health pass or without entries."""
        if not self.entries_by_state:
            return ""
        return states_text({EntryState(k): n for k, n in self.entries_by_state.items()})

    def summary(self) -> str:
        """The one line for systemd's STATUS=: what is urgent, else the boot entries and the cache."""
        if self.lock_wait:
            return f"watching {self.boot_dir}: {self.lock_wait}"
        if self.transaction_wait:
            return f"watching {self.boot_dir}: {self.transaction_wait}"
        if self.error:
            return f"watching {self.boot_dir}: {self.error}"
        watching = f"watching {self.boot_dir}: "
        if self.entries_warning:
            watching += f"WARNING: {self.entries_warning}; "
        elif self.entries_text:
            states = self.states_text()
            watching += f"{self.entries_text}: {states}; " if states else f"{self.entries_text}; "
        # A new image written broken ends the line, whatever it holds: what to do about it.
        broken = f"; {self.written_broken}" if self.written_broken else ""
        if self.references_unknown:
            return f"{watching}references unknown, nothing is cleaned or deleted: {self.references_unknown}{broken}"
        counts = self.counts
        last = time.strftime("%H:%M:%S", time.localtime(self.last_reconcile or self.last_batch or self.started))
        text = (f"{watching}{sum(counts.values())} cached, {counts.get(PathState.MISSING, 0)} missing, "
                f"{counts.get(PathState.RESTORED, 0)} restored, last sync {last}")
        if self.problems:
            text += f", {self.problems} with problems"
        if self.degraded:
            text += f"; {self.degraded}"
        return text + broken

    @classmethod
    def from_json(cls, data: object, *, source: Path) -> DaemonStatus:
        """The status a daemon wrote, every field checked for its type (unknown keys are ignored);
        a :class:`BootwatchError` naming ``source`` and the first bad field otherwise."""
        def bad(message: str) -> BootwatchError:
            return BootwatchError(f"is not a status file the daemon wrote: {message}", path=source)

        if not isinstance(data, dict):
            raise bad(f"the top level is a {type(data).__name__}, expected an object")
        values: dict[str, object] = {}
        for name, kind in _FIELDS.items():
            if name not in data:
                if name in _REQUIRED:
                    raise bad(f"'{name}' is missing")
                continue
            value = data[name]
            if not _FIELD_CHECKS[kind](value):
                raise bad(f"'{name}' is not {_FIELD_WORDS[kind]}")
            values[name] = value
        return cls(**values)  # type: ignore[arg-type]

    def set_counts(self, statuses: Iterable[PathStatus]) -> None:
        statuses = list(statuses)
        self.counts = dict(Counter(s.state for s in statuses))
        self.problems = sum(1 for s in statuses if s.image_problem)


_STATE_NAMES = {state.value for state in EntryState}


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _as_line(text: str) -> str:
    """``text`` as a line :func:`_is_line` takes: an entry's id comes from a file anyone with root
    on the boot partition wrote, and may hold any character."""
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _is_time(value: object) -> bool:
    """A wall-clock time that time.localtime and strftime take (the bounds of an index's image_ts)."""
    low, high = IMAGE_TS_RANGE
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def _is_line(value: object) -> bool:
    """Text printed as it is: printable (no newline, control character or lone surrogate)."""
    return isinstance(value, str) and value.isprintable()


_FIELD_CHECKS: dict[str, Callable[[Any], bool]] = {
    "pid": lambda v: _is_count(v) and v > 0,
    "time": _is_time,
    "optional time": lambda v: v is None or _is_time(v),
    "line": _is_line,
    "optional line": lambda v: v is None or _is_line(v),
    "count": _is_count,
    "counts": lambda v: isinstance(v, dict) and all(_is_line(k) and _is_count(n) for k, n in v.items()),
    "optional counts": lambda v: v is None or _FIELD_CHECKS["counts"](v),
    "optional state counts": lambda v: v is None or (_FIELD_CHECKS["counts"](v) and set(v) <= _STATE_NAMES),
    "optional entry states": lambda v: v is None or (isinstance(v, dict) and all(
        _is_line(k) and v[k] in _STATE_NAMES for k in v)),
}
_FIELD_WORDS = {
    "pid": "a process id", "time": "a time", "optional time": "a time or null", "line": "a line of text",
    "optional line": "a line of text or null", "count": "a count", "counts": "an object of counts",
    "optional counts": "an object of counts or null",
    "optional state counts": "an object of counts by entry state or null",
    "optional entry states": "an object of entry states or null",
}
_FIELDS = {
    "pid": "pid", "started": "time", "boot_dir": "line", "cache_dir": "line", "last_reconcile": "optional time",
    "last_batch": "optional time", "counts": "counts", "problems": "count", "state": "line",
    "error": "optional line", "lock_wait": "optional line", "transaction_wait": "optional line",
    "references_unknown": "optional line", "degraded": "optional line", "entries": "optional counts",
    "entries_text": "optional line", "entries_warning": "optional line",
    "entries_by_state": "optional state counts", "entry_states": "optional entry states",
    "written_broken": "optional line",
}
_REQUIRED = ("pid", "started", "boot_dir", "cache_dir")


def status_path(runtime_dir: Path) -> Path:
    return Path(runtime_dir) / STATUS_NAME


def write_status(runtime_dir: Path, status: DaemonStatus) -> None:
    """Replace the status file atomically: a reader sees the old or the new one."""
    runtime_dir = Path(runtime_dir)
    runtime_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    data = json.dumps(asdict(status), indent=1).encode() + b"\n"
    write_atomically(status_path(runtime_dir), data, mode=0o644, prefix=".status.")


def load_status(runtime_dir: Path) -> DaemonStatus:
    """The status file, checked field by field; a :class:`BootwatchError` naming it (and what is
    wrong) if it is missing, not a regular file, too large, not JSON or not what the daemon writes."""
    path = status_path(runtime_dir)
    try:
        data = json.loads(read_regular(path, limit=MAX_STATUS_SIZE))
    except BootwatchError:
        raise  # too large, or not a regular file (a FIFO): it names the file and says what it is
    except FileNotFoundError:
        raise BootwatchError("does not exist", path=path) from None
    except OSError as e:
        raise BootwatchError(f"cannot be read ({os.strerror(e.errno).lower() if e.errno else e})",
                             path=path) from None
    except (ValueError, RecursionError):
        raise BootwatchError("is not valid JSON", path=path) from None
    return DaemonStatus.from_json(data, source=path)


def daemon_pids(cache_dir: Path) -> list[int]:
    """The PIDs that hold the daemon lock on ``cache_dir``: the running daemon (0 for one in a PID
    namespace we cannot see); empty if none runs. Judged from the directory's ``stat`` and
    ``/proc/locks``, so a user who may not read the cache can ask. A :class:`BootwatchError` when
    that cannot be told (never "not running" for "cannot tell").
    """
    try:
        st = os.stat(cache_dir)
    except FileNotFoundError:
        return []  # no cache directory: no daemon holds its lock
    except OSError as e:
        raise BootwatchError(f"cannot tell whether the daemon runs: the cache directory cannot be examined "
                             f"({os.strerror(e.errno).lower() if e.errno else e})", path=cache_dir) from None
    try:
        return flock_holder_pids(st)
    except OSError as e:
        raise BootwatchError(f"cannot tell whether the daemon runs on {cache_dir}: /proc/locks cannot be read "
                             f"({os.strerror(e.errno).lower() if e.errno else e})", path="/proc/locks") from None
