"""Chaos: the real daemon while a driver kills writers and the daemon, unmounts /boot, fills the
cache, reinstalls kernels over restored ones and removes entries.

The world
    /boot is a real ext4 file system on a loop device, mounted at the test's boot directory: an
    unmount takes every kernel and every BLS entry away, a mount brings the same files back. The
    cache lives on its own small tmpfs (mode 0700), which the driver fills with a ballast file and
    frees again. The daemon is ``bootwatch run`` as a child (tests/daemonproc.py) with a 150 ms
    settle window, a 3 s rescan and a 4 s clean job, so that its own clean runs while /boot is
    away. Package managers are child processes: one writes each file as ``NAME.dpkg-new`` and
    renames it into place (dpkg), one writes the final name in place with pauses (``install`` onto
    slow media). The driver SIGKILLs them at random moments, SIGKILLs or SIGTERMs the daemon and
    starts it again, runs ``bootwatch clean`` as cron would, creates snapshot entries (as boom
    does), removes kernel packages and entries, and reinstalls a kernel by rename over the copy
    the daemon restored. What it does, in which order and when it kills, comes from one seed
    (``BOOTWATCH_CHAOS_SEED``, random unless given; ``BOOTWATCH_CHAOS_ROUNDS`` rounds). Every kind
    of action happens at least once per run. Timing is the machine's, so a seed replays the same
    actions, not the same interleaving.

Invariants, checked after every round (the names appear in the failure messages)
    lost-image       For a boot path P that BLS entries reference now and have referenced without a
                     break since time T, let N be the newest image id of P in the last index the
                     driver read after T (+1 s, so that a clean that read the entries before T has
                     committed) that listed P. If P's boot file is absent, ``N.img`` is in the cache
                     and hashes to N. (While the boot file exists its content is there to cache.)
    foreign-deleted  Every file under /boot that the driver wrote (kernels, initramfs, entries) and
                     has not itself removed or replaced still exists as the same inode with the
                     content the driver wrote. bootwatch deletes only a copy it restored itself and
                     nobody replaced since.
    partial-image    Every image id that any index listed for P is a complete content of P: one a
                     writer finished, or what a killed writer left behind. Never the bytes of a file
                     still open for writing.
    daemon-up        The daemon never exits on its own; after SIGKILL it starts again and sends
                     READY=1; on SIGTERM it exits 0 within 15 s (the unit's TimeoutStopSec).
    converged        With /boot mounted, the cache not full and no writer running, the daemon
                     catches up within CONVERGE_TIMEOUT: every referenced boot file is cached with
                     its current content, and every referenced path whose boot file is gone while
                     the cache holds N is restored.
    fsck             ``bootwatch fsck --json`` exits 0 with no problems (warnings are allowed:
                     orphans are left by design by a killed writer).
    no-traceback     No traceback in the output of any daemon incarnation nor of any CLI run.

The test stops at the end of the first round with a violation and names every violation of that
round (``BOOTWATCH_CHAOS_KEEP_GOING=1`` runs all rounds and lists all of them).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemonproc import DaemonProcess, run_with_config, write_config

from bootwatch.cache.index import CacheIndex
from bootwatch.errors import BootwatchError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/loop-control").exists()
                       or shutil.which("mkfs.ext4") is None,
                       reason="needs root, loop devices and mkfs.ext4 for a real /boot file system"),
]

ROUNDS = int(os.environ.get("BOOTWATCH_CHAOS_ROUNDS", "40"))
KEEP_GOING = os.environ.get("BOOTWATCH_CHAOS_KEEP_GOING") == "1"
CONVERGE_TIMEOUT = 25.0
READY_TIMEOUT = 40.0
STOP_TIMEOUT = 15.0  # TimeoutStopSec= of contrib/systemd/bootwatch.service
# An index read this long after an entry appeared reflects it: a clean that read the entries
# before has committed by then (it holds the lock for milliseconds on this cache).
REFERENCE_MARGIN = 1.0

# A package manager's writer. "rename": NAME.dpkg-new, fsync, rename (dpkg). "inplace": the final
# name, written in four pieces with a pause after each (install(1) or cp onto slow media).
# Contents are random.Random(seed).randbytes(size), so the driver knows them without a pipe.
WRITER = r'''
import os, random, sys, time
mode, pause = sys.argv[1], float(sys.argv[2])
def say(line):  # one write(2) of less than PIPE_BUF: a kill never leaves half a line
    os.write(1, (line + "\n").encode())
say("READY")
for job in sys.argv[3:]:
    target, size, seed = job.rsplit(":", 2)
    data = random.Random(int(seed)).randbytes(int(size))
    path = target + ".dpkg-new" if mode == "rename" else target
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    say(f"OPEN {target} {os.fstat(fd).st_ino}")
    step = max(1, len(data) // 4)
    for offset in range(0, len(data), step):
        os.write(fd, data[offset:offset + step])
        time.sleep(pause)
    if mode == "rename":
        os.fsync(fd)
    os.close(fd)
    if mode == "rename":
        os.rename(path, target)
    say(f"DONE {target}")
'''


def content_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def sha1_file(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        h = hashlib.sha1()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        return h.hexdigest()


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


@dataclass
class Violation:
    invariant: str
    round: int
    path: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.invariant}] round {self.round}, {self.path}: {self.detail}"


@dataclass
class Seen:
    """What the index poller saw of one path: every id ever listed, and the last newest id."""

    ids: set[str] = field(default_factory=set)
    newest: str | None = None
    newest_at: float = 0.0  # time.monotonic() before the read that listed it
    newest_round: int = 0


class Chaos:
    """The world (a loop-mounted /boot, a tmpfs cache, the daemon) and the driver's model of it."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.seed = seed
        self.rnd = random.Random(seed)
        self.boot = root / "boot"
        self.entries_dir = self.boot / "loader" / "entries"
        self.cachefs = root / "cachefs"
        self.cache = self.cachefs / "cache"
        self.ballast = self.cachefs / "ballast"
        self.config = write_config(root / "bootwatch.toml", self.boot, self.cache, root / "run",
                                   watch={"settle": "150ms", "rescan_interval": "3s"},
                                   jobs={"clean_interval": "4s"})
        self.writer_script = root / "writer.py"
        self.writer_script.write_text(WRITER)
        self.loop_device: str | None = None
        self.mounted = False
        self.cache_mounted = False
        self.daemon: DaemonProcess | None = None
        self.incarnation = 0
        self.logs: list[Path] = []
        self.reported_logs: set[Path] = set()
        self.round = 0
        self.actions: list[str] = []
        self.violations: list[Violation] = []
        self.reported: set[tuple[str, str]] = set()
        self.next_version = 1
        self.versions: dict[int, dict[str, tuple[int, int]]] = {}  # version -> {name: (size, seed)}
        self.installed: set[int] = set()
        self.snapshots = 0
        # The driver's model of /boot.
        self.entries: dict[str, tuple[str, ...]] = {}  # entry file name -> boom-style paths
        self.referenced_since: dict[str, float] = {}
        self.owned: dict[str, tuple[int, str]] = {}  # name relative to /boot -> (inode, sha1)
        self.complete: dict[str, set[str]] = {}  # boom-style path -> complete contents it ever had
        # What the index poller saw.
        self.seen: dict[str, Seen] = {}
        self.seen_lock = threading.Lock()
        self.polling = threading.Event()
        self.poller: threading.Thread | None = None
        self.hash_memo: dict[tuple, str] = {}

    # ================================================================ the world

    def setup(self) -> None:
        image = self.root / "boot.ext4"
        with open(image, "wb") as f:
            f.truncate(96 << 20)
        sh("mkfs.ext4", "-q", "-F", str(image))
        self.loop_device = sh("losetup", "--find", "--show", str(image)).stdout.strip()
        self.boot.mkdir()
        self.mount_boot()
        self.entries_dir.mkdir(parents=True)
        self.cachefs.mkdir(mode=0o700)
        sh("mount", "-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs", str(self.cachefs))
        self.cache_mounted = True

    def teardown(self) -> None:
        self.polling.clear()
        if self.poller is not None:
            self.poller.join(5)
        if self.daemon is not None:
            self.daemon.close()
        if self.mounted and sh("umount", str(self.boot), check=False).returncode != 0:
            sh("umount", "-l", str(self.boot), check=False)
        if self.loop_device:
            sh("losetup", "-d", self.loop_device, check=False)
        if self.cache_mounted and sh("umount", str(self.cachefs), check=False).returncode != 0:
            sh("umount", "-l", str(self.cachefs), check=False)

    def mount_boot(self) -> None:
        assert self.loop_device
        # The same loop device every time: after a lazy unmount the kernel reuses the superblock
        # still alive instead of mounting the image twice.
        sh("mount", "-t", "ext4", self.loop_device, str(self.boot))
        self.mounted = True

    def umount_boot(self) -> str:
        how = "umount -l" if self.rnd.random() < 0.3 else "umount"
        if how == "umount":
            for _ in range(5):
                if sh("umount", str(self.boot), check=False).returncode == 0:
                    break
                time.sleep(0.1)  # EBUSY: the daemon has a file open there
            else:
                how = "umount -l after EBUSY"
                sh("umount", "-l", str(self.boot))
        else:
            sh("umount", "-l", str(self.boot))
        self.mounted = False
        return how

    # ================================================================ the daemon

    def start_daemon(self) -> bool:
        self.incarnation += 1
        workdir = self.root / f"daemon-{self.incarnation}"
        workdir.mkdir()
        # faulthandler: a daemon that stops catching up is made to dump its threads (see dump_threads).
        self.daemon = DaemonProcess(self.config, workdir, env={"PYTHONFAULTHANDLER": "1"})
        self.logs.append(self.daemon.log_path)
        try:
            self.daemon.wait_ready(timeout=READY_TIMEOUT)
            self.drain_notifications(self.daemon)
        except AssertionError as e:
            self.violate("daemon-up", f"(incarnation {self.incarnation})",
                         f"no READY=1 within {READY_TIMEOUT:.0f} s of starting: {str(e)[-1500:]}")
            self.daemon.close()
            self.daemon = None
            return False
        return True

    @staticmethod
    def drain_notifications(daemon: DaemonProcess) -> None:
        """Read the sd_notify socket as systemd does: a full socket blocks the daemon's sendto()."""
        def drain() -> None:
            with contextlib.suppress(OSError, ValueError):
                while daemon.proc.poll() is None:
                    daemon.receive(0.2)
                    del daemon.messages[:-100]

        threading.Thread(target=drain, name="notify-drain", daemon=True).start()

    def daemon_running(self) -> bool:
        return self.daemon is not None and self.daemon.proc.poll() is None

    def check_daemon_alive(self) -> None:
        if self.daemon is not None and self.daemon.proc.poll() is not None:
            self.violate("daemon-up", f"(incarnation {self.incarnation})",
                         f"exited on its own with code {self.daemon.proc.returncode}; "
                         f"log tail:\n{self.daemon.output()[-1500:]}")
            self.daemon.close()
            self.daemon = None

    def stop_daemon(self, signum: int) -> None:
        assert self.daemon is not None
        self.check_daemon_alive()
        if self.daemon is None:
            return
        daemon, self.daemon = self.daemon, None
        daemon.signal(signum)
        try:
            code = daemon.proc.wait(STOP_TIMEOUT if signum == signal.SIGTERM else 30)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()
            self.violate("daemon-up", f"(incarnation {self.incarnation})",
                         f"still running {STOP_TIMEOUT:.0f} s after SIGTERM (systemd would SIGKILL it)")
            code = None
        if signum == signal.SIGTERM and code is not None and code != 0:
            self.violate("daemon-up", f"(incarnation {self.incarnation})",
                         f"exit code {code} after SIGTERM; log tail:\n{daemon.output()[-1500:]}")
        daemon.close()

    # ================================================================ observing the index

    def observe_index(self) -> None:
        started = time.monotonic()
        try:
            fd = os.open(self.cache / "cacheindex.json", os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            with os.fdopen(fd, "rb") as f:
                data = f.read()
            index = CacheIndex.from_json(data, source="cacheindex.json")
        except (OSError, BootwatchError):
            return  # unreadable or corrupt: fsck reports that
        with self.seen_lock:
            for path in index.paths():
                seen = self.seen.setdefault(path, Seen())
                seen.ids.update(index.image_ids(path))
                seen.newest, seen.newest_at, seen.newest_round = index.newest(path), started, self.round

    def read_index(self) -> CacheIndex | None:
        try:
            return CacheIndex.from_json((self.cache / "cacheindex.json").read_bytes(), source="cacheindex.json")
        except (OSError, BootwatchError):
            return None

    def start_polling(self) -> None:
        self.polling.set()

        def poll() -> None:
            while self.polling.is_set():
                if self.cache_mounted:
                    self.observe_index()
                time.sleep(0.05)

        self.poller = threading.Thread(target=poll, name="index-poller", daemon=True)
        self.poller.start()

    # ================================================================ the driver's model

    def violate(self, invariant: str, path: str, detail: str) -> None:
        """Record a violation; one that persists (the same invariant and path) is reported once."""
        if invariant in ("lost-image", "converged", "foreign-deleted") and (invariant, path) in self.reported:
            return
        self.reported.add((invariant, path))
        self.violations.append(Violation(invariant, self.round, path, detail))

    def note(self, text: str) -> None:
        self.actions.append(f"r{self.round}: {text}")
        with open(self.root / "actions.log", "a") as f:  # kept with the daemon logs for a post-mortem
            f.write(f"{time.strftime('%H:%M:%S')} {self.actions[-1]}\n")

    def references(self) -> dict[str, list[str]]:
        refs: dict[str, list[str]] = {}
        for name, paths in self.entries.items():
            for path in paths:
                refs.setdefault(path, []).append(name)
        return refs

    def write_entry(self, name: str, paths: tuple[str, ...]) -> None:
        before = self.references()
        lines = [f"title {name}"]
        for path in paths:
            lines.append(f"{'linux' if '/vmlinuz-' in path else 'initrd'} {path}")
        temp = self.entries_dir / f".{name}.tmp"
        temp.write_text("\n".join(lines) + "\n")
        os.rename(temp, self.entries_dir / name)
        self.entries[name] = paths
        self.own(f"loader/entries/{name}")
        since = time.monotonic() + REFERENCE_MARGIN
        for path in paths:
            if path not in before:
                self.referenced_since[path] = since

    def remove_entry_file(self, name: str) -> None:
        os.unlink(self.entries_dir / name)
        self.owned.pop(f"loader/entries/{name}", None)
        del self.entries[name]
        refs = self.references()
        for path in list(self.referenced_since):
            if path not in refs:
                del self.referenced_since[path]

    def own(self, name: str) -> None:
        """The driver wrote ``/boot/name``: remember its inode and content."""
        try:
            st = os.lstat(self.boot / name)
        except FileNotFoundError:
            self.violate("foreign-deleted", "/" + name, "deleted by someone else right after the driver wrote it")
            return
        digest = sha1_file(self.boot / name)
        assert digest is not None
        self.owned[name] = (st.st_ino, digest)
        self.complete.setdefault("/" + name, set()).add(digest)

    def disown_by_removal(self, name: str) -> bool:
        """The package manager removes ``/boot/name``, whoever wrote it; False if it was not there."""
        self.owned.pop(name, None)
        try:
            os.unlink(self.boot / name)
            return True
        except FileNotFoundError:
            return False

    def new_version(self) -> int:
        version = self.next_version
        self.next_version += 1
        self.versions[version] = {
            f"vmlinuz-{version}": (self.rnd.randrange(64 << 10, 400 << 10), self.rnd.randrange(1 << 30)),
            f"initramfs-{version}.img": (self.rnd.randrange(64 << 10, 600 << 10), self.rnd.randrange(1 << 30)),
        }
        return version

    @staticmethod
    def paths_of(version: int) -> tuple[str, ...]:
        return (f"/vmlinuz-{version}", f"/initramfs-{version}.img")

    # ================================================================ writers

    def run_writer(self, mode: str, names: list[str], pause: float, kill_probability: float,
                   contents: dict[str, tuple[int, int]]) -> bool:
        """Run a writer child over ``names`` (relative to /boot, ``contents[name]`` is (size, seed));
        maybe SIGKILL it at a random moment. True if it finished."""
        jobs = [f"{self.boot / name}:{contents[name][0]}:{contents[name][1]}" for name in names]
        proc = subprocess.Popen([sys.executable, str(self.writer_script), mode, str(pause), *jobs],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        assert ready == b"READY\n", (ready, proc.stderr.read() if proc.stderr else b"")
        killed = False
        if self.rnd.random() < kill_probability:
            duration = len(names) * 4 * pause + 0.05 * len(names)
            time.sleep(self.rnd.uniform(0, duration * 1.1))
            proc.send_signal(signal.SIGKILL)
            killed = True
        out, err = proc.communicate(timeout=60)
        killed = killed and proc.returncode == -signal.SIGKILL
        assert killed or proc.returncode == 0, f"the writer failed: {err.decode()}"
        opened: dict[str, int] = {}
        done: set[str] = set()
        for line in out.decode().splitlines():
            fields = line.split(" ")
            if fields[0] == "OPEN" and len(fields) == 3:
                opened[os.path.relpath(fields[1], self.boot)] = int(fields[2])
            elif fields[0] == "DONE" and len(fields) == 2:
                done.add(os.path.relpath(fields[1], self.boot))
        for name in names:
            final = self.boot / name
            if name in done:
                self.own(name)
            elif mode == "rename":
                with contextlib.suppress(FileNotFoundError):
                    if name in opened and os.lstat(final).st_ino == opened[name]:
                        self.own(name)  # killed after the rename
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.boot / f"{name}.dpkg-new")  # dpkg's next run removes it
            elif os.path.lexists(final):
                self.own(name)  # in place: what the killed writer left is the file's content now
        self.note(f"{mode} writer over {', '.join(names)}: "
                  f"{'killed after ' + str(len(done)) + ' done' if killed else 'finished'}")
        return not killed

    # ================================================================ actions

    def act_install(self) -> None:
        """A kernel package: vmlinuz and initramfs by rename, then its entry (kernel-install)."""
        if not self.mounted:
            return
        version = self.new_version()
        names = list(self.versions[version])
        finished = self.run_writer("rename", names, 0.02, 0.35, self.versions[version])
        present = all((self.boot / name).exists() for name in names)
        if finished or (present and self.rnd.random() < 0.5) or self.rnd.random() < 0.2:
            self.write_entry(f"kernel-{version}.conf", self.paths_of(version))
            self.note(f"entry kernel-{version}.conf")
        self.installed.add(version)

    def act_install_in_place(self) -> None:
        """An entry first, then its kernel written in place with pauses (issue item 5)."""
        if not self.mounted:
            return
        version = self.new_version()
        name = f"vmlinuz-{version}"
        self.write_entry(f"kernel-{version}.conf", (f"/{name}",))
        self.versions[version][name] = (self.rnd.randrange(512 << 10, 1 << 20), self.rnd.randrange(1 << 30))
        del self.versions[version][f"initramfs-{version}.img"]
        self.run_writer("inplace", [name], 0.15, 0.35, self.versions[version])
        self.installed.add(version)

    def act_snapshot(self) -> None:
        """A snapshot entry (boom) naming an installed kernel's files."""
        if not self.mounted:
            return
        candidates = sorted(v for v in self.installed
                            if all((self.boot / n).exists() for n in self.versions[v]))
        if not candidates:
            return
        version = self.rnd.choice(candidates)
        self.snapshots += 1
        name = f"snapshot-{self.snapshots}.conf"
        self.write_entry(name, tuple("/" + n for n in self.versions[version]))
        self.note(f"snapshot entry {name} for version {version}")

    def act_remove_package(self) -> None:
        """dpkg --purge: the kernel's files and its own entry, in either order, a moment apart."""
        if not self.mounted or not self.installed:
            return
        refs = self.references()
        snapshotted = sorted(v for v in self.installed
                             if any(any(e.startswith("snapshot-") for e in refs.get("/" + n, []))
                                    for n in self.versions[v]))
        pool = snapshotted if snapshotted and self.rnd.random() < 0.75 else sorted(self.installed)
        version = self.rnd.choice(pool)
        entry = f"kernel-{version}.conf"
        entry_first = self.rnd.random() < 0.3
        if entry_first and entry in self.entries:
            self.remove_entry_file(entry)
            time.sleep(self.rnd.uniform(0, 0.3))
        for name in self.versions[version]:
            self.disown_by_removal(name)
        if not entry_first and entry in self.entries:
            time.sleep(self.rnd.uniform(0, 0.3))
            self.remove_entry_file(entry)
        self.installed.discard(version)
        self.note(f"removed package {version} ({'entry first' if entry_first else 'files first'})")

    def restored_copies(self) -> list[tuple[int, str]]:
        """(version, name) of boot files the daemon restored: a marker, and not the driver's file."""
        found = []
        for version, files in self.versions.items():
            for name, (size, seed) in files.items():
                if name in self.owned or not (self.boot / f".{name}.boomrestored").exists():
                    continue
                if sha1_file(self.boot / name) == sha1(content_of(size, seed)):
                    found.append((version, name))
        return sorted(found)

    def act_reinstall_over_restored(self) -> None:
        """dpkg --reinstall of a kernel the daemon restored: same content, by rename (issue item 3)."""
        if not self.mounted:
            return
        candidates = self.restored_copies()
        if not candidates and self.daemon_running():
            # Make one: a snapshot of a kernel whose package then goes away.
            self.act_snapshot()
            before = set(self.installed)
            self.act_remove_package()
            refs = self.references()
            removed = {v for v in before - self.installed if any("/" + n in refs for n in self.versions[v])}
            deadline = time.monotonic() + 10
            while not candidates and removed and time.monotonic() < deadline:
                time.sleep(0.2)
                candidates = [c for c in self.restored_copies() if c[0] in removed]
        if not candidates:
            return
        version, name = self.rnd.choice(candidates)
        if not self.run_writer("rename", [name], 0.01, 0.15, self.versions[version]):
            return
        self.note(f"reinstalled {name} over the restored copy")
        if self.rnd.random() < 0.7:
            # Later, the snapshot goes: after the daemon has seen (and hashed) the reinstalled file.
            time.sleep(self.rnd.uniform(0.5, 2.0))
            for entry in [e for e in self.references().get("/" + name, []) if e.startswith("snapshot-")]:
                self.act_remove_entry(entry)

    def act_remove_entry(self, name: str | None = None) -> None:
        if not self.mounted or not self.entries:
            return
        name = name or self.rnd.choice(sorted(self.entries))
        self.remove_entry_file(name)
        self.note(f"removed entry {name}")

    def act_clean(self) -> None:
        """``bootwatch clean`` as a cron job or an administrator runs it."""
        result = self.cli("clean", "--json")
        if result is not None:
            self.note(f"bootwatch clean: exit {result.returncode}")
            self.check_cli("bootwatch clean", result)

    def cli(self, *args: str) -> subprocess.CompletedProcess | None:
        try:
            return run_with_config(self.config, *args, timeout=120)
        except subprocess.TimeoutExpired:
            self.violate("no-traceback", f"bootwatch {' '.join(args)}", "hung for 120 s")
            return None

    def check_cli(self, what: str, result: subprocess.CompletedProcess) -> None:
        if "Traceback" in result.stderr:
            self.violate("no-traceback", what, result.stderr[-1500:])
        elif result.returncode not in (0, 1) or result.returncode == 1 and \
                len([line for line in result.stderr.splitlines() if "hint:" not in line]) != 1:
            self.violate("no-traceback", what, f"exit {result.returncode}, not one error line: {result.stderr!r}")

    def act_kill_daemon(self, depth: int = 0) -> None:
        if not self.daemon_running():
            return
        time.sleep(self.rnd.uniform(0, 0.4))  # often in the middle of the batch of the last action
        signum = self.rnd.choice([signal.SIGKILL, signal.SIGTERM])
        self.stop_daemon(signum)
        self.note(f"daemon {signal.Signals(signum).name}")
        # While it is down, the world moves on.
        for _ in range(self.rnd.randint(0, 2)):
            self.rnd.choice([self.act_remove_package, self.act_install, self.act_remove_entry, self.act_clean,
                             self.act_snapshot, lambda: self.act_umount(depth + 1)])()
        if not self.start_daemon():
            return
        self.note("daemon started")

    def act_umount(self, depth: int = 0) -> None:
        if not self.mounted:
            return
        how = self.umount_boot()
        self.note(f"/boot unmounted ({how})")
        if self.rnd.random() < 0.8:
            self.act_clean()
        if self.daemon_running():
            time.sleep(self.rnd.uniform(0.5, 4.5))  # the daemon's rescan (3 s) and clean job (4 s)
        if depth == 0 and self.rnd.random() < 0.25:
            self.act_kill_daemon(depth + 1)
        self.mount_boot()
        self.note("/boot mounted")
        if self.rnd.random() < 0.5:
            self.act_remove_package()  # apt runs right after the mount

    def act_fill_cache(self, depth: int = 0) -> None:
        if not self.cache_mounted or self.ballast.exists():
            return
        written = 0
        with open(self.ballast, "wb", buffering=0) as f:
            for size in (4 << 20, 64 << 10, 4096):
                while True:
                    try:
                        written += f.write(b"\0" * size)
                    except OSError as e:
                        if e.errno != errno.ENOSPC:
                            raise
                        break
        self.note(f"cache file system filled ({written >> 20} MiB ballast)")
        for _ in range(self.rnd.randint(1, 2)):
            self.rnd.choice([self.act_install, self.act_remove_package, self.act_clean, self.act_snapshot,
                             self.act_install_in_place])()
        time.sleep(self.rnd.uniform(0.3, 1.5))
        self.ballast.unlink()
        self.note("ballast freed")

    ACTIONS = ("install", "install_in_place", "snapshot", "remove_package", "reinstall_over_restored",
               "remove_entry", "kill_daemon", "umount", "fill_cache", "clean")

    def run_action(self, name: str) -> None:
        getattr(self, f"act_{name}")()

    # ================================================================ the end of a round

    def settle_world(self) -> None:
        """/boot mounted, no ballast, the daemon up (a daemon that died on its own is a violation)."""
        if not self.mounted:
            self.mount_boot()
        with contextlib.suppress(FileNotFoundError):
            self.ballast.unlink()
        self.check_daemon_alive()
        if self.daemon is None:
            self.start_daemon()

    def dump_threads(self) -> str:
        """SIGABRT the daemon, whose faulthandler prints every thread's stack: where it is stuck."""
        assert self.daemon is not None
        daemon, self.daemon = self.daemon, None
        before = len(daemon.output())
        daemon.signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.proc.wait(10)
        daemon.close()
        return daemon.log_path.read_text(errors="replace")[before:][-3000:]

    def boot_sha(self, path: str) -> str | None:
        try:
            st = os.stat(self.boot / path.lstrip("/"))
        except OSError:
            return None
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in self.hash_memo:
            digest = sha1_file(self.boot / path.lstrip("/"))
            if digest is None:
                return None
            self.hash_memo[key] = digest
        return self.hash_memo[key]

    def committed_newest(self, path: str) -> Seen | None:
        """The last index reading that listed ``path`` since it has been referenced (lost-image's N)."""
        since = self.referenced_since.get(path)
        with self.seen_lock:
            seen = self.seen.get(path)
            if since is None or seen is None or seen.newest is None or seen.newest_at < since:
                return None
            return Seen(set(seen.ids), seen.newest, seen.newest_at, seen.newest_round)

    def image_ok(self, image_id: str) -> bool:
        return sha1_file(self.cache / f"{image_id}.img") == image_id

    def pending(self) -> list[str]:
        """What the daemon still has to do (the converged invariant)."""
        self.observe_index()
        index = self.read_index()
        left = []
        for path in sorted(self.references()):
            digest = self.boot_sha(path)
            if digest is not None:
                if index is None or path not in index or digest not in index.image_ids(path) \
                        or not (self.cache / f"{digest}.img").exists():
                    left.append(f"{path}: boot content {digest} not cached")
                continue
            seen = self.committed_newest(path)
            if seen is not None and (self.cache / f"{seen.newest}.img").exists():
                left.append(f"{path}: gone from /boot, image {seen.newest} in the cache, not restored")
        return left

    def check_round(self) -> None:
        self.settle_world()
        if self.daemon is None:
            return  # it does not start: nothing else can be judged
        self.check_converged()
        self.observe_index()
        self.check_lost_images()
        self.check_foreign_files()
        self.check_partial_images()
        self.check_fsck()
        self.check_logs()

    def check_converged(self) -> None:
        assert self.daemon is not None
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        left = self.pending()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.pending()
        if left:
            tail = "".join(self.daemon.output().splitlines(keepends=True)[-8:])
            threads = self.dump_threads()
            for item in left:
                path, _, detail = item.partition(": ")
                self.violate("converged", path, f"{detail} {CONVERGE_TIMEOUT:.0f} s after the round; "
                             f"the daemon's last lines:\n{tail}its threads then:\n{threads}")
            self.start_daemon()

    def check_lost_images(self) -> None:
        refs = self.references()
        for path in sorted(refs):
            seen = self.committed_newest(path)
            if seen is None or self.boot_sha(path) is not None:
                continue
            if not self.image_ok(seen.newest):
                self.violate("lost-image", path,
                             f"referenced by {', '.join(refs[path])}, gone from /boot, and its image {seen.newest} "
                             f"(newest in the index read in round {seen.newest_round}) is gone from the cache")

    def check_foreign_files(self) -> None:
        for name, (inode, digest) in sorted(self.owned.items()):
            try:
                st = os.lstat(self.boot / name)
            except FileNotFoundError:
                self.violate("foreign-deleted", "/" + name, "the driver's file was deleted by someone else"
                             + (" (a .boomrestored marker is beside it)"
                                if (self.boot / name).parent.joinpath(f".{Path(name).name}.boomrestored").exists()
                                else ""))
                continue
            if st.st_ino != inode:
                self.violate("foreign-deleted", "/" + name, f"the driver's file (inode {inode}) was replaced "
                             f"by inode {st.st_ino}")
            elif self.boot_sha("/" + name) != digest:
                self.violate("foreign-deleted", "/" + name, "the driver's file was modified")

    def check_partial_images(self) -> None:
        with self.seen_lock:
            listed = {path: set(seen.ids) for path, seen in self.seen.items()}
        index = self.read_index()
        for path, ids in sorted(listed.items()):
            for image_id in sorted(ids - self.complete.get(path, set())):
                size = index.image_extra(image_id).get("size") if index is not None and \
                    image_id in index.known_image_ids() else None
                self.violate("partial-image", path, f"image {image_id} was cached, and no writer ever completed "
                             f"that content{self.describe_prefix(path, image_id, size)}")
        self.complete_reported(listed)

    def check_fsck(self) -> None:
        result = self.cli("fsck", "--json")
        if result is not None:
            if "Traceback" in result.stderr:
                self.violate("no-traceback", "bootwatch fsck", result.stderr[-1500:])
            try:
                report = json.loads(result.stdout)
            except ValueError:
                report = None
            if result.returncode != 0 or not report or report.get("problems"):
                self.violate("fsck", str(self.cache), f"exit {result.returncode}: "
                             f"{report.get('problems') if report else result.stdout + result.stderr}")

    def check_logs(self) -> None:
        for log in self.logs:
            if log in self.reported_logs:
                continue
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                self.reported_logs.add(log)
                block = text[text.index("Traceback"):].splitlines()
                end = next((n for n, line in enumerate(block[1:], 1) if not line.startswith(" ")), len(block) - 1)
                tail = "\n".join(block[:end + 1])[-2000:]
                self.violate("no-traceback", log.parent.name, f"the daemon's output has a traceback:\n{tail}")

    def describe_prefix(self, path: str, image_id: str, size: object) -> str:
        """Say so when the image is a prefix of what a writer wrote there: a half-written file."""
        for files in self.versions.values():
            if path.lstrip("/") in files:
                full = content_of(*files[path.lstrip("/")])
                if isinstance(size, int) and size < len(full) and sha1(full[:size]) == image_id:
                    return f": it is the first {size} of the {len(full)} bytes the writer wrote (a half-written file)"
        return f" ({size} bytes)" if isinstance(size, int) else ""

    def complete_reported(self, listed: dict[str, set[str]]) -> None:
        """Report a partial image once: take it as known from now on."""
        for path, ids in listed.items():
            self.complete.setdefault(path, set()).update(ids)

    # ================================================================ the run

    def prepare(self) -> None:
        """Two kernels with their entries, written before the daemon starts."""
        for _ in range(2):
            version = self.new_version()
            for name, (size, seed) in self.versions[version].items():
                (self.boot / name).write_bytes(content_of(size, seed))
                self.own(name)
            self.write_entry(f"kernel-{version}.conf", self.paths_of(version))
            self.installed.add(version)
        self.start_polling()
        assert self.start_daemon(), self.report()

    def run(self, rounds: int) -> None:
        schedule = list(self.ACTIONS)
        self.rnd.shuffle(schedule)
        for self.round in range(1, rounds + 1):
            featured = schedule[self.round - 1] if self.round <= len(schedule) else self.rnd.choice(self.ACTIONS)
            actions = [featured] + self.rnd.sample(
                ["install", "snapshot", "remove_package", "remove_entry", "clean", "install", "snapshot"],
                self.rnd.randint(0, 2))
            self.rnd.shuffle(actions)
            for action in actions:
                self.check_daemon_alive()
                if self.daemon is None and action != "kill_daemon":
                    self.start_daemon()
                self.run_action(action)
            self.check_round()
            if self.violations and not KEEP_GOING:
                break
            if any(v.invariant == "daemon-up" and "READY" in v.detail for v in self.violations):
                break

    def report(self) -> str:
        lines = [f"chaos: {len(self.violations)} invariant violation(s), seed {self.seed} "
                 f"(replay: BOOTWATCH_CHAOS_SEED={self.seed} BOOTWATCH_CHAOS_ROUNDS={ROUNDS})"]
        lines += [f"  seed {self.seed} {v}" for v in self.violations]
        first = min((v.round for v in self.violations), default=self.round)
        lines.append(f"actions of rounds {max(1, first - 2)} to {first} (all of them: {self.root / 'actions.log'}):")
        lines += [f"  {a}" for a in self.actions if max(1, first - 2) <= int(a[1:a.index(':')]) <= first][-40:]
        return "\n".join(lines)


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    seed = int(os.environ.get("BOOTWATCH_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    world = Chaos(tmp_path, seed)
    try:
        world.setup()
        yield world
    finally:
        world.teardown()


def test_chaos_never_loses_an_image_nor_deletes_a_foreign_file(chaos: Chaos) -> None:
    print(f"chaos seed {chaos.seed}")
    chaos.prepare()
    chaos.run(ROUNDS)
    assert not chaos.violations, chaos.report()
    # The run meant something: every kind of action ran, and the daemon restored kernels.
    done = "\n".join(chaos.actions)
    for needle in ("writer", "daemon SIG", "/boot unmounted", "cache file system filled", "removed package",
                   "removed entry", "bootwatch clean"):
        assert needle in done, f"seed {chaos.seed}: no {needle!r} in the actions:\n{done}"
    assert chaos.poller is not None and chaos.poller.is_alive(), "the index poller died: the checks saw nothing"
    assert len(chaos.seen) >= 4, f"seed {chaos.seed}: the index poller saw only {sorted(chaos.seen)}"
    assert any("restored image" in log.read_text() for log in chaos.logs), \
        f"seed {chaos.seed}: the daemon never restored a kernel"
