"""The format check of a kernel or initramfs as it is cached: a broken image caught when it is written.

A package manager can leave a truncated initramfs in the boot directory and still exit 0 (a full
``/boot``, a compressor that ignores its write errors); the host fails at its next reboot. So a
pass that caches a new image of a kernel or initramfs checks its format at once
(:func:`bootwatch.verify.check_image`), on the cached image file: its content is the one its id
names, whatever is written to the boot file meanwhile. The result is recorded as the image's
verification (``Transaction.record_verification``), so ``list``, ``show``, the health check and
the trim rule (:meth:`bootwatch.cache.index.CacheIndex.trim_paths`: the newest image whose check
passed is never trimmed) all see it; the verify job checks it again in its turn.

Which images: the new image of a path that an entry names as a kernel, an initrd or a UKI
(:data:`WANTED_KINDS`), and with ``track = "all"`` any other new image whose content is a kernel,
a UKI or an initramfs. An image is broken when its check fails (a format it recognises, cut short
or corrupt), or when an entry names it as one of those and it is empty (a write that failed at
once) or an image of another kind (an initramfs where the kernel belongs). Content no check
recognises is not called broken here, as ``verify`` calls it unchecked, not failed: the entry's
health check (bootwatch.health.judge) judges it by its role. A filesystem image is never mounted
here: that needs loop devices, under the cache lock; the verify job does it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bootwatch.cache.index import CacheIndex
from bootwatch.cache.operations import BootCache, ImageVerification
from bootwatch.entries.inventory import Inventory
from bootwatch.entries.model import FileRole
from bootwatch.verify import ImageKind

# How long one image's check may take in a pass (a pass holds the cache lock). Cut off there, the
# image is recorded unchecked, neither ok nor failed, and the verify job takes it first.
WRITE_CHECK_TIMEOUT = 30.0

# What each role needs its file to hold, by content: the one rule of the write check and of the
# health check's format finding (bootwatch.health.judge).
WANTED_KINDS: dict[FileRole, frozenset[ImageKind]] = {
    FileRole.KERNEL: frozenset({ImageKind.KERNEL, ImageKind.UKI}),
    FileRole.UKI: frozenset({ImageKind.UKI}),
    FileRole.INITRD: frozenset({ImageKind.INITRAMFS}),
}
# With track = "all", an image no entry names is checked if its content is one of these.
BOOT_IMAGE_KINDS = frozenset({ImageKind.KERNEL, ImageKind.UKI, ImageKind.INITRAMFS})


@dataclass(frozen=True)
class BrokenImage:
    """A new image of ``path`` that failed its check when it was cached, and the newest older
    image of the path whose check passed (None: the cache holds none)."""

    path: str
    image_id: str
    problem: str
    good_image_id: str | None

    @property
    def restore_command(self) -> str | None:
        """The command that puts the previous good image back."""
        return None if self.good_image_id is None else f"bootwatch restore --image {self.good_image_id} {self.path}"

    def remedy(self) -> str:
        if self.restore_command is not None:
            return f"put the previous good image back with '{self.restore_command}'"
        return "no earlier image of it that passed its check is cached; reinstall the package that provides it"

    def to_json(self) -> dict[str, str | None]:
        return {"path": self.path, "image_id": self.image_id, "problem": self.problem,
                "good_image_id": self.good_image_id, "restore_command": self.restore_command}


def roles_by_key(inventory: Inventory | None) -> dict[str, frozenset[FileRole]]:
    """The roles of the files the entries name, by every cache key a file may have."""
    roles: dict[str, set[FileRole]] = {}
    if inventory is None:
        return {}
    for entry in inventory.entries:
        for file in entry.files:
            if file.role in WANTED_KINDS:
                for key in inventory.keys(file):
                    roles.setdefault(key, set()).add(file.role)
    return {key: frozenset(found) for key, found in roles.items()}


def check_written(cache: BootCache, index: CacheIndex, image_id: str,
                  roles: Iterable[FileRole]) -> ImageVerification | None:
    """The check of the cached image ``image_id`` for the roles the entries give its path; None
    when it is not one to check (no role, and its content is no kernel, UKI or initramfs)."""
    [check] = cache.content_checks(image_id, timeout=WRITE_CHECK_TIMEOUT, mount=False)
    paths = index.paths_of(image_id)
    wanted = frozenset().union(*(WANTED_KINDS[role] for role in roles))
    if not wanted and check.kind not in BOOT_IMAGE_KINDS:
        return None
    if check.incomplete:
        return ImageVerification(image_id, paths, False, check.message, [check], unchecked=True)
    if check.failed:
        return ImageVerification(image_id, paths, False, check.message, [check])
    empty = index.recorded_size(image_id) == 0
    if wanted and not empty and check.kind is ImageKind.UNKNOWN:
        return None  # no check recognises it: not known broken, nor passed (trimming keeps the last good one)
    if wanted and (empty or check.kind not in wanted | {ImageKind.UNKNOWN}):
        needed = " or ".join(sorted(kind.value for kind in wanted))
        article = "an" if needed[0] in "aeiou" else "a"
        what = "empty" if empty else f"{check.kind.value} data ({check.message})"
        return ImageVerification(image_id, paths, False, f"is {what}, not {article} {needed} image", [check])
    return ImageVerification(image_id, paths, True, "ok", [check])


def previous_good(index: CacheIndex, path: str, image_id: str) -> str | None:
    """The newest image of ``path`` older than ``image_id`` whose last check passed."""
    newest_first = index.images_newest_first(path)
    older = newest_first[newest_first.index(image_id) + 1:] if image_id in newest_first else newest_first
    return next((i for i in older if index.verified_ok(i)), None)
