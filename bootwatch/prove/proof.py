"""One entry's boot proof, and where its result is kept.

:func:`prove_entry` finds the entry's kernel and initramfs images on the host (by their cache keys,
relative to the boot directory), boots them (:mod:`bootwatch.prove.vm`) with the proof's command
line (:mod:`bootwatch.prove.cmdline`) and judges the console (:mod:`bootwatch.prove.console`):

* ``passed``: the kernel ran the initramfs's ``/init``, and no failure was seen;
* ``failed``: the reason, and the console lines that show it (a file the entry names is missing
  or unreadable, the kernel image is truncated, the initramfs holds kernel modules but none for
  the kernel's release (read from its setup header): decided before booting, because
  initramfs-tools loads modules quietly; the VM did not get to ``/init`` in time, ...);
* ``not run``: the proof cannot be made here, which is never a failure: qemu-system-x86_64 is
  not installed, the kernel is not an x86 bzImage (another architecture's, an EFI program), a
  file is on no partition bootwatch can tell.

A unified kernel image is proved from its sections, as systemd-stub starts it: ``.linux`` is
the kernel, ``.ucode`` and ``.initrd`` (in this order) the initramfs, ``.cmdline`` the options.

Each proof names the files it booted with their stat signatures as they were when it started
(:func:`entry_files`: the kernel and each initramfs, or the unified kernel image): a proof is
about those files, and says nothing about the entry once one of them is replaced (a kernel
update does not inherit an older kernel's failure, nor its pass).

Results are kept per entry in ``<runtime>/proofs/`` (``[paths] runtime``, ``/run/bootwatch``
under systemd): ``<name>.json`` (:meth:`Proof.to_json`) and ``<name>.log``, the whole serial
console (up to :data:`~bootwatch.prove.vm.LOG_LIMIT`), each replaced atomically. ``<name>`` is
``<source>-<entry id>`` with every character but letters, digits, ``.``, ``_`` and ``-``
percent-encoded (a GRUB id holds ``>``, a title may hold ``/``); a name longer than 200
characters is ``<source>-sha256-<hex>`` of the id. The runtime directory is the daemon's state
that does not outlive a boot: a proof is about the files as they are now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootwatch.atomic import write_atomically
from bootwatch.entries.inventory import Inventory
from bootwatch.entries.model import BootFile, Entry, FileRole
from bootwatch.enums import TextEnum
from bootwatch.errors import BootwatchError, describe_oserror, printable
from bootwatch.filestat import StatSignature
from bootwatch.prove.cmdline import proof_cmdline
from bootwatch.prove.console import ConsoleWatch
from bootwatch.prove.vm import QEMU, AccelChoice, Ended, VmLimits, VmRun, boot, section_file
from bootwatch.safety import open_private_directory, open_regular, read_regular
from bootwatch.verify.initramfs import ArchiveError, ToolMissing, check_initramfs, modules_release
from bootwatch.verify.kernel import KernelError, bzimage_release, bzimage_summary, is_bzimage, other_kernel, parse_pe

PROOFS_DIR = "proofs"
NOT_INSTALLED = f"{QEMU} is not installed"
EVIDENCE_TAIL = 12
"""Console lines shown when no marker explains a failure: the last ones."""
_NAME_LIMIT = 200
_LATEST = 1 << 33
"""A stored time or duration beyond this (the year 2242) is no proof's: the file was tampered with."""
_RESULT_LIMIT = 1 << 20
"""Bytes of a stored result read back: its evidence lines are few and short."""


class Verdict(TextEnum):
    PASSED = "passed"
    FAILED = "failed"
    NOT_RUN = "not run"


@dataclass(frozen=True)
class ProvedFile:
    """A file a proof boots: its path on the host and its stat signature."""

    path: str
    signature: StatSignature

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "stat": self.signature.to_json()}

    @classmethod
    def from_json(cls, value: object) -> ProvedFile | None:
        if not isinstance(value, dict) or not isinstance(value.get("path"), str):
            return None
        signature = StatSignature.from_json(value.get("stat"))
        return None if signature is None else cls(value["path"], signature)


@dataclass(frozen=True)
class Proof:
    entry_id: str
    source: str
    verdict: Verdict
    reason: str
    evidence: tuple[str, ...] = ()
    started: float = field(default_factory=time.time)
    seconds: float = 0.0
    accel: str | None = None
    kernel: str | None = None
    initrds: tuple[str, ...] = ()
    cmdline: str | None = None
    log: str | None = None
    files: tuple[ProvedFile, ...] = ()
    """What was booted, as it was when the proof started (empty: not known)."""

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry_id, "source": self.source, "verdict": self.verdict.value,
                "reason": self.reason, "evidence": list(self.evidence), "started": self.started,
                "seconds": round(self.seconds, 3), "accel": self.accel, "kernel": self.kernel,
                "initrds": list(self.initrds), "cmdline": self.cmdline, "log": self.log,
                "files": [f.to_json() for f in self.files]}

    @classmethod
    def from_json(cls, data: object) -> Proof | None:
        """A stored proof (:meth:`to_json`), or None when ``data`` is not one."""
        if not isinstance(data, dict):
            return None
        try:
            files = tuple(ProvedFile.from_json(f) for f in data.get("files") or ())
            optional = {name: data.get(name) for name in ("accel", "kernel", "cmdline", "log")}
            if any(f is None for f in files) or not all(v is None or isinstance(v, str) for v in optional.values()):
                return None
            return cls(_text(data, "entry"), _text(data, "source"), Verdict(data.get("verdict")),
                       _text(data, "reason"), tuple(_text({"v": v}, "v") for v in data.get("evidence") or ()),
                       _number(data, "started"), _number(data, "seconds"), optional["accel"], optional["kernel"],
                       tuple(_text({"v": v}, "v") for v in data.get("initrds") or ()), optional["cmdline"],
                       optional["log"], tuple(f for f in files if f is not None))
        except (ValueError, TypeError):
            return None

    def is_of(self, files: tuple[ProvedFile, ...] | None) -> bool:
        """Whether the proof booted exactly ``files`` (:func:`entry_files` now), unchanged."""
        return bool(self.files) and files is not None and self.files == files


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise TypeError(f"{name}: not a string")
    return value


def _number(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= _LATEST:
        raise TypeError(f"{name}: not a number of seconds")
    return float(value)


def proof_name(entry: Entry) -> str:
    ident = _id_bytes(entry.id)
    name = f"{entry.source.value}-{urllib.parse.quote(ident, safe='')}"
    if len(name) > _NAME_LIMIT:
        name = f"{entry.source.value}-sha256-{hashlib.sha256(ident).hexdigest()}"
    return name


def _id_bytes(ident: str) -> bytes:
    """The id as the bytes it was read from: a file name that is not UTF-8 is read with its
    undecodable bytes as lone surrogates (``os.fsdecode``), which UTF-8 cannot encode."""
    try:
        return ident.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return ident.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class _Images:
    kernel: Path
    initrds: tuple[Path, ...]
    kernel_name: str
    """What reports name: the path, or ``UKI:.linux`` for a section of a unified kernel image."""
    initrd_names: tuple[str, ...]


def _not_run(entry: Entry, reason: str) -> Proof:
    return Proof(entry.id, entry.source.value, Verdict.NOT_RUN, reason)


def _failed(entry: Entry, reason: str) -> Proof:
    return Proof(entry.id, entry.source.value, Verdict.FAILED, reason)


def host_path(inventory: Inventory, file: BootFile) -> Path | None:
    """Where ``file`` is on this host; None when its partition cannot be told."""
    key = inventory.key(file)
    # A key is relative to the boot directory, also for an ESP file (/../efi/...).
    return None if key is None else Path(os.path.normpath(str(inventory.roots.boot) + key))


def _host_path(inventory: Inventory, entry: Entry, file: BootFile) -> Path | Proof:
    path = host_path(inventory, file)
    return _not_run(entry, f"{file.path}: on no partition bootwatch can tell") if path is None else path


def _booted_files(entry: Entry) -> tuple[BootFile, ...]:
    """The files a proof of ``entry`` boots: its unified kernel image, or its kernel and initrds."""
    ukis = entry.files_with_role(FileRole.UKI)
    if ukis:
        return (ukis[0],)
    return (*entry.files_with_role(FileRole.KERNEL), *entry.files_with_role(FileRole.INITRD))


def entry_files(inventory: Inventory, entry: Entry) -> tuple[ProvedFile, ...] | None:
    """The files a proof of ``entry`` boots, with their stat signatures now (symlinks followed);
    None when one cannot be told or stat'ed (a proof of the entry as it is cannot be made, or
    matched), or the entry names none."""
    files = []
    for file in _booted_files(entry):
        path = host_path(inventory, file)
        if path is None:
            return None
        try:
            files.append(ProvedFile(str(path), StatSignature.of(os.stat(path))))
        except OSError:
            return None
    return tuple(files) or None


def _images(inventory: Inventory, entry: Entry, stack: contextlib.ExitStack) -> _Images | Proof:
    """The entry's kernel and initramfs images on the host (a UKI's sections copied into memory
    files, named ``/proc/self/fd/N`` while ``stack`` is open), or why there is no proof."""
    if entry.files_with_role(FileRole.EFI):
        return _not_run(entry, "an EFI program, not a Linux kernel")
    ukis = entry.files_with_role(FileRole.UKI)
    if ukis:
        uki = _host_path(inventory, entry, ukis[0])
        return uki if isinstance(uki, Proof) else _uki_images(entry, uki, stack)
    kernels = entry.files_with_role(FileRole.KERNEL)
    if len(kernels) != 1:
        return _not_run(entry, "the entry names no kernel")
    paths = []
    for file in (*kernels, *entry.files_with_role(FileRole.INITRD)):
        path = _host_path(inventory, entry, file)
        if isinstance(path, Proof):
            return path
        paths.append(path)
    return _Images(paths[0], tuple(paths[1:]), str(paths[0]), tuple(map(str, paths[1:])))


UKI_INITRD_SECTIONS = (".ucode", ".initrd")
"""What systemd-stub hands the kernel as its initrd, in this order (early microcode first)."""


def _uki_images(entry: Entry, uki: Path, stack: contextlib.ExitStack) -> _Images | Proof:
    try:
        with open(open_regular(uki, follow_symlinks=True), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            sections = {name: (offset, length) for name, offset, length in parse_pe(f, f.read(0x1000), size) or ()}
            if ".linux" not in sections:
                return _failed(entry, f"{uki}: a unified kernel image without a .linux section")
            fds = {name: stack.enter_context(section_file(f.fileno(), *sections[name], name))
                   for name in (".linux", *UKI_INITRD_SECTIONS) if name in sections}
    except KernelError as e:
        return _failed(entry, f"{uki}: {e}")
    except (BootwatchError, OSError) as e:
        return _failed(entry, e.message if isinstance(e, BootwatchError) else describe_oserror(e, path=uki))
    initrds = [name for name in UKI_INITRD_SECTIONS if name in fds]
    return _Images(Path(f"/proc/self/fd/{fds['.linux']}"), tuple(Path(f"/proc/self/fd/{fds[n]}") for n in initrds),
                   f"{uki}:.linux", tuple(f"{uki}:{n}" for n in initrds))


def _check_kernel(entry: Entry, images: _Images) -> Proof | None:
    """Not run for a kernel qemu-system-x86_64 cannot boot; failed for an unreadable or truncated one."""
    kernel = images.kernel_name
    try:
        fd = open_regular(images.kernel, follow_symlinks=True, display=kernel)
    except (BootwatchError, OSError) as e:
        return _failed(entry, e.message if isinstance(e, BootwatchError) else describe_oserror(e, path=kernel))
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 0x1000, 0)
    except OSError as e:
        return _failed(entry, describe_oserror(e, path=kernel))
    finally:
        os.close(fd)
    if not is_bzimage(head):
        other = other_kernel(head)
        what = other if other is not None else ("a PE/EFI image" if head[:2] == b"MZ" else "an unknown format")
        return _not_run(entry, f"{kernel}: not an x86 kernel (bzImage): {what}")
    try:
        bzimage_summary(head, size)
    except KernelError as e:
        return _failed(entry, f"{kernel}: {e}")
    return None


def _check_initrds(entry: Entry, images: _Images) -> Proof | None:
    for path, name in zip(images.initrds, images.initrd_names):
        try:
            os.close(open_regular(path, follow_symlinks=True, display=name))
        except (BootwatchError, OSError) as e:
            return _failed(entry, e.message if isinstance(e, BootwatchError) else describe_oserror(e, path=name))
    return None


def _kernel_release(kernel: Path) -> str | None:
    try:
        with open(open_regular(kernel, follow_symlinks=True), "rb") as f:
            return bzimage_release(f, f.read(0x1000))
    except (BootwatchError, OSError):
        return None


def _initramfs_releases(initrds: tuple[Path, ...]) -> set[str] | None:
    """The kernel releases whose modules directory the images hold; None when a walk fails
    (the VM shows what the kernel makes of a broken image)."""
    releases: set[str] = set()

    def on_name(name: bytes) -> None:
        release = modules_release(name)
        if release is not None:
            releases.add(release)

    for path in initrds:
        try:
            with open(open_regular(path, follow_symlinks=True), "rb") as f:
                check_initramfs(f, 0, os.fstat(f.fileno()).st_size, on_name=on_name)
        except (ArchiveError, ToolMissing, BootwatchError, OSError):
            return None
    return releases


def _check_modules(entry: Entry, images: _Images) -> Proof | None:
    """Failed when the initramfs holds kernel modules, but none for this kernel: its /init would
    load none (initramfs-tools' modprobe runs quiet, so no console would tell)."""
    releases = _initramfs_releases(images.initrds)
    release = _kernel_release(images.kernel) if releases else None
    if not releases or release is None or release in releases:
        return None
    return Proof(entry.id, entry.source.value, Verdict.FAILED,
                 f"the initramfs holds no modules for the kernel's release {release}",
                 (f"{images.kernel_name}: release {release}",
                  f"initramfs modules: {', '.join(f'lib/modules/{r}' for r in sorted(releases))}"))


def prove_entry(inventory: Inventory, entry: Entry, *, qemu: str | None,
                accel: AccelChoice = AccelChoice.AUTO, limits: VmLimits | None = None,
                cancel: threading.Event | None = None) -> tuple[Proof, bytes]:
    """The entry's proof and the console it printed (empty when no VM ran).

    Raises :class:`~bootwatch.prove.vm.ProofCancelled` when ``cancel`` is set while the VM runs
    (it is killed and reaped first): a cancelled proof has no verdict."""
    limits = limits or VmLimits()
    files = entry_files(inventory, entry) or ()  # before anything is read: what the verdict is about
    with contextlib.ExitStack() as stack:
        proof, console = _prove(inventory, entry, stack, qemu=qemu, accel=accel, limits=limits, cancel=cancel)
    return dataclasses.replace(proof, files=files), console


def _prove(inventory: Inventory, entry: Entry, stack: contextlib.ExitStack, *, qemu: str | None,
           accel: AccelChoice, limits: VmLimits, cancel: threading.Event | None) -> tuple[Proof, bytes]:
    images = _images(inventory, entry, stack)
    if isinstance(images, Proof):
        return images, b""
    early = _check_kernel(entry, images) or _check_initrds(entry, images) or _check_modules(entry, images)
    if early is not None:
        return early, b""
    if qemu is None:
        return _not_run(entry, NOT_INSTALLED), b""
    cmdline = proof_cmdline(entry.options)
    started = time.time()
    try:
        run = boot(images.kernel, images.initrds, cmdline, qemu=qemu, accel=accel, limits=limits, cancel=cancel)
    except (BootwatchError, OSError) as e:
        return _failed(entry, e.message if isinstance(e, BootwatchError) else describe_oserror(e)), b""
    verdict, reason, evidence = judge(run, limits)
    return Proof(entry.id, entry.source.value, verdict, reason, evidence, started, run.seconds, run.accel.value,
                 images.kernel_name, images.initrd_names, cmdline), run.console


def judge(run: VmRun, limits: VmLimits) -> tuple[Verdict, str, tuple[str, ...]]:
    watch: ConsoleWatch = run.watch
    if watch.passed:
        return Verdict.PASSED, f"{watch.reason()} ({run.ended})", watch.evidence()
    if watch.failed:
        return Verdict.FAILED, watch.reason(), watch.evidence()
    tail = tuple(printable(line) for line in run.console.decode("utf-8", "replace").replace("\r", "")
                 .splitlines()[-EVIDENCE_TAIL:])
    qemu_said = tuple(f"qemu: {printable(line)}" for line in run.stderr.splitlines()[-3:] if line.strip())
    if run.ended is Ended.TIMEOUT:
        reason = f"{watch.reason()} within {limits.timeout:g} s"
    elif run.ended is Ended.EXITED:
        status = "" if run.exit_status is None else f", qemu exit status {run.exit_status}"
        reason = f"{watch.reason()}: {run.ended}{status}"
    else:
        reason = f"{watch.reason()}: {run.ended}"
    return Verdict.FAILED, reason, tail + qemu_said


class ProofStore:
    """``<runtime>/proofs``: the last proof of each entry and its console log."""

    def __init__(self, runtime: Path) -> None:
        self.directory = Path(runtime) / PROOFS_DIR

    def check(self) -> None:
        """Make sure results can be kept (before any VM runs): the directory exists or is made,
        and only this user can write it."""
        os.close(open_private_directory(self.directory, create=True))

    def save(self, entry: Entry, proof: Proof, console: bytes) -> Proof:
        """Write the proof and its log; the proof as stored (with the log's path)."""
        name = proof_name(entry)
        fd = open_private_directory(self.directory, create=True)
        try:
            log = self.directory / f"{name}.log"
            if console:
                write_atomically(Path(log.name), console, mode=0o644, prefix=".proof-", durable=False,
                                 final_dir_fd=fd, temp_dir=self.directory, temp_dir_fd=fd)
            else:  # no VM ran: an older proof's log would pass for this one's
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(log.name, dir_fd=fd)
            stored = dataclasses.replace(proof, log=str(log) if console else None)
            data = json.dumps(stored.to_json(), indent=2).encode() + b"\n"
            write_atomically(Path(f"{name}.json"), data, mode=0o644, prefix=".proof-", durable=False,
                             final_dir_fd=fd, temp_dir=self.directory, temp_dir_fd=fd)
        finally:
            os.close(fd)
        return stored

    def result_path(self, entry: Entry) -> Path:
        return self.directory / f"{proof_name(entry)}.json"

    def load(self, entry: Entry) -> Proof | None:
        """The stored proof of ``entry``; None when there is none, or what is there cannot be
        read as one (a proof that cannot be read proves nothing)."""
        try:
            data = read_regular(self.result_path(entry), limit=_RESULT_LIMIT)
            proof = Proof.from_json(json.loads(data))
        except (BootwatchError, OSError, ValueError):
            return None
        if proof is None or proof.entry_id != entry.id or proof.source != entry.source.value:
            return None  # another entry's (a name of a long id is a hash)
        return proof
