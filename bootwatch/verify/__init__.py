"""Tell whether a boot image is sound, by what its content is (never by its name).

:func:`check_image` returns an :class:`ImageCheck`: the kind of image found and the outcome:

* ``ok``: the format was checked through to its end;
* ``failed``: the image is broken; the message names the problem and where it is;
* ``skipped``: the check cannot run here (a filesystem image without root or loop devices, or a
  kernel without the filesystem's driver);
* ``unchecked``: the format is recognised but bootwatch cannot check it (another architecture's
  kernel, a decompressor that is not installed), or the file is not a format bootwatch knows.

Only ``failed`` is a verification failure. Hashing the image against its id and its recorded
sha256 is the cache's job, not this module's.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Dict, List, Optional

from bootwatch.errors import NotRegularFileError
from bootwatch.safety import open_regular
from bootwatch.verify.fstree import FsCheckFailed, FsCheckSkipped, check_filesystem
from bootwatch.verify.initramfs import (
    CPIO_MAGICS,
    ArchiveError,
    ToolMissing,
    check_initramfs,
    compression_of,
    peek_decompressed,
)
from bootwatch.verify.kernel import KernelError, PeSection, bzimage_summary, is_bzimage, other_kernel, parse_pe
from bootwatch.verify.mount import detect_fstype_bytes

__all__ = ["KINDS", "OUTCOMES", "ImageCheck", "check_image"]

KINDS = ("kernel", "uki", "initramfs", "filesystem", "unknown")
OUTCOMES = ("ok", "failed", "skipped", "unchecked")
HEAD_SIZE = 0x9000  # enough for the iso9660 volume descriptor at 0x8001


@dataclass(frozen=True)
class ImageCheck:
    """The result of checking one image."""

    kind: str
    outcome: str
    message: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.outcome not in OUTCOMES:
            raise ValueError(f"bad ImageCheck({self.kind!r}, {self.outcome!r})")

    @property
    def failed(self) -> bool:
        return self.outcome == "failed"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "outcome": self.outcome, "message": self.message}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> ImageCheck:
        return cls(str(data["kind"]), str(data["outcome"]), str(data["message"]))


class _TimedOut(Exception):
    """The check ran out of time; str() is the message for the result."""


def _deadline(timeout: float | None) -> Callable[[], None] | None:
    if timeout is None:
        return None
    end = time.monotonic() + timeout

    def check() -> None:
        if time.monotonic() > end:
            raise _TimedOut(f"not checked: gave up after {timeout} seconds")
    return check


def _initramfs(f: BinaryIO, start: int, end: int,
               check_deadline: Callable[[], None] | None) -> ImageCheck:
    try:
        summary = check_initramfs(f, start, end, check_deadline)
    except ToolMissing as err:
        return ImageCheck("initramfs", "unchecked", f"not checked: {err.args[0]} not installed")
    except ArchiveError as err:
        return ImageCheck("initramfs", "failed", str(err))
    except _TimedOut as err:
        return ImageCheck("initramfs", "unchecked", str(err))
    return ImageCheck("initramfs", "ok", f"initramfs: {summary}")


def _pe(f: BinaryIO, sections: list[PeSection], prefix: str,
        check_deadline: Callable[[], None] | None) -> ImageCheck:
    names = [name for name, _, _ in sections]
    if ".linux" not in names:
        return ImageCheck("kernel", "ok", f"{prefix}PE/COFF image, {len(sections)} sections")
    message = f"UKI: PE/COFF image, sections {' '.join(names)}"
    for name, offset, size in sections:
        if name == ".linux":
            f.seek(offset)
            head = f.read(HEAD_SIZE)
            if is_bzimage(head):
                try:
                    bzimage_summary(head, size)
                except KernelError as err:
                    return ImageCheck("uki", "failed", f".linux section: {err}")
        if name == ".initrd" and size:
            inner = _initramfs(f, offset, offset + size, check_deadline)
            if inner.outcome != "ok":
                return ImageCheck("uki", inner.outcome, f".initrd section: {inner.message}")
            message += f"; .initrd: {inner.message.split(': ', 1)[1]}"
    return ImageCheck("uki", "ok", message)


def _by_content(path: Path, f: BinaryIO, size: int, runtime_dir: Path,
                check_deadline: Callable[[], None] | None) -> ImageCheck:
    head = f.read(HEAD_SIZE)
    try:
        if is_bzimage(head):
            summary = bzimage_summary(head, size)
            sections = parse_pe(f, head, size)
            if sections is not None:
                return _pe(f, sections, f"{summary}, EFI stub: ", check_deadline)
            return ImageCheck("kernel", "ok", summary)
        sections = parse_pe(f, head, size)
    except KernelError as err:
        return ImageCheck("kernel", "failed", str(err))
    if sections is not None:
        return _pe(f, sections, "", check_deadline)
    other = other_kernel(head)
    if other is not None:
        return ImageCheck("kernel", "unchecked", f"not checked: {other} (format recognised)")
    if head[:6] in CPIO_MAGICS:
        return _initramfs(f, 0, size, check_deadline)
    fstype = detect_fstype_bytes(head)
    if fstype is not None:
        try:
            summary = check_filesystem(path, fstype, runtime_dir, check_deadline)
        except FsCheckSkipped as err:
            return ImageCheck("filesystem", "skipped", str(err))
        except FsCheckFailed as err:
            return ImageCheck("filesystem", "failed", str(err))
        except _TimedOut as err:
            return ImageCheck("filesystem", "unchecked", str(err))
        return ImageCheck("filesystem", "ok", summary)
    method = compression_of(head)
    if method is not None:
        try:
            inner = peek_decompressed(f, 0, size, method)
        except ToolMissing as err:
            return ImageCheck("initramfs", "unchecked", f"not checked: {err.args[0]} not installed")
        except ArchiveError as err:
            return ImageCheck("initramfs", "failed", str(err))
        if inner.lstrip(b"\0")[:6] in CPIO_MAGICS:
            return _initramfs(f, 0, size, check_deadline)
        other = other_kernel(inner) or ("x86 bzImage" if is_bzimage(inner) else None)
        if other is not None:
            return ImageCheck("kernel", "unchecked",
                              f"not checked: {method}-compressed {other} (format recognised)")
        return ImageCheck("unknown", "unchecked", f"not checked: {method}-compressed data that "
                          "is neither a cpio archive nor a kernel")
    return ImageCheck("unknown", "unchecked", "not checked: not a kernel, initramfs or "
                      "filesystem image that bootwatch knows")


def check_image(path: Path, *, runtime_dir: Path, timeout: float | None = None) -> ImageCheck:
    """Find out what ``path`` holds and check it (see the module docstring for the outcomes).

    ``runtime_dir`` is where filesystem images are mounted (under ``runtime_dir/mnt``).
    ``timeout`` (seconds) bounds the walk of a filesystem or an initramfs; when it runs out the
    result is ``unchecked``, since slowness is not corruption.
    """
    try:
        with os.fdopen(open_regular(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _by_content(path, f, size, runtime_dir, _deadline(timeout))
    except _TimedOut as err:
        return ImageCheck("unknown", "unchecked", str(err))
    except NotRegularFileError as err:
        return ImageCheck("unknown", "failed", str(err))
    except OSError as err:
        return ImageCheck("unknown", "failed",
                          f"{path}: cannot read: {os.strerror(err.errno or 0).lower()}")
