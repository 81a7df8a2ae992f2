"""A cached Debian root file system that boots systemd in systemd-nspawn.

The root file system is built once with ``mmdebstrap`` and kept under
``/var/cache/bootwatch-tests/`` in a directory named after a hash of everything that shapes it
(suite, mirror, package list, build options). A changed package list therefore builds a new tree
instead of reusing a stale one. Containers boot it with ``--volatile=overlay``: the cached tree is
the read-only lower layer and every write goes to a tmpfs upper layer, so the cache stays pristine
and no run sees another run's leftovers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Bumped whenever the way the tree is built changes in a way the hash below cannot see.
BUILD_FORMAT = 1

DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
READY_MARKER = ".bootwatch-rootfs-ready"


def debian_mirror(sources: Path = DEBIAN_SOURCES) -> str:
    """Return the first ``URIs:`` of the host's deb822 sources, or deb.debian.org.

    The host's mirror is the one apt is known to reach from this machine (a proxy or a local
    mirror in CI); the public one is only the fallback.
    """
    try:
        text = sources.read_text()
    except OSError:
        return DEFAULT_MIRROR
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "URIs" and value.split():
            return value.split()[0]
    return DEFAULT_MIRROR


@dataclass(frozen=True)
class RootfsSpec:
    """Everything that decides what the root file system contains."""

    suite: str = "bookworm"
    mirror: str = field(default_factory=debian_mirror)
    # systemd: PID 1 and journald; dbus: systemctl reload/propagation needs the bus;
    # python3-venv: the bootwatch venv is created inside the container with the container's
    # python3, whose ABI (3.11 on bookworm) the host-built wheels must match;
    # procps: /bin/kill, which the unit's ExecReload runs (minbase does not have it).
    packages: tuple[str, ...] = ("systemd", "dbus", "procps", "python3", "python3-venv")

    def key(self) -> str:
        """A short hash that names the cached tree."""
        blob = json.dumps({"format": BUILD_FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an flock on *path*, so that two test runs do not build the same tree at once."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the fd drops the lock


def _mmdebstrap(spec: RootfsSpec, target: Path, log: Path) -> None:
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(spec.packages),
        # Smaller and faster: no translations, docs, man pages or locales in a test tree.
        "--aptopt=Acquire::Languages \"none\"",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        # An empty machine-id makes systemd generate a transient one on every boot, and no
        # hostname makes it use the machine name nspawn passes.
        "--customize-hook=: > \"$1/etc/machine-id\"",
        "--customize-hook=rm -f \"$1/etc/hostname\"",
        spec.suite,
        str(target),
        spec.mirror,
    ]
    with log.open("wb") as out:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"mmdebstrap failed with exit code {proc.returncode}; {log}:\n"
                           + "\n".join(tail))


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below *path*, from this mount namespace's mountinfo."""
    prefix = str(path.resolve())
    found: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            found.append(mount_point)
    return found


def _remove_tree(path: Path) -> None:
    """Remove a (partial) tree, but never through a mount point.

    A failed bootstrap can leave /proc, /sys or a bind mount of /dev mounted in the tree, and
    rmtree would then delete the host's device nodes. Refuse instead.
    """
    if not path.exists():
        return
    mounts = mounts_below(path)
    if mounts:
        raise RuntimeError(f"{path}: refusing to remove, still mounted: {', '.join(mounts)}")
    shutil.rmtree(path)


def cached_rootfs(spec: RootfsSpec, cache_dir: Path) -> Path:
    """Return a built root file system for *spec*, building it first if it is not cached.

    The tree is built in a temporary sibling directory and renamed into place only when complete,
    and a marker file is checked on use: an interrupted build never passes for a cached one.
    """
    cache_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    final = cache_dir / f"rootfs-{spec.suite}-{spec.key()}"
    if (final / READY_MARKER).exists():
        return final
    with _exclusive_lock(cache_dir / f".{final.name}.lock"):
        if (final / READY_MARKER).exists():  # another run built it while we waited
            return final
        building = cache_dir / f".{final.name}.building"
        for stale in (building, final):
            _remove_tree(stale)
        try:
            _mmdebstrap(spec, building, cache_dir / f"{final.name}.log")
            (building / READY_MARKER).write_text(json.dumps(asdict(spec), sort_keys=True) + "\n")
            building.rename(final)
        finally:
            _remove_tree(building)
    return final
