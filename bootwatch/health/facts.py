"""What a boot image is, read once per content: its format check, kernel release and the releases
whose modules an initramfs holds, remembered by the file's stat signature.

A re-check of an unchanged host reads no image again: :meth:`FactsMemo.of` stats the file, and
while its signature (device, inode, size, mtime, ctime: :class:`~bootwatch.cache.hashing.StatSignature`)
is the one the facts were read under, the remembered facts are the answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bootwatch.cache.hashing import StatSignature
from bootwatch.errors import BootwatchError
from bootwatch.safety import open_regular
from bootwatch.verify import ImageCheck, ImageKind, check_image
from bootwatch.verify.initramfs import ArchiveError, ToolMissing, check_initramfs, modules_release
from bootwatch.verify.kernel import bzimage_release, is_bzimage


@dataclass(frozen=True)
class ImageFacts:
    check: ImageCheck
    release: str | None = None
    """The kernel release the image itself states (x86 setup header's ``kernel_version``, a
    UKI's ``.uname``); None when it states none or is no kernel."""
    module_releases: frozenset[str] | None = None
    """For an initramfs (or a UKI's ``.initrd``): the releases whose ``lib/modules/<release>``
    (or ``usr/lib/modules/<release>``) it holds, empty when it holds no modules; None when it
    is no initramfs or could not be walked."""


class FactsMemo:
    """Image facts by path, valid while the file's stat signature is unchanged."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self._known: dict[str, tuple[StatSignature, ImageFacts]] = {}

    def of(self, path: Path) -> ImageFacts | None:
        """The facts of the file at ``path`` (symlinks followed), None when there is no such file."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError:
            return _read(path, self.runtime_dir)  # check_image says what is wrong with it
        signature = StatSignature.of(st)
        known = self._known.get(str(path))
        if known is not None and known[0] == signature:
            return known[1]
        facts = _read(path, self.runtime_dir)
        self._known[str(path)] = (signature, facts)
        return facts


def _read(path: Path, runtime_dir: Path) -> ImageFacts:
    check = check_image(path, runtime_dir=runtime_dir)
    if check.kind is ImageKind.KERNEL and check.ok:
        return ImageFacts(check, release=_kernel_release(path))
    if check.kind is ImageKind.INITRAMFS and check.ok:
        return ImageFacts(check, module_releases=_module_releases(path))
    return ImageFacts(check)


def _kernel_release(path: Path) -> str | None:
    try:
        with open(open_regular(path, follow_symlinks=True), "rb") as f:
            head = f.read(0x1000)
            return bzimage_release(f, head) if is_bzimage(head) else None
    except (BootwatchError, OSError):
        return None


def _module_releases(path: Path) -> frozenset[str] | None:
    releases: set[str] = set()

    def on_name(name: bytes) -> None:
        release = modules_release(name)
        if release is not None:
            releases.add(release)

    try:
        with open(open_regular(path, follow_symlinks=True), "rb") as f:
            check_initramfs(f, 0, os.fstat(f.fileno()).st_size, on_name=on_name)
    except (ArchiveError, ToolMissing, BootwatchError, OSError):
        return None
    return frozenset(releases)
