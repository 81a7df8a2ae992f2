"""Tell whether a boot image is sound, by what its content is (never by its name).

:func:`check_image` returns an :class:`ImageCheck`: the kind of image found and the outcome:

* ``ok``: the format was checked through to its end;
* ``failed``: the image is broken; the message names the problem and where it is;
* ``skipped``: the check cannot run here (a filesystem image without root or loop devices, or a
  kernel without the filesystem's driver);
* ``unchecked``: the format is recognised but bootwatch cannot check it (another architecture's
  kernel, a decompressor that is not installed), or the file is not a format bootwatch knows;
* ``incomplete``: the check ran out of its time bound before the end: it says nothing about the
  image yet, and is to be done again.

Only ``failed`` is a verification failure. Hashing the image against its id and its recorded
sha256 is the cache's job, not this module's.

A caller that wants more than the verdict from the same read (the releases whose modules an
initramfs holds) passes
``on_name``, called with the name of every entry of every initramfs walked: a plain or compressed
one, or a UKI's ``.initrd``; and :func:`check_open_image` checks a file it opened itself, so that
what it reads next (a kernel's release) comes from the same file.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from bootwatch.enums import TextEnum
from bootwatch.errors import NotRegularFileError
from bootwatch.safety import open_regular
from bootwatch.verify.devicetree import devicetree_problem, devicetree_summary, is_devicetree
from bootwatch.verify.fstree import FsCheckFailed, FsCheckSkipped, check_filesystem
from bootwatch.verify.initramfs import (
    CPIO_MAGICS,
    ArchiveError,
    NameSink,
    ToolMissing,
    check_initramfs,
    compression_of,
    decompressed_length,
    peek_decompressed,
)
from bootwatch.verify.kernel import (
    KernelError,
    PeSection,
    bzimage_payload,
    bzimage_summary,
    is_bzimage,
    other_kernel,
    parse_pe,
)
from bootwatch.verify.mount import detect_fstype_bytes

__all__ = ["ImageCheck", "ImageKind", "Outcome", "check_image", "check_open_image", "read_failure"]

HEAD_SIZE = 0x9000  # enough for the iso9660 volume descriptor at 0x8001


class ImageKind(TextEnum):
    """What an image holds, found by its content."""

    KERNEL = "kernel"
    UKI = "uki"
    INITRAMFS = "initramfs"
    DEVICETREE = "devicetree"
    FILESYSTEM = "filesystem"
    UNKNOWN = "unknown"


class Outcome(TextEnum):
    """How a check ended (see the module docstring)."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNCHECKED = "unchecked"
    INCOMPLETE = "incomplete"  # cut off by the time bound: slowness is not corruption


@dataclass(frozen=True)
class ImageCheck:
    """The result of checking one image. Made from text (as JSON has it), the kind and the
    outcome become their members; text that is neither is a ValueError."""

    kind: ImageKind
    outcome: Outcome
    message: str

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", ImageKind(self.kind))
            object.__setattr__(self, "outcome", Outcome(self.outcome))
        except ValueError:
            raise ValueError(f"bad ImageCheck({self.kind!r}, {self.outcome!r})") from None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAILED

    @property
    def incomplete(self) -> bool:
        return self.outcome is Outcome.INCOMPLETE

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind.value, "outcome": self.outcome.value, "message": self.message}


class _TimedOut(Exception):
    """The check ran out of time; str() is the message for the result."""


def _deadline(timeout: float | None, cancel: threading.Event | None = None) -> Callable[[], None] | None:
    if timeout is None and cancel is None:
        return None
    end = None if timeout is None else time.monotonic() + timeout

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise _TimedOut("not checked: cancelled")
        if end is not None and time.monotonic() > end:
            raise _TimedOut(f"not checked: gave up after {timeout} seconds")
    return check


def _initramfs(f: BinaryIO, start: int, end: int,
               check_deadline: Callable[[], None] | None, on_name: NameSink | None) -> ImageCheck:
    try:
        summary = check_initramfs(f, start, end, check_deadline, on_name)
    except ToolMissing as err:
        return ImageCheck(ImageKind.INITRAMFS, Outcome.UNCHECKED, f"not checked: {err.args[0]} not installed")
    except ArchiveError as err:
        return ImageCheck(ImageKind.INITRAMFS, Outcome.FAILED, str(err))
    except _TimedOut as err:
        return ImageCheck(ImageKind.INITRAMFS, Outcome.INCOMPLETE, str(err))
    return ImageCheck(ImageKind.INITRAMFS, Outcome.OK, f"initramfs: {summary}")


def _payload(f: BinaryIO, base: int, head: bytes, check_deadline: Callable[[], None] | None) -> str | None:
    """What is wrong with the compressed kernel of the bzImage at ``base`` (whose first bytes are
    ``head``), or None: it decompresses, to an ELF image of the size the build recorded.

    The setup header's sector counts catch a truncated file; a corrupt payload of the right size
    only shows when the boot's decompressor fails ("Decoding failed" on the console, and the
    machine halts), so it is decompressed here as the kernel would, and counted.
    """
    where = bzimage_payload(head)
    if where is None:
        return None  # boot protocol before 2.08: no payload fields to check by
    offset, length = where
    start, end = base + offset, base + offset + length
    f.seek(end - 4)
    recorded = int.from_bytes(f.read(4), "little")
    f.seek(start)
    method = compression_of(f.read(8))
    if method is None:
        return None  # an uncompressed payload (CONFIG_KERNEL_UNCOMPRESSED): the sizes were checked
    # The build appends the decompressed size to every stream but gzip (whose trailer holds it).
    stream_end = end if method == "gzip" else end - 4
    try:
        produced, first = decompressed_length(f, start, stream_end, method, f"compressed kernel ({method}) at offset "
                                              f"{start}", check_deadline)
    except ToolMissing:
        return None  # the header checks stand; the payload needs a tool this host lacks
    except ArchiveError as err:
        return f"corrupt kernel: {err}"
    if produced % (1 << 32) != recorded:
        return f"corrupt kernel: the compressed kernel gives {produced} bytes, its build recorded {recorded}"
    if not first.startswith(b"\x7fELF"):
        return "corrupt kernel: the compressed kernel does not decompress to an ELF image"
    return None


def _pe(f: BinaryIO, sections: list[PeSection], prefix: str,
        check_deadline: Callable[[], None] | None, on_name: NameSink | None) -> ImageCheck:
    names = [name for name, _, _ in sections]
    if ".linux" not in names:
        return ImageCheck(ImageKind.KERNEL, Outcome.OK, f"{prefix}PE/COFF image, {len(sections)} sections")
    message = f"UKI: PE/COFF image, sections {' '.join(names)}"
    for name, offset, size in sections:
        if name == ".linux":
            f.seek(offset)
            head = f.read(HEAD_SIZE)
            if is_bzimage(head):
                try:
                    bzimage_summary(head, size)
                except KernelError as err:
                    return ImageCheck(ImageKind.UKI, Outcome.FAILED, f".linux section: {err}")
                problem = _payload(f, offset, head, check_deadline)
                if problem is not None:
                    return ImageCheck(ImageKind.UKI, Outcome.FAILED, f".linux section: {problem}")
        if name == ".initrd" and size:
            inner = _initramfs(f, offset, offset + size, check_deadline, on_name)
            if not inner.ok:
                return ImageCheck(ImageKind.UKI, inner.outcome, f".initrd section: {inner.message}")
            message += f"; .initrd: {inner.message.split(': ', 1)[1]}"
    return ImageCheck(ImageKind.UKI, Outcome.OK, message)


def _devicetree(head: bytes, size: int) -> ImageCheck:
    problem = devicetree_problem(head, size)
    if problem is not None:
        return ImageCheck(ImageKind.DEVICETREE, Outcome.FAILED, problem)
    return ImageCheck(ImageKind.DEVICETREE, Outcome.OK, devicetree_summary(head))


def _zero_head(f: BinaryIO, size: int, check_deadline: Callable[[], None] | None,
               on_name: NameSink | None) -> ImageCheck:
    """An image whose first bytes are all zero: no boot format starts so, but the kernel skips
    zero bytes before an initramfs's first archive. Only zeros throughout is what a crash leaves of
    a file whose size was committed before its data, and no loader boots that."""
    pos = 0
    while pos < size:
        if check_deadline is not None:
            check_deadline()
        f.seek(pos)
        chunk = f.read(1 << 20)
        if not chunk:
            break
        if chunk.strip(b"\0"):
            return _initramfs(f, 0, size, check_deadline, on_name)
        pos += len(chunk)
    return ImageCheck(ImageKind.UNKNOWN, Outcome.FAILED, f"holds only zero bytes ({size} of them): what a crash "
                      "leaves of a file whose data was never written")


def _bzimage(f: BinaryIO, head: bytes, size: int, check_deadline: Callable[[], None] | None,
             on_name: NameSink | None) -> ImageCheck:
    """An x86 bzImage: its header against the size, its compressed kernel, its PE sections (EFI stub)."""
    summary = bzimage_summary(head, size)
    problem = _payload(f, 0, head, check_deadline)
    if problem is not None:
        return ImageCheck(ImageKind.KERNEL, Outcome.FAILED, problem)
    sections = parse_pe(f, head, size)
    if sections is not None:
        return _pe(f, sections, f"{summary}, EFI stub: ", check_deadline, on_name)
    return ImageCheck(ImageKind.KERNEL, Outcome.OK, summary)


def _by_content(path: Path, f: BinaryIO, size: int, runtime_dir: Path,
                check_deadline: Callable[[], None] | None, on_name: NameSink | None, mount: bool = True) -> ImageCheck:
    head = f.read(HEAD_SIZE)
    if size and not head.strip(b"\0"):
        return _zero_head(f, size, check_deadline, on_name)
    if is_devicetree(head):
        return _devicetree(head, size)
    try:
        if is_bzimage(head):
            return _bzimage(f, head, size, check_deadline, on_name)
        sections = parse_pe(f, head, size)
    except KernelError as err:
        return ImageCheck(ImageKind.KERNEL, Outcome.FAILED, str(err))
    if sections is not None:
        return _pe(f, sections, "", check_deadline, on_name)
    other = other_kernel(head)
    if other is not None:
        return ImageCheck(ImageKind.KERNEL, Outcome.UNCHECKED, f"not checked: {other} (format recognised)")
    if head[:6] in CPIO_MAGICS:
        return _initramfs(f, 0, size, check_deadline, on_name)
    fstype = detect_fstype_bytes(head)
    if fstype is not None:
        if not mount:
            return ImageCheck(ImageKind.FILESYSTEM, Outcome.SKIPPED, f"not checked: a {fstype} image, not mounted")
        return _filesystem(path, fstype, runtime_dir, check_deadline)
    method = compression_of(head)
    if method is not None:
        return _compressed(f, size, method, check_deadline, on_name)
    return ImageCheck(ImageKind.UNKNOWN, Outcome.UNCHECKED, "not checked: not a kernel, initramfs or "
                      "filesystem image that bootwatch knows")


def _filesystem(path: Path, fstype: str, runtime_dir: Path,
                check_deadline: Callable[[], None] | None) -> ImageCheck:
    """A filesystem image, mounted and walked (see :mod:`bootwatch.verify.fstree`)."""
    try:
        summary = check_filesystem(path, fstype, runtime_dir, check_deadline)
    except FsCheckSkipped as err:
        return ImageCheck(ImageKind.FILESYSTEM, Outcome.SKIPPED, str(err))
    except FsCheckFailed as err:
        return ImageCheck(ImageKind.FILESYSTEM, Outcome.FAILED, str(err))
    except _TimedOut as err:
        return ImageCheck(ImageKind.FILESYSTEM, Outcome.INCOMPLETE, str(err))
    return ImageCheck(ImageKind.FILESYSTEM, Outcome.OK, summary)


def _compressed(f: BinaryIO, size: int, method: str, check_deadline: Callable[[], None] | None,
                on_name: NameSink | None) -> ImageCheck:
    """Compressed data: an initramfs if it holds a cpio archive, a kernel recognised but not checked."""
    try:
        inner = peek_decompressed(f, 0, size, method)
    except ToolMissing as err:
        return ImageCheck(ImageKind.INITRAMFS, Outcome.UNCHECKED, f"not checked: {err.args[0]} not installed")
    except ArchiveError as err:
        return ImageCheck(ImageKind.INITRAMFS, Outcome.FAILED, str(err))
    if inner.lstrip(b"\0")[:6] in CPIO_MAGICS:
        return _initramfs(f, 0, size, check_deadline, on_name)
    other = other_kernel(inner) or ("x86 bzImage" if is_bzimage(inner) else None)
    if other is not None:
        return ImageCheck(ImageKind.KERNEL, Outcome.UNCHECKED,
                          f"not checked: {method}-compressed {other} (format recognised)")
    return ImageCheck(ImageKind.UNKNOWN, Outcome.UNCHECKED, f"not checked: {method}-compressed data that "
                      "is neither a cpio archive nor a kernel")


def check_image(path: Path, *, runtime_dir: Path, timeout: float | None = None,
                on_name: NameSink | None = None, mount: bool = True,
                cancel: threading.Event | None = None) -> ImageCheck:
    """Find out what ``path`` holds and check it (see the module docstring for the outcomes).

    ``runtime_dir`` is where filesystem images are mounted (under ``runtime_dir/mnt``); with
    ``mount`` False a filesystem image is recognised and ``skipped``, never mounted.
    ``timeout`` (seconds) bounds the walk of a filesystem or an initramfs; when it runs out the
    result is ``incomplete``, since slowness is not corruption; so it is once ``cancel`` is set
    (a daemon that stops). ``on_name``: see the module docstring.
    """
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            return check_open_image(path, f, runtime_dir=runtime_dir, timeout=timeout, on_name=on_name, mount=mount,
                                    cancel=cancel)
    except OSError as err:
        return read_failure(path, err)


def check_open_image(path: Path, f: BinaryIO, *, runtime_dir: Path, timeout: float | None = None,
                     on_name: NameSink | None = None, mount: bool = True,
                     cancel: threading.Event | None = None) -> ImageCheck:
    """:func:`check_image` of the regular file open at ``f`` (opened by the caller, as
    :func:`bootwatch.safety.open_regular` opens), which ``path`` names (a filesystem image is
    mounted from it). An :class:`OSError` reading it is raised (:func:`read_failure` says it)."""
    size = os.fstat(f.fileno()).st_size
    try:
        return _by_content(path, f, size, runtime_dir, _deadline(timeout, cancel), on_name, mount)
    except _TimedOut as err:
        return ImageCheck(ImageKind.UNKNOWN, Outcome.INCOMPLETE, str(err))


def read_failure(path: Path, err: OSError) -> ImageCheck:
    """The check of an image that cannot be opened or read: it is no regular file, or ``err``."""
    if isinstance(err, NotRegularFileError):
        return ImageCheck(ImageKind.UNKNOWN, Outcome.FAILED, str(err))
    return ImageCheck(ImageKind.UNKNOWN, Outcome.FAILED,
                      f"{path}: cannot read: {os.strerror(err.errno or 0).lower()}")
