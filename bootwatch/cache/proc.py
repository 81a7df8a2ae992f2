"""What ``/proc`` says about processes and the locks they hold.

Used to name the holder of a lock that someone waits for (the daemon on the writers' lock, a
second daemon refused by the daemon lock), to tell a live pin owner from a dead one, and to find
a process writing a file where the kernel gives no read lease (see hashing.ReadLease).

The format of ``/proc/PID/stat`` is read in :mod:`bootwatch.linux` (the image checks need it
too); what a lock holder or a writer is, and how it is named, is the cache's and lives here.

PIDs are those of the PID namespace whose ``/proc`` is mounted at :data:`PROC`; a holder in a
namespace we cannot see shows up with PID 0 in ``/proc/locks`` and is reported as unknown.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bootwatch import linux

PROC = linux.PROC
O_ACCMODE = 0o3


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (:func:`bootwatch.linux.proc_stat`), or None if there is no
    such process or it is a zombie: a zombie has exited; only its exit status waits to be
    collected, so it uses no file any more.
    """
    info = linux.proc_stat(pid)
    return None if info is None or info.exited else info.start_time


def _boot_time() -> float | None:
    """The wall-clock time the system booted (``btime`` in ``/proc/stat``)."""
    try:
        for line in (PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` started, as a wall-clock timestamp; None if unknown or gone."""
    try:
        ticks = process_start_time(pid)
    except (OSError, ValueError, IndexError):
        return None
    boot = _boot_time()
    if ticks is None or boot is None:
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def process_command(pid: int) -> str | None:
    """The command line of ``pid`` (arguments joined by spaces, non-printable characters escaped),
    or its ``comm`` name for a kernel thread; None if it is gone."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
        if not raw:
            raw = (PROC / str(pid) / "comm").read_bytes().strip()
    except OSError:
        return None
    text = " ".join(arg.decode("utf-8", "backslashreplace") for arg in raw.rstrip(b"\0").split(b"\0"))
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class LockHolder:
    """A process that holds a lock: its PID, command line and start time (None: unknown)."""

    pid: int
    command: str | None
    started: float | None

    @classmethod
    def of(cls, pid: int) -> LockHolder:
        return cls(pid, process_command(pid), process_started_at(pid))

    def describe(self) -> str:
        """``PID 1234 (bootwatch add /vmlinuz-6.1, running since 2026-12-05 08:10:03)``."""
        details = [self.command or "command unknown"]
        if self.started is not None:
            details.append("running since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)))
        return f"PID {self.pid} ({', '.join(details)})"


def flock_holders(fd: int) -> list[LockHolder]:
    """The processes that hold an ``flock`` on the file open at ``fd``, from ``/proc/locks``.

    An empty list means the holder is unknown (gone meanwhile, or in another PID namespace),
    never that nobody holds it.
    """
    try:
        pids = flock_holder_pids(os.fstat(fd))
    except OSError:
        return []
    return [LockHolder.of(pid) for pid in pids if pid > 0]


def flock_holder_pids(st: os.stat_result) -> list[int]:
    """The PIDs that hold an ``flock`` on the file of ``st`` (its device and inode), from
    ``/proc/locks``; 0 for a holder in a PID namespace we cannot see. Empty: nobody holds one.
    Raises :class:`OSError` if ``/proc/locks`` cannot be read (then nobody can tell).

    A line there reads ``1: FLOCK  ADVISORY  WRITE 1234 fe:00:260072 0 EOF`` (PID, then the
    device as hexadecimal major:minor of the superblock, and the inode); waiters are the lines
    with ``->``. The device of the superblock can differ from ``st_dev`` (btrfs subvolumes,
    overlayfs), so the inode decides when no line matches both. Needs no descriptor of the
    file, only its ``stat``: ``bootwatch status`` judges the daemon lock of a cache directory it
    may not read.
    """
    lines = (PROC / "locks").read_text().splitlines()
    exact: list[int] = []
    same_inode: list[int] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8 or fields[1] != "FLOCK":
            continue  # a waiter ("->"), or a POSIX or OFD lock: not what flock() takes
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            if int(inode) != st.st_ino:
                continue
            device = os.makedev(int(major, 16), int(minor, 16))
        except ValueError:
            continue
        (exact if device == st.st_dev else same_inode).append(max(pid, 0))
    return list(dict.fromkeys(exact or same_inode))


def process_writing(device: int, inode: int) -> int | None:
    """The PID of a process that has the file (device, inode) open for writing, or None.

    A descriptor counts if its access mode is not ``O_RDONLY``; a mapping if it is shared and
    writable (it writes the file without a descriptor). Processes that end or cannot be inspected
    meanwhile are skipped. The fallback of ``hashing.ReadLease`` where the kernel gives no lease.
    """
    mapped = f" {os.major(device):02x}:{os.minor(device):02x} {inode} "
    for pid in linux.process_ids():
        for info in linux.fdinfos_of(pid, device, inode):
            flags = next((line[len(b"flags:"):].strip() or b"0" for line in info.splitlines()
                          if line.startswith(b"flags:")), b"0")
            if int(flags, 8) & O_ACCMODE != os.O_RDONLY:
                return int(pid)
        base = PROC / pid
        try:
            with open(f"{base}/maps", "rb") as maps:
                for line in maps:
                    text = line.decode("ascii", "replace")
                    fields = text.split(maxsplit=2)
                    if len(fields) > 1 and fields[1][1] == "w" and fields[1][3] == "s" and mapped in text:
                        return int(pid)
        except OSError:
            continue
    return None
