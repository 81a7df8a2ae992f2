"""A throwaway QEMU virtual machine that boots one kernel and initramfs, watched on its serial line.

The machine (:func:`build_argv`; the argv is passed to ``exec``, never to a shell):

* ``-nodefaults -no-user-config``: no device but what is named here, no configuration file read;
* no disk, no network (``-nic none``), no display (``-display none``), no monitor; the only
  output is the first serial line, on qemu's standard output, a pipe this process reads;
* ``-no-reboot``: a reboot (``panic=-1`` after a panic, initramfs-tools refusing its shell)
  ends qemu;
* ``-sandbox on`` with every optional restriction: qemu's seccomp filter forbids it to spawn
  processes, change privileges or resources;
* bounded memory (``-m``, :func:`memory_for`), one CPU;
* the kernel and the initramfs are opened here (regular files only, never blocking on a FIFO)
  and handed over as inherited descriptors (``/dev/fd/N``): qemu reads what was checked. Several
  initramfs images are concatenated into a memfd, each padded to 4 bytes, as boot loaders lay
  them out in memory.

Acceleration: KVM when ``/dev/kvm`` opens for reading and writing, with ``-cpu host``; otherwise
TCG with ``-cpu max``. Nested virtualisation may offer a ``/dev/kvm`` that cannot run the
machine (qemu aborts setting an MSR, or the guest resets before the kernel prints a line): a KVM
run in which the kernel never started (no ``Linux version`` line within ``kvm_start`` seconds,
or qemu gone before that) is repeated under TCG, and KVM is not tried again by this process.

Lifetime: qemu is its own session and process group (``setsid``), started through util-linux's
``setpriv --pdeathsig KILL`` (without setpriv, through ``prctl(PR_SET_PDEATHSIG)`` in the child
before ``exec``; setpriv keeps ``preexec_fn``, which is unsafe in a threaded process, out of the
daemon), so the kernel kills it when the thread that started it dies, also by SIGKILL. Every
other way out (the proof decided, its time bound, an exception, SIGTERM turned into an exception
by the caller, the caller's ``cancel`` event: the daemon stopping, looked at every
:data:`CANCEL_POLL` seconds, then :class:`ProofCancelled` is raised) kills
the whole process group and reaps qemu in a ``finally``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootwatch.atomic import write_all
from bootwatch.enums import TextEnum
from bootwatch.prove.console import ConsoleWatch
from bootwatch.safety import open_regular

QEMU = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")

DEFAULT_TIMEOUT = 120.0
"""Seconds a VM may run: a Debian cloud kernel with its mkinitramfs image reaches its break point
in well under 20 s under TCG; a slow shared CI machine gets a wide margin."""
DEFAULT_SETTLE = 5.0
"""Seconds of console silence after ``/init`` started that end the proof (an initramfs that
neither reaches a known break point nor ends the VM: dracut waiting for its root)."""
FATAL_GRACE = 2.0
"""Seconds to keep reading after a panic or a failed decompression, for the trace."""
KVM_START = 15.0
CANCEL_POLL = 0.2
"""Seconds between looks at a caller's ``cancel`` event while the VM runs."""
MIN_MEMORY_MIB = 512
MAX_MEMORY_MIB = 4096
"""The memory :func:`memory_for` gives a VM."""
TIMEOUT_BOUNDS = (1.0, 86400.0)
"""The shortest and longest time bound a proof may be given (``bootwatch prove --timeout``,
``[prove] timeout``), in seconds."""
MEMORY_BOUNDS_MIB = (64, 65536)
"""The least and most memory a VM may be given (``--memory``, ``[prove] memory``), in MiB."""
LOG_LIMIT = 4 << 20
"""Bytes of console kept: a kernel in a loop of messages must not fill the memory."""

_PR_SET_PDEATHSIG = 1


class ProofCancelled(Exception):
    """The caller cancelled the proof (the daemon stops): the VM is gone, and there is no verdict."""


class Accel(TextEnum):
    KVM = "kvm"
    TCG = "tcg"


class AccelChoice(TextEnum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class Ended(TextEnum):
    """Why the console was no longer read."""

    EXITED = "the VM ended"
    FINISHED = "the initramfs reached its break point"
    SETTLED = "the console was quiet after /init"
    FATAL = "the kernel failed"
    TIMEOUT = "the time bound ran out"
    NO_START = "the kernel did not start under KVM"
    CANCELLED = "the proof was cancelled"


@dataclass(frozen=True)
class VmLimits:
    timeout: float = DEFAULT_TIMEOUT
    settle: float = DEFAULT_SETTLE
    memory_mib: int | None = None
    """None: :func:`memory_for` the images."""
    kvm_start: float = KVM_START


@dataclass
class VmRun:
    accel: Accel
    watch: ConsoleWatch
    console: bytes
    ended: Ended
    exit_status: int | None
    stderr: str
    seconds: float
    argv: tuple[str, ...]


_kvm_refused = False


def qemu_path(environ_path: str | None = None) -> str | None:
    return shutil.which(QEMU, path=environ_path)


def kvm_usable() -> bool:
    """``/dev/kvm`` opens for reading and writing, and KVM has not failed this process before."""
    if _kvm_refused:
        return False
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True


def memory_for(initrd_size: int) -> int:
    """MiB for a VM that unpacks ``initrd_size`` bytes of initramfs: the kernel's own needs, the
    compressed image and its unpacked tree (compression ratios stay below 4)."""
    need = 256 + (5 * initrd_size >> 20)
    return max(MIN_MEMORY_MIB, min(MAX_MEMORY_MIB, need))


def build_argv(qemu: str, accel: Accel, kernel: str, initrd: str | None, cmdline: str,
               memory_mib: int) -> list[str]:
    argv = [qemu, "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-monitor", "none",
            "-nic", "none", "-serial", "stdio", "-parallel", "none",
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-machine", f"q35,accel={accel.value}", "-cpu", "host" if accel is Accel.KVM else "max",
            "-smp", "1", "-m", str(memory_mib), "-kernel", kernel, "-append", cmdline]
    if initrd is not None:
        argv += ["-initrd", initrd]
    return argv


def _set_pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _launcher() -> tuple[list[str], bool]:
    """The argv prefix that sets the parent-death signal, and whether a preexec_fn must do it."""
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [setpriv, "--pdeathsig", "KILL", "--"], False
    return [], True


def _initrd_fd(stack: contextlib.ExitStack, initrds: Sequence[Path]) -> tuple[int | None, int]:
    """A descriptor of the initramfs qemu loads, and its size."""
    if not initrds:
        return None, 0
    fds = [stack.enter_context(_closing_fd(open_regular(p, follow_symlinks=True))) for p in initrds]
    if len(fds) == 1:
        return fds[0], os.fstat(fds[0]).st_size
    joined = stack.enter_context(_closing_fd(os.memfd_create("bootwatch-initrd", os.MFD_CLOEXEC)))
    with open(joined, "wb", closefd=False) as out:
        for fd in fds:
            with open(fd, "rb", closefd=False) as f:
                shutil.copyfileobj(f, out)
            out.write(b"\0" * (-out.tell() % 4))
    return joined, os.fstat(joined).st_size


@contextlib.contextmanager
def section_file(fd: int, offset: int, length: int, name: str) -> Iterator[int]:
    """A memory file (memfd) holding ``length`` bytes of ``fd`` from ``offset``: a section of a
    unified kernel image, handed to qemu as a file of its own."""
    with _closing_fd(os.memfd_create(f"bootwatch{name}", os.MFD_CLOEXEC)) as out:
        done = 0
        while done < length:
            chunk = os.pread(fd, min(1 << 20, length - done), offset + done)
            if not chunk:
                raise OSError(f"section {name} ends at offset {offset + done}, beyond the end of the file")
            write_all(out, chunk)
            done += len(chunk)
        yield out


@contextlib.contextmanager
def _closing_fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def boot(kernel: Path, initrds: Sequence[Path], cmdline: str, *, qemu: str,
         accel: AccelChoice = AccelChoice.AUTO, limits: VmLimits | None = None,
         cancel: threading.Event | None = None) -> VmRun:
    """Boot ``kernel`` with ``initrds`` until the console decides (see :class:`Ended`).

    Raises :class:`ProofCancelled` once ``cancel`` is set (the VM killed and
    reaped first)."""
    global _kvm_refused
    limits = limits or VmLimits()
    with contextlib.ExitStack() as stack:
        kernel_fd = stack.enter_context(_closing_fd(open_regular(kernel, follow_symlinks=True)))
        initrd_fd, initrd_size = _initrd_fd(stack, initrds)
        memory = limits.memory_mib or memory_for(initrd_size)
        first = Accel.KVM if accel is AccelChoice.KVM or (accel is AccelChoice.AUTO and kvm_usable()) else Accel.TCG
        run = _run(qemu, first, kernel_fd, initrd_fd, cmdline, memory, limits, cancel)
        if run.accel is Accel.KVM and accel is AccelChoice.AUTO and not run.watch.kernel_started:
            _kvm_refused = True
            run = _run(qemu, Accel.TCG, kernel_fd, initrd_fd, cmdline, memory, limits, cancel)
        return run


def _run(qemu: str, accel: Accel, kernel_fd: int, initrd_fd: int | None, cmdline: str, memory: int,
         limits: VmLimits, cancel: threading.Event | None) -> VmRun:
    argv = build_argv(qemu, accel, f"/dev/fd/{kernel_fd}",
                      None if initrd_fd is None else f"/dev/fd/{initrd_fd}", cmdline, memory)
    prefix, needs_preexec = _launcher()
    pass_fds = (kernel_fd,) if initrd_fd is None else (kernel_fd, initrd_fd)
    started = time.monotonic()
    reader = _Reader(ConsoleWatch(), accel, limits, started, cancel)
    status: int | None = None
    with contextlib.ExitStack() as stack:
        proc = subprocess.Popen(prefix + argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, pass_fds=pass_fds, start_new_session=True,
                                preexec_fn=_set_pdeathsig if needs_preexec else None)
        stack.callback(_reap, proc)
        assert proc.stdout is not None and proc.stderr is not None
        ended = _watch(proc, reader)
        if ended is Ended.EXITED:
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = proc.wait(timeout=5)
    if ended is Ended.CANCELLED:  # the VM is gone (killed and reaped above)
        raise ProofCancelled(f"{QEMU} stopped: the proof was cancelled")
    return VmRun(accel, reader.watch, bytes(reader.console), ended, status, reader.stderr.decode("utf-8", "replace"),
                 time.monotonic() - started, tuple(argv))


def _reap(proc: subprocess.Popen[bytes]) -> None:
    # Kill the group before reaping: the zombie keeps the group id from being reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class _Reader:
    """Reads qemu's console and error output until the console decides, or a bound runs out."""

    def __init__(self, watch: ConsoleWatch, accel: Accel, limits: VmLimits, started: float,
                 cancel: threading.Event | None = None) -> None:
        self.watch = watch
        self.cancel = cancel
        self.accel = accel
        self.limits = limits
        self.started = started
        self.deadline = started + limits.timeout
        self.stop_at: float | None = None
        self.last_output = started
        self.console = bytearray()
        self.stderr = bytearray()
        self.partial = b""

    def ended(self, now: float) -> Ended | None:
        watch = self.watch
        if self.cancel is not None and self.cancel.is_set():
            return Ended.CANCELLED
        if now >= self.deadline:
            return Ended.TIMEOUT
        if self.stop_at is not None and now >= self.stop_at:
            return Ended.FATAL
        if watch.init_ran and watch.finished:
            return Ended.FINISHED
        if watch.init_ran and now - self.last_output >= self.limits.settle:
            return Ended.SETTLED
        if self._awaiting_kvm() and now - self.started >= self.limits.kvm_start:
            return Ended.NO_START
        return None

    def _awaiting_kvm(self) -> bool:
        return self.accel is Accel.KVM and not self.watch.kernel_started

    def wait(self, now: float) -> float:
        until = [self.deadline]
        if self.stop_at is not None:
            until.append(self.stop_at)
        if self.watch.init_ran:
            until.append(self.last_output + self.limits.settle)
        if self._awaiting_kvm():
            until.append(self.started + self.limits.kvm_start)
        if self.cancel is not None:
            until.append(now + CANCEL_POLL)
        return max(min(until) - now, 0.01)

    def error_output(self, chunk: bytes) -> None:
        if len(self.stderr) < LOG_LIMIT:
            self.stderr += chunk

    def console_output(self, chunk: bytes) -> None:
        self.last_output = time.monotonic()
        if len(self.console) < LOG_LIMIT:
            self.console += chunk
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()[-4096:]
        for line in lines:
            self.watch.feed(_text(line))
        halted = bool(self.partial) and self.watch.feed_partial(_text(self.partial))
        if self.stop_at is None and (halted or self.watch.fatal):
            self.stop_at = min(self.deadline, time.monotonic() + FATAL_GRACE)

    def close(self) -> None:
        if self.partial:
            self.watch.feed(_text(self.partial))
            self.partial = b""


def _watch(proc: subprocess.Popen[bytes], reader: _Reader) -> Ended:
    assert proc.stdout is not None and proc.stderr is not None
    with selectors.DefaultSelector() as selector:
        for stream in (proc.stdout, proc.stderr):
            os.set_blocking(stream.fileno(), False)
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            ended = reader.ended(now)
            if ended is not None:
                return ended
            for key, _ in selector.select(reader.wait(now)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.fileobj is proc.stderr:
                    reader.error_output(chunk)
                else:
                    reader.console_output(chunk)
    reader.close()
    return Ended.EXITED


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r")
