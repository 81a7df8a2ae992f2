"""The daemon's status file, and ``bootwatch status``.

The daemon keeps ``<runtime>/status.json`` (``/run/bootwatch`` under systemd), replaced
atomically after each batch, so ``bootwatch status`` can answer without talking to the daemon:
whether it runs (the PID is alive and is bootwatch), since when, the last reconcile, and the
counts by state.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Optional

from bootwatch.cache import PathStatus
from bootwatch.errors import FileTooLargeError
from bootwatch.safety import read_regular
from bootwatch.store import TempFile

STATUS_NAME = "status.json"
# The daemon writes well under a kilobyte; a larger file is not its own and is not read whole.
MAX_STATUS_SIZE = 1 << 20

log = logging.getLogger("bootwatch.status")


@dataclass
class DaemonStatus:
    pid: int
    started: float
    boot_dir: str
    cache_dir: str
    last_reconcile: Optional[float] = None
    last_batch: Optional[float] = None
    counts: Dict[str, int] = field(default_factory=dict)
    problems: int = 0
    state: str = "starting"  # starting, running, reloading, stopping
    error: Optional[str] = None  # why the cache cannot be read now, e.g. a corrupt index
    lock_wait: Optional[str] = None  # who holds the cache lock the daemon has waited for too long
    references_unknown: Optional[str] = None  # why the boot entries cannot be trusted now (bls.References)
    degraded: Optional[str] = None  # what the daemon cannot do now, e.g. on a read-only cache


    def summary(self) -> str:
        """The one line for systemd's STATUS=."""
        if self.lock_wait:
            return f"watching {self.boot_dir}: {self.lock_wait}"
        if self.error:
            return f"watching {self.boot_dir}: {self.error}"
        if self.references_unknown:
            return (f"watching {self.boot_dir}: references unknown, nothing is cleaned or deleted: "
                    f"{self.references_unknown}")
        counts = self.counts
        last = time.strftime("%H:%M:%S", time.localtime(self.last_reconcile or self.last_batch or self.started))
        text = (f"watching {self.boot_dir}: {sum(counts.values())} cached, {counts.get('MISSING', 0)} missing, "
                f"{counts.get('RESTORED', 0)} restored, last sync {last}")
        if self.problems:
            text += f", {self.problems} with problems"
        if self.degraded:
            text += f"; {self.degraded}"
        return text

    def set_counts(self, statuses: Iterable[PathStatus]) -> None:
        statuses = list(statuses)
        self.counts = dict(Counter(s.state for s in statuses))
        self.problems = sum(1 for s in statuses if s.image_problem)


def status_path(runtime_dir: Path) -> Path:
    return Path(runtime_dir) / STATUS_NAME


def write_status(runtime_dir: Path, status: DaemonStatus) -> None:
    """Replace the status file atomically: a reader sees the old or the new one."""
    runtime_dir = Path(runtime_dir)
    runtime_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    data = json.dumps(asdict(status), indent=1).encode() + b"\n"
    with TempFile(runtime_dir, prefix=".status.") as tmp:
        os.fchmod(tmp.fd, 0o644)
        os.write(tmp.fd, data)
        tmp.commit(status_path(runtime_dir))


def read_status(runtime_dir: Path) -> Optional[dict]:
    """What the status file says; None if there is none, or it is not one the daemon wrote
    (unreadable, not JSON, larger than :data:`MAX_STATUS_SIZE`: said in one line)."""
    path = status_path(runtime_dir)
    try:
        return json.loads(read_regular(path, limit=MAX_STATUS_SIZE))
    except FileTooLargeError as e:
        log.warning("%s; ignored: the daemon writes a few hundred bytes there", e)
        return None
    except (OSError, ValueError, RecursionError):
        return None


def daemon_is_running(status: dict) -> bool:
    """The PID in the status file is alive and runs bootwatch (not a reused PID)."""
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"bootwatch" in cmdline
