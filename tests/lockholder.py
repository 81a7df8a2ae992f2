"""Real processes that hold a package manager's lock, for the transaction tests.

:class:`HeldLock` starts a child Python that takes a lock on a file the way a package manager does
(an ``fcntl`` record lock, as dpkg, apt and rpm do, or an open file description lock), says so on
its stdout and keeps it until the test releases it (closes the child's stdin) or kills it.
:class:`BlockedDpkg` runs the real ``dpkg --admindir=DIR -i`` of a tiny package built with
``dpkg-deb`` whose postinst blocks on a FIFO, so dpkg holds its locks until the test opens the
FIFO for writing: a Debian transaction stopped in its hooks, as ``update-grub`` in a postrm is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

# The child: lock argv[1] as argv[2] says, print "locked", wait for stdin to close, exit.
_HOLDER = textwrap.dedent("""
    import fcntl, os, struct, sys
    path, how = sys.argv[1], sys.argv[2]
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    kind = fcntl.F_RDLCK if how == "read" else fcntl.F_WRLCK
    command = fcntl.F_OFD_SETLK if how == "ofd" else fcntl.F_SETLK
    fcntl.fcntl(fd, command, struct.pack("hhqqi", kind, 0, 0, 0, 0) + bytes(8))
    print("locked", flush=True)
    sys.stdin.read()
""")


class HeldLock:
    """A child process holding a lock on ``path``: ``how`` is "posix" (``F_SETLK`` write lock),
    "ofd" (``F_OFD_SETLK`` write lock) or "read" (``F_SETLK`` read lock)."""

    def __init__(self, path: Path, how: str = "posix") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), how], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            self.proc.kill()
            raise AssertionError(f"the lock holder did not lock {path}: {line!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> None:
        """Let go: the child exits, and the kernel drops its lock."""
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def build_blocking_package(directory: Path, gate: Path) -> Path:
    """A package with no files whose postinst waits until a line can be read from ``gate``."""
    root = directory / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: bootwatch-test-blocker\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: bootwatch tests <tests@example.invalid>\nDescription: waits in its postinst\n")
    postinst = root / "DEBIAN" / "postinst"
    postinst.write_text(f"#!/bin/sh\nread line < '{gate}'\nexit 0\n")
    postinst.chmod(0o755)
    deb = directory / "blocker.deb"
    subprocess.run(["dpkg-deb", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


class BlockedDpkg:
    """``dpkg --admindir=ADMIN -i`` of the blocking package, running until :meth:`release`."""

    def __init__(self, directory: Path) -> None:
        if shutil.which("dpkg") is None or shutil.which("dpkg-deb") is None:
            raise AssertionError("dpkg and dpkg-deb are needed")
        self.admin = directory / "admin"
        for sub in ("updates", "info"):
            (self.admin / sub).mkdir(parents=True, exist_ok=True)
        for name in ("status", "available"):
            (self.admin / name).touch()
        self.gate = directory / "gate"
        os.mkfifo(self.gate)
        deb = build_blocking_package(directory, self.gate)
        self.log = open(directory / "dpkg.log", "w")  # noqa: SIM115 (closed by close())
        self.proc = subprocess.Popen(["dpkg", f"--admindir={self.admin}", "-i", str(deb)],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def locks_held(self) -> int:
        """How many record locks dpkg holds now, as /proc/locks shows them (2 in the postinst: its
        frontend lock and its database lock)."""
        return sum(1 for line in Path("/proc/locks").read_text().splitlines()
                   if "->" not in line and line.split()[1:5] == ["POSIX", "ADVISORY", "WRITE", str(self.pid)])

    def release(self) -> int:
        """Open the gate: the postinst ends, dpkg finishes and unlocks. Its exit code."""
        with open(self.gate, "w") as gate:
            gate.write("go\n")
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def __enter__(self) -> BlockedDpkg:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
