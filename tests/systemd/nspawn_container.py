"""Boot a real systemd as PID 1 of a systemd-nspawn container, run commands in it, tear it down.

The host's PID 1 need not be systemd (these test machines run something else), so the container
is set up the way systemd-nspawn needs it without any help from a host systemd:

* **Its own cgroup.** nspawn and the container's systemd manage cgroups below the cgroup they
  start in. We create one fresh cgroup per run in every writable hierarchy (cgroup2, or the
  ``name=systemd`` and ``unified`` hierarchies of a hybrid host), start nspawn inside it, and at
  the end kill whatever is left in it and remove it. Nothing else on the host is touched.
* **Its own mount namespace with a throw-away /run.** nspawn writes state to /run/systemd/nspawn
  and looks for /run/systemd/system to decide whether to talk to a host systemd. A private tmpfs
  on /run keeps the host's /run clean and makes nspawn work standalone (``--register=no
  --keep-unit``). Every mount nspawn makes (the overlay root, /proc, /sys, binds) lives in that
  namespace and disappears with it, so no mount can leak to the host.
* **Never plain ``unshare --pid``.** A systemd booted that way rewrote host sysctls and the mode of
  /dev/null on these machines. nspawn keeps /proc/sys read-only and gives the container its own /dev.

Commands run in the container through ``nsenter -a`` into the namespaces of its PID 1. Each is
time-limited *inside* the container with coreutils ``timeout``: killing nsenter from outside
would leave an orphan in the container that systemd-shutdown then waits 90 s for.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from nspawn_rootfs import mounts_below

CGROUP_ROOT = Path("/sys/fs/cgroup")
# systemd powers off when it gets SIGRTMIN+4 (see systemd(1), "Signals").
POWEROFF_SIGNAL = signal.SIGRTMIN + 4
CONTAINER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

T = TypeVar("T")


class ContainerError(RuntimeError):
    """The container could not be booted, driven or torn down."""


def wait_until(what: str, probe: Callable[[], T | None], timeout: float,
               interval: float = 0.2) -> T:
    """Poll *probe* until it returns something true, or fail naming *what* we waited for.

    Deadlines here are generous upper bounds for things that must eventually happen, never
    assertions about how fast they happen.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


SCOPE_PREFIX = "bootwatch-tests."


def _hierarchies() -> list[Path]:
    """The cgroup hierarchies a container's systemd needs a cgroup in."""
    if (CGROUP_ROOT / "cgroup.procs").exists():  # pure cgroup2 (unified) host
        return [CGROUP_ROOT]
    # Legacy or hybrid: systemd needs the named hierarchy, and cgroup2 where it is mounted.
    return [CGROUP_ROOT / h for h in ("unified", "systemd")
            if os.access(CGROUP_ROOT / h / "cgroup.procs", os.W_OK)]


class CgroupScope:
    """One fresh cgroup per writable hierarchy, removed again on exit with all it contains.

    The name holds the PID of the process that owns the scope, so that a later run can tell
    the scope of a test run that was SIGKILLed (and could not clean up) from a live one.
    """

    def __init__(self, dirs: Sequence[Path]) -> None:
        self.dirs = list(dirs)

    @classmethod
    def for_owner(cls, name: str, owner: int) -> CgroupScope:
        hierarchies = _hierarchies()
        if not hierarchies:
            raise ContainerError(f"{CGROUP_ROOT}: no writable cgroup hierarchy for the container")
        return cls([h / f"{SCOPE_PREFIX}{owner}.{name}" for h in hierarchies])

    @classmethod
    def reap_orphans(cls) -> None:
        """Kill and remove the scopes of test runs that died without cleaning up.

        Killing a container's PID 1 kills its whole PID namespace, and nspawn's mounts die with
        its private mount namespace, so this is all a crashed run leaves behind.
        """
        for hierarchy in _hierarchies():
            for d in hierarchy.glob(SCOPE_PREFIX + "*"):
                owner = d.name[len(SCOPE_PREFIX):].split(".", 1)[0]
                if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                    cls([d]).remove()

    def __enter__(self) -> CgroupScope:
        for d in self.dirs:
            d.mkdir()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove(strict=not any(exc))

    def remove(self, strict: bool = True) -> None:
        """Kill every process in the scope and remove its cgroups; *strict*: fail if one stays."""
        self.kill_all()
        leftovers = []
        for d in self.dirs:
            # Children first: rmdir on a cgroup fails while it has sub-cgroups.
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                leftovers.append(f"{d}: {e.strerror}")
        if leftovers and strict:
            raise ContainerError("could not remove cgroups: " + "; ".join(leftovers))

    @property
    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def pids(self) -> list[int]:
        """Every process still in the scope, in any of its sub-cgroups."""
        found = set()
        for d in self.dirs:
            for procs in d.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    found.update(int(p) for p in procs.read_text().split())
        return sorted(found)

    def kill_all(self) -> None:
        """SIGKILL what is left. Everything in the scope was started by this test run."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, comm) of the direct children of *pid*, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # comm may contain spaces and parentheses: the fields after the last ")" are safe.
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == pid:
            found.append((int(entry.name), comm))
    return found


@dataclass
class Container:
    """A booted container: its PID 1 as seen from the host, and how to run things in it."""

    machine: str
    leader: int
    nspawn: subprocess.Popen[bytes]

    def run(self, argv: Sequence[str], *, timeout: float = 60, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run *argv* as root in the container with a clean environment; return its output."""
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--",
               "env", "-i", f"PATH={CONTAINER_PATH}", "LANG=C.UTF-8", "SYSTEMD_PAGER=",
               "SYSTEMD_COLORS=0", "TERM=dumb",
               "timeout", "-k", "5", str(int(timeout)), *argv]
        # The outer timeout is only a safety net; the inner one normally fires first.
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, check=False,
                              timeout=timeout + 30,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise ContainerError(f"{' '.join(argv)} exited with {proc.returncode} in {self.machine}:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run(["/bin/sh", "-euc", script], **kwargs)  # type: ignore[arg-type]

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of *unit* as a dict."""
        out = self.run(["systemctl", "show", unit, "-p", ",".join(props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, unit: str, name: str) -> str:
        return self.show(unit, name)[name]

    def journal(self, *args: str) -> list[dict[str, object]]:
        """Journal records as dicts (``journalctl -o json``); *args* select them."""
        out = self.run(["journalctl", "--no-pager", "-o", "json", *args]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def journal_cursor(self) -> str:
        """The cursor of the newest journal record, to read only what comes after it."""
        records = self.journal("-n", "1")
        return str(records[-1]["__CURSOR"]) if records else ""

    def system_state(self) -> str:
        return self.run(["systemctl", "is-system-running"], check=False).stdout.strip()


def _find_leader(nspawn: subprocess.Popen[bytes], timeout: float) -> int:
    """The host PID of the container's PID 1, once nspawn has exec'd systemd in it."""
    def probe() -> int | None:
        if nspawn.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited with {nspawn.returncode} before booting")
        for pid, comm in _children(nspawn.pid):
            if comm == "systemd":
                return pid
        return None
    return wait_until("the container's systemd to start", probe, timeout, interval=0.05)


def _power_off(container: Container, log: Path) -> None:
    """Power the container off the way a real shutdown does, force it only when that hangs."""
    nspawn = container.nspawn
    if nspawn.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(container.leader, POWEROFF_SIGNAL)
        try:
            nspawn.wait(timeout=60)
            return
        except subprocess.TimeoutExpired:
            pass
        with log.open("a") as f:
            f.write("bootwatch-tests: the container did not power off in 60s; killing it\n")
        nspawn.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            nspawn.wait(timeout=10)
            return
        # SIGKILL of a PID namespace's init kills every process in the namespace.
        with contextlib.suppress(ProcessLookupError):
            os.kill(container.leader, signal.SIGKILL)
        nspawn.kill()
        nspawn.wait(timeout=30)


def _check_no_mounts(rootfs: Path) -> None:
    leaked = mounts_below(rootfs)
    if leaked:
        raise ContainerError(f"mounts left behind after power-off: {', '.join(leaked)}")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM (a CI job timeout) into an exception, so that teardown still runs."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def booted_container(rootfs: Path, *, machine: str, log: Path,
                     nspawn_args: Sequence[str] = (), boot_timeout: float = 120,
                     volatile: bool = True, namespace_setup: str = "") -> Iterator[Container]:
    """Boot *rootfs* (read-only, changes on a tmpfs overlay) and yield it once systemd is up.

    ``volatile=False`` boots *rootfs* as it is, writable (a throw-away tree of the caller's, such
    as a loop-mounted filesystem). ``namespace_setup`` is shell run in nspawn's private mount
    namespace just before nspawn starts, after the tmpfs /run: mounts made there (the root
    filesystem on *rootfs*, say) are seen by the container and vanish with the namespace.

    On every exit path, exception or not, the container is powered off, every process left in
    its cgroups is killed, and the cgroups are removed.
    """
    with contextlib.ExitStack() as stack:
        # Runs last: after power-off nothing of the container may be mounted in our namespace.
        stack.callback(_check_no_mounts, rootfs)
        CgroupScope.reap_orphans()
        scope = stack.enter_context(CgroupScope.for_owner(machine, owner=os.getpid()))
        # Move ourselves into the scope first, then into a private mount namespace with a tmpfs
        # /run, then become nspawn: one PID from start to end, which is nspawn's.
        prologue = ('while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift; '
                    'mount -t tmpfs -o mode=0755,size=16m bootwatch-tests-run /run && '
                    + (f"(set -e\n{namespace_setup}\n) && " if namespace_setup else "")
                    + 'exec systemd-nspawn "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", prologue,
                "sh", *map(str, scope.procs_files), "--",
                "--directory", str(rootfs), *(["--volatile=overlay"] if volatile else []),
                "--machine", machine, "--boot",
                "--register=no", "--keep-unit", "--private-network", "--link-journal=no",
                "--resolv-conf=off", "--timezone=off", "--console=read-only", *nspawn_args]
        out = stack.enter_context(log.open("wb"))
        nspawn = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        # Registered after the scope, so it runs before the scope kills leftovers and rmdirs.
        container = Container(machine=machine, leader=0, nspawn=nspawn)
        stack.callback(_power_off, container, log)
        container.leader = _find_leader(nspawn, timeout=30)

        def booted() -> str | None:
            if nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {nspawn.returncode} while booting; "
                                     f"see {log}")
            state = container.run(["systemctl", "is-system-running", "--wait"],
                                  timeout=boot_timeout, check=False).stdout.strip()
            return state if state in ("running", "degraded") else None

        state = wait_until(f"{machine} to boot", booted, boot_timeout)
        if state != "running":
            failed = container.run(["systemctl", "--failed", "--no-legend"], check=False).stdout
            raise ContainerError(f"{machine} booted {state}; failed units:\n{failed}")
        yield container
