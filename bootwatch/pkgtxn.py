"""Whether a package manager's transaction is in progress, from its lock files.

On Debian, dpkg removes a kernel and, seconds later, its postrm hook (``update-grub``) rewrites
``grub.cfg`` without the kernel's entry; rpm and pacman run their hooks inside the transaction
too. A restore decided in between brings back a kernel whose own entry is about to go. So the
daemon decides about removed files only once no transaction is in progress (see
``daemon/service.py``), and this module answers the question, without ever taking a lock or
blocking a package manager.

Package managers say "a transaction is in progress" in three ways, one :class:`LockKind` each:

- **a record lock** (:attr:`LockKind.RECORD`): the manager holds an ``fcntl`` write lock on the
  whole file for as long as it runs. dpkg and apt (``lock_file()`` in dpkg's ``lib/dpkg/lock.c``
  and apt's ``GetLock()``: ``F_SETLK`` of ``F_WRLCK``, start 0, length 0) on
  ``/var/lib/dpkg/lock-frontend`` (the frontend lock: apt holds it for its whole run and passes
  ``DPKG_FRONTEND_LOCKED`` to the dpkg it starts) and ``/var/lib/dpkg/lock`` (the database
  lock); rpm on ``/var/lib/rpm/.rpm.lock`` (``/usr/lib/sysimage/rpm/.rpm.lock`` where the rpmdb
  moved) for the whole transaction, scriptlets included; dnf 5 on ``/run/dnf/rpmtransaction.lock``.
  The file is opened ``O_RDONLY|O_NONBLOCK|O_NOFOLLOW|O_CLOEXEC`` (a FIFO in its place cannot
  hang the open, a symlink is not followed), ``fstat`` must say it is a regular file, and
  ``F_OFD_GETLK`` asks whether a write lock *could* be placed: the kernel answers with the
  conflicting lock, or ``F_UNLCK``, and places nothing (``F_GETLK`` on kernels before 3.15, which
  lack it). Only a conflicting *write* lock counts: a read lock is a reader (rpm takes one on its
  transaction lock to read the rpmdb, ``rpm -qa`` included), not a transaction. The holder's PID
  is in ``l_pid`` for a process-associated lock (what all of the above take); an open file
  description lock reports -1 there, and its holder is then looked up in the ``lock:`` lines of
  ``/proc/PID/fdinfo``.
- **a PID file** (:attr:`LockKind.PID_FILE`): the file exists while the manager runs and holds
  its PID; it is in progress while that process lives (not a zombie). dnf 4 writes
  ``/var/lib/dnf/rpmdb_lock.pid`` (``dnf/lock.py``'s ``ProcessLock``: it takes an ``flock`` only for
  the moment it reads and writes the PID, and unlinks the file when done); libzypp (zypper)
  ``/run/zypp.pid``. A file left by a crashed manager names a dead process: not in progress.
- **a lock file** (:attr:`LockKind.LOCK_FILE`): the file exists only while the manager runs.
  pacman creates ``/var/lib/pacman/db.lck`` with ``O_CREAT|O_EXCL`` and no lock, and removes it
  at the end; it is only ``lstat``'ed. A lock file left behind by a crash looks exactly like a
  running pacman: that is why the daemon's wait has a bound (``[watch] transaction_timeout``).

**A lock file that cannot be judged** (a FIFO, a directory or a symlink in its place, a PID file
that holds no PID, an ``open`` that fails with ``EACCES``) is *not held*, with one warning naming
it (:class:`TransactionMonitor`). Unknown would otherwise have to mean "wait": every restore held
back for the whole bound because of one odd file. Not waiting only brings back the fixed settle
window, and for the existence and record kinds it is even the truth: pacman cannot create its
lock file where something already is, and a package manager locks the file it opens, not a
FIFO. A missing file is simply not held (that package manager is not installed, or not running).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootwatch import linux
from bootwatch.enums import TextEnum

log = logging.getLogger("bootwatch.pkgtxn")

# Linux has F_OFD_GETLK since 3.15; Python names it on Linux builds (36 on every architecture).
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
# struct flock (struct flock64 on 32-bit, where Python is built with a 64-bit off_t): l_type,
# l_whence, l_start, l_len, l_pid. The kernel writes at most 32 bytes; the spare ones are room.
_FLOCK = struct.Struct("hhqqi")
_FLOCK_ROOM = bytes(32 - _FLOCK.size) if _FLOCK.size < 32 else b""
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
# A PID file holds a decimal PID and maybe a newline; anything longer is not one.
MAX_PID_FILE = 64


class LockKind(TextEnum):
    """How a lock file says that a transaction is in progress (see the module docstring)."""

    RECORD = "record"  # an fcntl write lock is held on it
    PID_FILE = "pid-file"  # it names a running process
    LOCK_FILE = "lock-file"  # it exists


# The package managers' own lock files: path, kind, the manager's name for messages.
KNOWN_LOCKS: tuple[tuple[str, LockKind, str], ...] = (
    ("/var/lib/dpkg/lock-frontend", LockKind.RECORD, "apt/dpkg"),
    ("/var/lib/dpkg/lock", LockKind.RECORD, "dpkg"),
    ("/var/lib/rpm/.rpm.lock", LockKind.RECORD, "rpm"),
    ("/usr/lib/sysimage/rpm/.rpm.lock", LockKind.RECORD, "rpm"),
    ("/run/dnf/rpmtransaction.lock", LockKind.RECORD, "dnf5"),
    ("/var/lib/dnf/rpmdb_lock.pid", LockKind.PID_FILE, "dnf"),
    ("/run/zypp.pid", LockKind.PID_FILE, "zypper"),
    ("/var/lib/pacman/db.lck", LockKind.LOCK_FILE, "pacman"),
)
_MANAGERS = {path: manager for path, _, manager in KNOWN_LOCKS}


def default_paths(kind: LockKind) -> tuple[str, ...]:
    """The known lock files of one kind: the defaults of the ``[watch]`` keys."""
    return tuple(path for path, known, _ in KNOWN_LOCKS if known is kind)


@dataclass(frozen=True)
class PackageLock:
    """One lock file to look at, and how to read it."""

    path: Path
    kind: LockKind

    @property
    def manager(self) -> str | None:
        """The package manager that uses this file, if it is a known one."""
        return _MANAGERS.get(str(self.path))


def package_locks(record: Iterable[Path] = (), pid_files: Iterable[Path] = (),
                  lock_files: Iterable[Path] = ()) -> tuple[PackageLock, ...]:
    """The locks of the ``[watch] package_locks``, ``package_pid_files`` and ``package_lock_files`` lists."""
    return (tuple(PackageLock(Path(p), LockKind.RECORD) for p in record)
            + tuple(PackageLock(Path(p), LockKind.PID_FILE) for p in pid_files)
            + tuple(PackageLock(Path(p), LockKind.LOCK_FILE) for p in lock_files))


@dataclass(frozen=True)
class Transaction:
    """A transaction in progress: the lock that shows it and who holds it (None: unknown)."""

    lock: PackageLock
    pid: int | None
    command: str | None  # the holder's name (/proc/PID/comm), if it is known
    identity: tuple[int, int]  # the lock file's (st_dev, st_ino): a new file is a new transaction

    def holder(self) -> str:
        """``dpkg (PID 1234)``; the manager's name, or the lock file's, when there is no PID."""
        name = self.command or self.lock.manager or "a package manager"
        return f"{name} (PID {self.pid})" if self.pid is not None else name

    def describe(self) -> str:
        """The holder and the lock: ``dpkg (PID 1234) holding /var/lib/dpkg/lock``."""
        if self.lock.kind is LockKind.LOCK_FILE:
            return f"{self.holder()} ({self.lock.path} exists)"
        return f"{self.holder()} holding {self.lock.path}"


@dataclass(frozen=True)
class LockProblem:
    """A lock file that cannot be judged; it counts as not held (see the module docstring)."""

    lock: PackageLock
    reason: str

    def describe(self) -> str:
        return f"{self.lock.path}: {self.reason}"


@dataclass(frozen=True)
class Probe:
    """What one lock file says: a transaction, nothing (both None), or a problem."""

    transaction: Transaction | None = None
    problem: LockProblem | None = None


def probe(lock: PackageLock) -> Probe:
    """Look at one lock file; never blocks, never takes a lock, never raises OSError."""
    try:
        if lock.kind is LockKind.LOCK_FILE:
            return _probe_lock_file(lock)
        return _probe_opened(lock)
    except OSError as e:
        return Probe(problem=LockProblem(lock, f"cannot be examined: {_strerror(e)}"))


def _probe_lock_file(lock: PackageLock) -> Probe:
    try:
        st = os.lstat(lock.path)
    except (FileNotFoundError, NotADirectoryError):
        return Probe()
    if not stat.S_ISREG(st.st_mode):
        return Probe(problem=LockProblem(lock, f"is {_what(st.st_mode)}, not a lock file the package manager "
                                               "created (it could not create one there)"))
    return Probe(Transaction(lock, None, None, (st.st_dev, st.st_ino)))


def _probe_opened(lock: PackageLock) -> Probe:
    try:
        fd = os.open(lock.path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return Probe()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return Probe(problem=LockProblem(lock, "is a symbolic link (not followed)"))
        return Probe(problem=LockProblem(lock, f"cannot be opened: {_strerror(e)}"))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Probe(problem=LockProblem(lock, f"is {_what(st.st_mode)}, not a regular file"))
        if lock.kind is LockKind.RECORD:
            pid = _write_lock_holder(fd, st)
            if pid is None:
                return Probe()
            holder = pid if pid > 0 else None
        else:
            found = _pid_file_process(fd, lock)
            if not isinstance(found, int):
                return Probe(problem=found) if found is not None else Probe()
            holder = found
        return Probe(Transaction(lock, holder, _comm(holder), (st.st_dev, st.st_ino)))
    finally:
        os.close(fd)


def _write_lock_holder(fd: int, st: os.stat_result) -> int | None:
    """None: no write lock is held on the file; else the holder's PID, 0 if it is unknown."""
    query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0) + _FLOCK_ROOM
    try:
        answer = fcntl.fcntl(fd, F_OFD_GETLK, query)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)  # a kernel without OFD locks
    l_type, _, _, _, l_pid = _FLOCK.unpack_from(answer)
    if l_type != fcntl.F_WRLCK:
        return None  # F_UNLCK: nothing in the way; F_RDLCK: readers only
    if l_pid > 0:
        return int(l_pid)
    return _ofd_lock_holder(st) or 0


def _ofd_lock_holder(st: os.stat_result) -> int | None:
    """The PID of a process with an open file description write lock on the file of ``st``,
    from the ``lock:`` lines of ``/proc/PID/fdinfo/FD``; None if none is found."""
    needle = f":{st.st_ino} ".encode()
    for pid in linux.process_ids():
        for info in linux.fdinfos_of(pid, st.st_dev, st.st_ino):
            if any(line.startswith(b"lock:") and b" OFDLCK " in line and b" WRITE " in line and needle in line
                   for line in info.splitlines()):
                return int(pid)
    return None


def _pid_file_process(fd: int, lock: PackageLock) -> int | LockProblem | None:
    """The live process a PID file names; None if it names none (empty, or a dead process)."""
    data = os.read(fd, MAX_PID_FILE + 1)
    text = data.decode("ascii", "replace").strip()
    if not text:
        return None
    if len(data) > MAX_PID_FILE or not text.isdecimal() or int(text) <= 0:
        return LockProblem(lock, "holds no PID")
    pid = int(text)
    try:
        info = linux.proc_stat(pid)
    except (OSError, ValueError):
        return None
    return pid if info is not None and not info.exited else None


def _comm(pid: int | None) -> str | None:
    if pid is None:
        return None
    try:
        name = (linux.PROC / str(pid) / "comm").read_text(errors="replace").strip()
    except OSError:
        return None
    return "".join(c for c in name if c.isprintable()) or None


def _what(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _strerror(e: OSError) -> str:
    return f"{os.strerror(e.errno).lower()} ({errno.errorcode.get(e.errno, e.errno)})" if e.errno else str(e)


class TransactionMonitor:
    """Which transaction, if any, the daemon must wait for now.

    :meth:`current` looks at every lock file in order and returns the first that shows a
    transaction. A lock file that cannot be judged is logged once as a warning (again only after
    it was fine in between) and counts as not held. A transaction the caller gave up on
    (:meth:`give_up`, when its wait reached the bound) is not waited for again while it lasts:
    the same lock file, held by the same process. It counts again once it was seen released, so
    a stuck lock costs one bounded wait, not one for every later batch.
    """

    def __init__(self, locks: Sequence[PackageLock]) -> None:
        self.locks = tuple(locks)
        self._warned: dict[Path, str] = {}
        self._given_up: set[tuple[Path, tuple[int, int], int | None]] = set()

    def current(self) -> Transaction | None:
        found: Transaction | None = None
        still_held: set[tuple[Path, tuple[int, int], int | None]] = set()
        for lock in self.locks:
            result = probe(lock)
            self._note_problem(lock, result.problem)
            txn = result.transaction
            if txn is None:
                continue
            key = _key(txn)
            if key in self._given_up:
                still_held.add(key)
                continue
            if found is None:
                found = txn
        self._given_up &= still_held
        return found

    def give_up(self, txn: Transaction) -> None:
        """Do not wait for ``txn`` again until its lock is seen released."""
        self._given_up.add(_key(txn))

    def _note_problem(self, lock: PackageLock, problem: LockProblem | None) -> None:
        if problem is None:
            self._warned.pop(lock.path, None)
            return
        if self._warned.get(lock.path) == problem.reason:
            return
        self._warned[lock.path] = problem.reason
        log.warning("package manager lock %s; it is not taken as a transaction in progress",
                    problem.describe())


def _key(txn: Transaction) -> tuple[Path, tuple[int, int], int | None]:
    return txn.lock.path, txn.identity, txn.pid

