"""What a boot image is, read once per content: its format check, kernel release and the releases
whose modules an initramfs holds, remembered by the file's stat signature.

**One read.** :meth:`FactsMemo.of` opens the image once (:func:`~bootwatch.safety.open_regular`,
symlinks followed) and learns everything from that descriptor: the format check
(:func:`~bootwatch.verify.check_open_image`), whose walk of an initramfs (plain, compressed, or a
UKI's ``.initrd``) reports every entry's name, from which the ``lib/modules/<release>``
directories are collected, and whether it holds a FIPS integrity check
(:func:`fips_check_name`); then a kernel's release from its setup header's ``kernel_version``,
a UKI's from its ``.uname`` section (:func:`~bootwatch.entries.uki.read_uki_at`; without one,
from its ``.linux`` section's setup header). A UKI's ``.initrd`` modules are its own.

**Remembered.** While a file's signature (device, inode, size, mtime, ctime:
:class:`~bootwatch.filestat.StatSignature`, taken from the descriptor before the read) is
the one its facts were read under, the remembered facts are the answer and the image is not
opened: a rewrite, a ``touch -r`` (ctime) and a rename over the name (inode) each read it again.
Not remembered: a check that ran out of time (``incomplete``), a file that cannot be read (one
this user may not read is ``skipped``: not checked, not broken), and
facts read from a file changed less than :data:`bootwatch.scanproof.RACY_MARGIN_NS` before the
read began (a write in the same clock tick would keep its timestamps: the next check reads it
again).

**Persisted** in ``<runtime>/image-facts.json`` (``[paths] runtime``, ``/run/bootwatch`` under
systemd) as soon as an image's facts are learnt (:meth:`FactsMemo.save`), for the daemon and the
command line alike: the daemon's health pass saves what it read, and ``bootwatch entries`` (root or
not: the file is mode 0644) starts from it, so it reads no image the daemon has checked; either
may save, the last writer's memo stands (a lost entry only costs a read). The file is replaced
atomically (:mod:`bootwatch.atomic`; not fsynced: it lives in ``/run``, and an unreadable one is
only a cold start). It is read as untrusted: a regular file (opened ``O_NONBLOCK``, never
following a symlink) of at most :data:`MAX_FACTS_SIZE` bytes, owned by root or the running user
and writable by nobody else (facts planted by another user could hide a broken image), of this
bootwatch version's format.
Anything else starts an empty memo, with one warning line (a file of another bootwatch version:
a debug line). Saving forgets the files that are gone or changed, and a file asked for that is
gone is forgotten at once; a memo that cannot be written (a read-only runtime directory,
``bootwatch entries`` run by a user) is just not saved.

JSON: ``{"format": 2, "bootwatch": VERSION, "images": [{"path": P, "signature": [dev, ino,
size, mtime_ns, ctime_ns], "check": {"kind", "outcome", "message"}, "release": R|null,
"module_releases": [R...]|null, "fips_check": true|false|null}]}``.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bootwatch import __version__, scanproof
from bootwatch.atomic import write_atomically
from bootwatch.entries.uki import Section, UkiFormatError, read_uki_at
from bootwatch.errors import BootwatchError, describe_oserror
from bootwatch.filestat import StatSignature
from bootwatch.safety import open_regular, read_bounded
from bootwatch.verify import ImageCheck, ImageKind, Outcome, check_open_image, read_failure
from bootwatch.verify.initramfs import modules_release
from bootwatch.verify.kernel import bzimage_release, is_bzimage

log = logging.getLogger("bootwatch.health.facts")

FACTS_NAME = "image-facts.json"
FORMAT = 2
MAX_FACTS_SIZE = 16 << 20
"""A few hundred bytes per image: far more than any host's boot and cache images need."""


_CHECK_FIELDS = ("kind", "outcome", "message")


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
    fips_check: bool | None = None
    """For an initramfs (or a UKI's ``.initrd``): whether it holds a FIPS integrity check of the
    kernel (:func:`fips_check_name`); None when it is no initramfs or could not be walked."""

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check.to_json(), "release": self.release,
                "module_releases": None if self.module_releases is None else sorted(self.module_releases),
                "fips_check": self.fips_check}

    @classmethod
    def from_json(cls, value: object) -> ImageFacts:
        """ValueError unless ``value`` is what :meth:`to_json` makes."""
        if not isinstance(value, dict):
            raise ValueError("not an object")
        check, release, modules = value.get("check"), value.get("release"), value.get("module_releases")
        fips = value.get("fips_check")
        if not isinstance(check, dict) or not all(isinstance(check.get(k), str) for k in _CHECK_FIELDS):
            raise ValueError("bad check")
        if release is not None and not isinstance(release, str):
            raise ValueError("bad release")
        if modules is not None and not (isinstance(modules, list) and all(isinstance(m, str) for m in modules)):
            raise ValueError("bad module_releases")
        if fips is not None and not isinstance(fips, bool):
            raise ValueError("bad fips_check")
        return cls(ImageCheck(check["kind"], check["outcome"], check["message"]), release,
                   None if modules is None else frozenset(modules), fips)


_Known = dict[str, tuple[StatSignature, ImageFacts]]


class FactsMemo:
    """Image facts by path, valid while the file's stat signature is unchanged (see the module
    docstring); the persisted memo is read at the first :meth:`of`."""

    def __init__(self, runtime_dir: Path, *, timeout: float | None = None,
                 cancel: threading.Event | None = None) -> None:
        """``timeout`` bounds each image's check (:func:`bootwatch.verify.check_image`), and
        ``cancel``, once set, cuts it short: either makes the check ``incomplete``, not remembered."""
        self.runtime_dir = Path(runtime_dir)
        self.timeout = timeout
        self.cancel = cancel
        self.incomplete: dict[Path, ImageCheck] = {}
        """The images whose last check was cut short (the bound, ``cancel``), with that check."""
        self._known: _Known | None = None
        self._changed = False

    @property
    def path(self) -> Path:
        return self.runtime_dir / FACTS_NAME

    def __enter__(self) -> FactsMemo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.save()

    def of(self, path: Path) -> ImageFacts | None:
        """The facts of the file at ``path`` (symlinks followed), None when there is no such file."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if self._memo().pop(str(path), None) is not None:
                self._changed = True
                self.save()
            return None
        except OSError as err:
            return ImageFacts(_unreadable(path, err))
        known = self._memo().get(str(path))
        if known is not None and known[0] == StatSignature.of(st):
            return known[1]
        return self._read(path)

    def _memo(self) -> _Known:
        if self._known is None:
            self._known = _load(self.path)
        return self._known

    def _read(self, path: Path) -> ImageFacts | None:
        started_ns = time.time_ns()
        try:
            f = os.fdopen(open_regular(path, follow_symlinks=True), "rb")
        except FileNotFoundError:
            return None
        except OSError as err:
            return ImageFacts(_unreadable(path, err))
        with f:
            st = os.fstat(f.fileno())
            try:
                facts = _facts(path, f, self.runtime_dir, self.timeout, self.cancel)
            except OSError as err:
                return ImageFacts(_unreadable(path, err))
        if facts.check.incomplete:
            self.incomplete[path] = facts.check
        else:
            self.incomplete.pop(path, None)
        if not facts.check.incomplete and scanproof.stable([st], started_ns):
            self._memo()[str(path)] = (StatSignature.of(st), facts)
            self._changed = True
            self.save()  # a few kilobytes in /run for each image read: no caller can forget it
        return facts

    def save(self) -> None:
        """Write the memo to :attr:`path`, less the files that are gone or changed; nothing when
        nothing changed. A memo that cannot be written is not saved (a debug line says why)."""
        if self._known is None:
            return
        kept = {p: known for p, known in self._known.items() if _unchanged(p, known[0])}
        if not self._changed and len(kept) == len(self._known):
            return
        self._known, self._changed = kept, False
        images = [{"path": p, "signature": sig.to_json(), **facts.to_json()}
                  for p, (sig, facts) in sorted(kept.items())]
        memo = {"format": FORMAT, "bootwatch": __version__, "images": images}
        data = json.dumps(memo, separators=(",", ":")).encode() + b"\n"
        try:
            self.runtime_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomically(self.path, data, mode=0o644, prefix=".image-facts.", durable=False)
        except (BootwatchError, OSError) as err:
            log.debug("%s: the image facts are not saved: %s", self.path, _reason(err))


_DRACUT_FIPS_HOOKS = ("fips-boot.sh", "fips-noboot.sh")


def fips_check_name(name: bytes) -> bool:
    """Whether the initramfs entry ``name`` (with or without a leading ``./`` or ``/``, under
    ``usr/`` or not) is a file of a FIPS integrity check of the kernel, one that stops the boot
    without the kernel's HMAC file (:mod:`bootwatch.health.companions`):

    * dracut's ``01fips`` module: its script ``/sbin/fips.sh`` (``inst_script``) and its hooks,
      which ``inst_hook`` names ``lib/dracut/hooks/<hook>/<NN>-<script>``: ``fips-boot.sh``
      (pre-mount; pre-trigger in older dracut), ``fips-noboot.sh`` (pre-pivot); newer dracut keeps
      its hooks under ``var/lib/dracut/hooks``;
    * initramfs-tools (Ubuntu's ``fips-initramfs``): a boot script whose name says ``fips``,
      ``scripts/<phase>/*fips*``.
    """
    parts = name.decode("utf-8", "replace").lstrip("./").split("/")
    if parts[:1] == ["usr"]:
        parts = parts[1:]
    if parts == ["sbin", "fips.sh"]:
        return True
    if parts[:1] == ["var"]:
        parts = parts[1:]
    if len(parts) == 5 and parts[:3] == ["lib", "dracut", "hooks"]:
        _, _, script = parts[4].partition("-")
        return script in _DRACUT_FIPS_HOOKS
    return len(parts) == 3 and parts[0] == "scripts" and "fips" in parts[2]


def _facts(path: Path, f: BinaryIO, runtime_dir: Path, timeout: float | None,
           cancel: threading.Event | None) -> ImageFacts:
    releases: set[str] = set()
    fips: list[bool] = []

    def on_name(name: bytes) -> None:
        release = modules_release(name)
        if release is not None:
            releases.add(release)
        elif not fips and fips_check_name(name):
            fips.append(True)

    check = check_open_image(path, f, runtime_dir=runtime_dir, timeout=timeout, on_name=on_name, cancel=cancel)
    if not check.ok:
        return ImageFacts(check)
    if check.kind is ImageKind.KERNEL:
        head = os.pread(f.fileno(), 0x1000, 0)
        return ImageFacts(check, release=bzimage_release(f, head) if is_bzimage(head) else None)
    if check.kind is ImageKind.INITRAMFS:
        return ImageFacts(check, module_releases=frozenset(releases), fips_check=bool(fips))
    if check.kind is ImageKind.UKI:
        try:
            uki = read_uki_at(f.fileno(), path)
        except UkiFormatError:
            return ImageFacts(check)
        return ImageFacts(check, release=uki.uname or _linux_release(f, uki.sections),
                          module_releases=frozenset(releases) if uki.has(".initrd") else None,
                          fips_check=bool(fips) if uki.has(".initrd") else None)
    return ImageFacts(check)


def _linux_release(f: BinaryIO, sections: tuple[Section, ...]) -> str | None:
    """The release in the setup header of a UKI's ``.linux`` section (a UKI without ``.uname``)."""
    linux = next((s for s in sections if s.name == ".linux"), None)
    if linux is None:
        return None
    head = os.pread(f.fileno(), 0x1000, linux.offset)
    return bzimage_release(f, head, base=linux.offset) if is_bzimage(head) else None


def _unreadable(path: Path, err: OSError) -> ImageCheck:
    """The check of an image that cannot be read: one this user may not read is not checked
    (``bootwatch entries`` run by a user, an image root keeps private), not broken."""
    if isinstance(err, PermissionError):
        return ImageCheck(ImageKind.UNKNOWN, Outcome.SKIPPED,
                          f"{path}: not checked: this user may not read it ({os.strerror(err.errno or 0).lower()})")
    return read_failure(path, err)


def _unchanged(path: str, signature: StatSignature) -> bool:
    try:
        return StatSignature.of(os.stat(path)) == signature
    except OSError:
        return False


def _reason(err: BaseException) -> str:
    if isinstance(err, BootwatchError):
        return err.message
    assert isinstance(err, OSError)
    return describe_oserror(err)


def _load(path: Path) -> _Known:
    """The persisted memo at ``path``; empty when there is none or it is not to be trusted."""
    try:
        fd = open_regular(path, max_size=MAX_FACTS_SIZE)
    except FileNotFoundError:
        return {}
    except (BootwatchError, OSError) as err:
        log.warning("%s: not used, image facts are read again: %s", path, _reason(err))
        return {}
    try:
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            log.warning("%s: not used, image facts are read again: owned by uid %d, mode %04o (it must be "
                        "root's or this user's, writable by no one else)", path, st.st_uid, stat.S_IMODE(st.st_mode))
            return {}
        data = read_bounded(fd, MAX_FACTS_SIZE, path)
    except (BootwatchError, OSError) as err:
        log.warning("%s: not used, image facts are read again: %s", path, _reason(err))
        return {}
    finally:
        os.close(fd)
    try:
        value = json.loads(data)
        if isinstance(value, dict) and (value.get("format"), value.get("bootwatch")) != (FORMAT, __version__):
            log.debug("%s: written by another bootwatch version; image facts are read again", path)
            return {}
        return _decode(value)
    except (ValueError, RecursionError):
        log.warning("%s: not used, image facts are read again: not the image facts bootwatch writes", path)
        return {}


def _decode(value: object) -> _Known:
    if not isinstance(value, dict) or not isinstance(value.get("images"), list):
        raise ValueError("no images")
    known: _Known = {}
    for image in value["images"]:
        path = image.get("path") if isinstance(image, dict) else None
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise ValueError("bad path")
        signature = StatSignature.from_json(image.get("signature"))
        if signature is None:
            raise ValueError("bad signature")
        known[path] = (signature, ImageFacts.from_json(image))
    return known
