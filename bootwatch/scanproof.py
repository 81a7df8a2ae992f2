"""The scan proof: ``bootwatch scan --quiet`` of an unchanged boot directory without the full program.

A ``scan`` whose lock-free pass (:meth:`bootwatch.cache.reconcile.Reconciler.unchanged_pass`)
concluded "nothing to do", with nothing to report and nothing logged, records in the cache
directory (``.bootwatch-scan-proof``) what every input of that pass looked like: the stat
signature of each file and directory it read or listed (the configuration and its drop-in
directory, the boot directory's walked directories and files, the entries directory and its
entries, the cache directory's files), the names in the cache directory and its ``.tmp/`` (which the
proof's own write changes, so they are compared by listing), the mount each root lies on, and
the command-line settings and environment it applies to. The next ``scan --quiet`` with the
same settings (:func:`fast_scan`, run by the console entry point before anything else is
imported) compares every one of these with a live observation; only if all are identical does
it exit 0, exactly as the full scan would, having printed, logged and written nothing. Any
difference, any error, any other command line: the full program runs, and decides as before.

The rules that decide "unchanged" stay in the full pass: a proof only says "the inputs of a pass
that concluded so are byte for byte where they were", by the same signature as the index's
(device, inode, size, mtime, ctime), plus mode and owner, which the safety checks read.

A change is seen only if it moves a timestamp, so a proof is recorded only when every input's
mtime and ctime, in the very observation that is recorded (:func:`encode`), are at least
:data:`RACY_MARGIN_NS` older than the moment the scan began to read (:func:`stable`): a file
written in the same clock tick (or, on FAT, the same two seconds) as its recorded timestamp would
otherwise keep that timestamp, and a write between a separate check and the recording would be
recorded as proved.

This module imports only what the interpreter has loaded anyway (os, sys, stat) and zlib: the
fast path must cost a fraction of the full program's imports.

The file is untrusted: opened without following a symlink or blocking, read only if a regular
file of bounded size that only this user can have written, in a directory only it can write,
and used only if every line has the expected form and the trailer's
count and CRC-32 match (a torn write is no proof). Written (never fsynced: a torn one is no
proof) by ``scan`` under the writers' lock (given up at once when another process holds it, since
that one may be changing the inputs); never deleted: a stale proof matches nothing. boom lists
only ``*.img``, so it never sees it.
"""

from __future__ import annotations

import os
import stat
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence

from bootwatch import __version__
from bootwatch.defaults import CONFIG_ENV, DEFAULT_CACHE_DIR, RUNTIME_ENV

PROOF_NAME = ".bootwatch-scan-proof"
FORMAT = "bootwatch-scan-proof/1"
MAX_PROOF_SIZE = 4 << 20
# The environment the configuration is read with (see bootwatch.config).
ENVIRONMENT = (CONFIG_ENV, RUNTIME_ENV)
# Coarser than any timestamp granularity a boot or cache filesystem has (FAT: 2 s; ext4, XFS,
# tmpfs, btrfs: a clock tick of at most 10 ms).
RACY_MARGIN_NS = 3_000_000_000

# What a record observes of its path.
STAT = "s"  # lstat (and, for a symlink, stat through it); "-" for absent
IDENTITY = "i"  # as STAT without size and times: a directory above a root, whose listing is not read
LISTING = "l"  # identity, mode, owner and the sorted names (a directory bootwatch writes into)
MOUNT = "m"  # the mount the path lies on (mountinfo id and mount point)
TAGS = (STAT, IDENTITY, LISTING, MOUNT)

_SETTINGS = ("scan", "--config", "--boot-dir", "--cache-dir")


def mountinfo() -> bytes:
    """``/proc/self/mountinfo`` as it is now. OSError if it cannot be read."""
    with open("/proc/self/mountinfo", "rb") as f:
        return f.read()


class Start:
    """What a scan observed when it began to read its inputs (``ns``, time.time_ns()): a proof is
    recorded only if the mounts are still byte for byte these (a mount or unmount moves no
    timestamp) and the main configuration still resolves to the same file."""

    __slots__ = ("ns", "mountinfo", "main_config_real")

    def __init__(self, ns: int, main_config: str) -> None:
        self.ns = ns
        try:
            self.mountinfo: bytes | None = mountinfo()
        except OSError:
            self.mountinfo = None
        self.main_config_real = os.path.realpath(main_config)


def quiet_scan_settings(argv: Sequence[str]) -> dict[str, str] | None:
    """The settings of ``argv`` if it is exactly ``scan --quiet`` with the common options
    ``--config``, ``--boot-dir``, ``--cache-dir`` (each at most once, its value a separate word,
    before or after ``scan``), as ``bootwatch.cli.parser`` reads it; else None (the full parser
    decides). The keys are the option names without dashes."""
    settings: dict[str, str] = {}
    seen_scan = quiet = False
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "scan" and not seen_scan:
            seen_scan = True
        elif word == "--quiet" and seen_scan and not quiet:
            quiet = True
        elif word in _SETTINGS[1:] and word[2:] not in settings and i + 1 < len(argv):
            value = argv[i + 1]
            if not value or value.startswith("-"):
                return None
            settings[word[2:]] = value
            i += 1
        else:
            return None
        i += 1
    return settings if seen_scan and quiet else None


def proof_key(config: str | None, boot: str | None, cache: str | None, environ: Mapping[str, str]) -> str:
    """What a proof applies to: the command line's settings (absolute), the environment the
    configuration is read with, the user and bootwatch's version."""
    parts = [os.path.abspath(p) if p is not None else "" for p in (config, boot, cache)]
    # The configuration file named by the environment, as load_config opens it (relative to the
    # working directory); unset and empty both mean "none" there, but are kept apart here.
    named = environ.get(CONFIG_ENV)
    parts.append(os.path.abspath(named) if named else "\0" if named is None else "")
    parts += [environ.get(name, "\0") for name in ENVIRONMENT if name != CONFIG_ENV]
    # Another user would be refused, or see other files; another bootwatch may judge otherwise.
    parts += [str(os.geteuid()), __version__]
    return "\n".join(parts).encode("utf-8", "surrogateescape").hex()


def _signature(st: os.stat_result) -> str:
    return (f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} "
            f"{st.st_mode} {st.st_uid} {st.st_gid}")


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev} {st.st_ino} {st.st_mode} {st.st_uid} {st.st_gid}"


def _observe_stat(path: str, signature: Callable[[os.stat_result], str] = _signature,
                  seen: list[os.stat_result] | None = None) -> str:
    """The record's value; the stat results it was made of are appended to ``seen``."""
    seen = [] if seen is None else seen
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "-"
    seen.append(st)
    if not stat.S_ISLNK(st.st_mode):
        return signature(st)
    try:
        target = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return f"{signature(st)} > -"
    seen.append(target)
    return f"{signature(st)} > {signature(target)}"


def _observe_listing(path: str) -> str:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "-"
    if not stat.S_ISDIR(st.st_mode):
        return _signature(st)
    names = sorted(name for name in os.listdir(path) if name != PROOF_NAME)
    return (f"{st.st_dev} {st.st_ino} {st.st_mode} {st.st_uid} {st.st_gid} "
            + ",".join(os.fsencode(name).hex() for name in names))


class Observer:
    """Live observations of paths, with ``/proc/self/mountinfo`` read at most once."""

    def __init__(self) -> None:
        self._mounts: list[tuple[str, str]] | None = None

    def mounts(self) -> list[tuple[str, str]]:
        """(mount id, mount point as mountinfo escapes it) of every mount, in mountinfo's order."""
        if self._mounts is None:
            lines = mountinfo().decode("utf-8", "surrogateescape").splitlines()
            self._mounts = [(fields[0], fields[4]) for fields in (line.split(" ") for line in lines)
                            if len(fields) > 4]
        return self._mounts

    def _observe_mount(self, path: str) -> str:
        # The last mount over the longest mount point above path is the one path lies on.
        escaped = path.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")
        best: tuple[str, str] | None = None
        for mount_id, point in self.mounts():
            prefix = point.rstrip("/") + "/"
            if (escaped == point or escaped.startswith(prefix)) and (best is None or len(point) >= len(best[1])):
                best = (mount_id, point)
        return "-" if best is None else f"{best[0]} {best[1].encode('utf-8', 'surrogateescape').hex()}"

    def observe(self, tag: str, path: str, seen: list[os.stat_result] | None = None) -> str:
        """What the record ``tag`` sees of ``path`` now (a line's value); for a STAT record, the
        stat results that value was made of are appended to ``seen``. OSError if it cannot be seen."""
        if tag == STAT:
            return _observe_stat(path, seen=seen)
        if tag == IDENTITY:
            return _observe_stat(path, _identity)
        if tag == LISTING:
            return _observe_listing(path)
        return self._observe_mount(path)


def _line(tag: str, path: str, value: str) -> str:
    return f"{tag} {os.fsencode(path).hex()} {value}\n"


def encode(key: str, records: Iterable[tuple[str, str]], started_ns: int,
           observer: Observer | None = None) -> bytes | None:
    """The proof of the inputs ``records`` ((tag, path), each observed now, once) for ``key``, or
    None if one of them is not :func:`stable` in that very observation (so a write at any time
    after the scan began is either seen in a timestamp or lands after the proof's observation,
    which then differs from the next). OSError if one cannot be observed."""
    observer = observer or Observer()
    lines = []
    for tag, path in dict.fromkeys(records):
        seen: list[os.stat_result] = []
        value = observer.observe(tag, path, seen)
        if not stable(seen, started_ns):
            return None
        lines.append(_line(tag, path, value))
    data = f"{FORMAT}\nkey {key}\n{''.join(lines)}".encode()
    return data + f"end {len(lines)} {zlib.crc32(data)}\n".encode()


def stable(observed: Iterable[os.stat_result], started_ns: int) -> bool:
    """Whether the mtime and ctime of every stat result in ``observed`` are :data:`RACY_MARGIN_NS`
    older than ``started_ns`` (when the scan began to read): a later write then moves one of them."""
    limit = started_ns - RACY_MARGIN_NS
    return all(st.st_mtime_ns <= limit and st.st_ctime_ns <= limit for st in observed)


def _private(st: os.stat_result) -> bool:
    """Whether only this user can have written what ``st`` describes (owned by it, not writable
    by group or others): a proof anyone else could plant is no proof."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _read_proof(cache_dir: str) -> bytes | None:
    """The proof's bytes, or None: no such regular file of bounded size, or not private, in a
    directory that is not."""
    try:
        dir_fd = os.open(cache_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _private(os.fstat(dir_fd)):
            return None
        fd = os.open(PROOF_NAME, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PROOF_SIZE or not _private(st):
            return None
        chunks = []
        left = MAX_PROOF_SIZE + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        return data if len(data) <= MAX_PROOF_SIZE else None
    finally:
        os.close(fd)


def holds(data: bytes, key: str, observer: Observer | None = None) -> bool:
    """Whether ``data`` is a complete proof for ``key`` whose every record matches a live observation."""
    body, separator, trailer = data.rstrip(b"\n").rpartition(b"\n")
    if not separator:
        return False
    body += b"\n"
    try:
        text = body.decode("ascii")
        end, count, crc = trailer.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return False
    lines = text.splitlines()
    if (end != "end" or len(lines) < 2 or lines[0] != FORMAT or lines[1] != f"key {key}"
            or count != str(len(lines) - 2) or crc != str(zlib.crc32(body)) or not data.endswith(b"\n")):
        return False
    observer = observer or Observer()
    for line in lines[2:]:
        tag, _, rest = line.partition(" ")
        hexpath, _, value = rest.partition(" ")
        if tag not in TAGS:
            return False
        try:
            path = os.fsdecode(bytes.fromhex(hexpath))
            if not path.startswith("/") or observer.observe(tag, path) != value:
                return False
        except (ValueError, OSError):
            return False
    return True


def fast_scan(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """True if ``argv`` is a ``scan --quiet`` whose proof holds: it is done (exit 0, nothing
    printed). False: the full program must run. Reads only; never raises for what it reads."""
    settings = quiet_scan_settings(argv)
    if settings is None:
        return False
    try:
        key = proof_key(settings.get("config"), settings.get("boot-dir"), settings.get("cache-dir"), environ)
        data = _read_proof(os.path.abspath(settings.get("cache-dir", DEFAULT_CACHE_DIR)))
        return data is not None and holds(data, key)
    except (OSError, ValueError, UnicodeError):
        return False


def main() -> bool:
    """:func:`fast_scan` of this process's command line."""
    return fast_scan(sys.argv[1:], os.environ)
