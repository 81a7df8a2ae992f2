"""The files a boot needs besides its kernel and initramfs: a FIPS kernel's ``.hmac``, devicetrees.

**FIPS.** With ``fips=`` set to anything but ``0`` on the command line (the last ``fips=`` counts,
as dracut's ``getarg`` reads it), dracut's fips module (``modules.d/01fips/fips.sh``) checks the
kernel against its HMAC file before the root is switched to, and stops the boot when the file is
missing or does not match (``FIPS integrity test failed``). The file is on the boot partition,
beside the kernel and named after the kernel's file: ``.<kernel file name>.hmac``
(``/boot/.vmlinuz-6.1.0-1.fc40.x86_64.hmac``, as Fedora's and RHEL's kernel packages install
it). dracut finds the kernel by ``BOOT_IMAGE``, which GRUB passes; without it (systemd-boot, a
unified kernel image) it reads ``/boot/.vmlinuz-<release>.hmac``. So a GRUB entry needs the file
beside its kernel, a UKI the one named after its release; a BLS entry, read by GRUB's ``blscfg``
or by systemd-boot, needs one of the two, and where they differ (systemd-boot's
``/<machine-id>/<release>/linux`` layout) and only one is there, which the boot reads cannot be
told (UNKNOWN). ``rd.fips.skipkernel`` skips the check. The check is the initramfs's: only an
entry whose initramfs (an initrd it names, or a UKI's ``.initrd``) holds one
(:func:`bootwatch.health.facts.fips_check_name`: dracut's fips module, Ubuntu's
``fips-initramfs``) needs the file; ``fips=1`` with an initramfs that holds none (Debian's
mkinitramfs) only turns the kernel's FIPS mode on, and boots without it. Whether it holds one is
learnt from the facts' walk of the image; where it cannot be (the initramfs cannot be read or
walked, a UKI without ``.initrd``, an entry that names no initramfs), a missing HMAC file is
UNKNOWN, with the reason. A missing, empty or non-regular HMAC file,
or one that does not start with a SHA-512 HMAC (128 hex digits, what ``sha512hmac`` writes and
checks), is BROKEN. The HMAC itself is not computed: that would read the kernel at every check.

**Devicetrees.** Every ``devicetree`` (and BLS ``devicetree-overlay``) file must be a flattened
devicetree, whole (:mod:`bootwatch.verify.devicetree`, read through the image facts, so once per
content); a loader refuses anything else, and the kernel gets no hardware description. A
devicetree that is missing is the judge's finding (a file the entry names); one whose place
cannot be told is not looked at here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from bootwatch.entries.model import BootFile, Entry, EntrySource, FileRole
from bootwatch.errors import BootwatchError, describe_oserror
from bootwatch.health.facts import FactsMemo
from bootwatch.health.model import Check, EntryState, Finding
from bootwatch.safety import open_regular
from bootwatch.verify import ImageKind
from bootwatch.verify.devicetree import FDT_MAGIC

HMAC_READ = 4096  # an HMAC file is one line; more is read of no valid one
_SHA512_HMAC = re.compile(rb"[0-9a-fA-F]{128}")


def fips_mode(options: str) -> bool:
    """Whether dracut's fips module checks the kernel: ``fips=`` (the last) is set and not ``0``,
    and ``rd.fips.skipkernel`` is not given. A bare ``fips`` is dracut's own error, not FIPS."""
    value: str | None = None
    for word in options.split():
        if word == "rd.fips.skipkernel" or word.startswith("rd.fips.skipkernel="):
            return False
        if word.startswith("fips="):
            value = word[len("fips="):]
    return value not in (None, "", "0")


def hmac_candidates(entry: Entry, kernel: Path, release: str | None, boot: Path) -> list[Path]:
    """The HMAC files dracut may read for ``entry`` (see the module docstring); empty when that
    cannot be told (a UKI whose release is unknown)."""
    beside = kernel.parent / f".{kernel.name}.hmac"
    by_release = boot / f".vmlinuz-{release}.hmac" if release is not None else None
    if entry.source is EntrySource.GRUB:
        return [beside]
    if entry.source is EntrySource.UKI or entry.files_with_role(FileRole.UKI):
        return [by_release] if by_release is not None else []
    return list(dict.fromkeys(p for p in (beside, by_release) if p is not None))


def hmac_problem(path: Path) -> str | None:
    """What is wrong with the HMAC file at ``path``, or None when it looks like one."""
    try:
        with open(open_regular(path, follow_symlinks=True), "rb") as f:
            head = f.read(HMAC_READ)
    except FileNotFoundError:
        return "missing"
    except BootwatchError as e:  # not a regular file
        return e.message.removeprefix(f"{path}: ")
    except OSError as e:
        return f"cannot be read ({describe_oserror(e)})"
    if not head.strip():
        return "empty"
    words = head.split()
    if not _SHA512_HMAC.fullmatch(words[0]):
        return "holds no SHA-512 HMAC (128 hex digits, as sha512hmac writes)"
    return None


def fips_check_of(entry: Entry, kernel: Path, host_path: Callable[[BootFile], Path | None],
                  facts: FactsMemo | None) -> bool | str:
    """Whether the initramfs ``entry`` boots holds a FIPS integrity check (see the module
    docstring): True, False, or why that cannot be told."""
    if facts is None:
        return "its initramfs is not looked at"
    images = [(kernel, True)] if entry.files_with_role(FileRole.UKI) else []
    for file in entry.files_with_role(FileRole.INITRD):
        path = host_path(file)
        if path is None:
            return f"the place of its initramfs {file.path} cannot be told"
        images.append((path, False))
    if not images:
        return "it names no initramfs"
    unknown: str | None = None
    for path, uki in images:
        known = facts.of(path)
        if known is not None and known.fips_check:
            return True
        if unknown is not None or (known is not None and known.fips_check is not None):
            continue
        if known is None:
            unknown = f"{path} is missing"
        elif uki and known.check.ok:
            unknown = f"{path} has no .initrd"
        else:
            unknown = f"{path} could not be walked ({known.check.message})"
    return unknown if unknown is not None else False


def _fips_findings(entry: Entry, kernel: Path | None, release: str | None, boot: Path,
                   host_path: Callable[[BootFile], Path | None], facts: FactsMemo | None) -> list[Finding]:
    if kernel is None or not fips_mode(entry.options):
        return []
    candidates = hmac_candidates(entry, kernel, release, boot)
    if not candidates:
        return [Finding(EntryState.UNKNOWN, Check.COMPANION,
                        f"{kernel}: fips=1, and the kernel's release is unknown: which HMAC file dracut's FIPS "
                        "check reads cannot be told", str(kernel))]
    problems = {path: hmac_problem(path) for path in candidates}
    if all(problem is None for problem in problems.values()):
        return []
    if any(problem is None for problem in problems.values()):
        good = next(p for p, problem in problems.items() if problem is None)
        bad, problem = next((p, problem) for p, problem in problems.items() if problem is not None)
        return [Finding(EntryState.UNKNOWN, Check.COMPANION,
                        f"{bad}: {problem}, while {good} is there: with fips=1 dracut reads the one beside the "
                        "kernel when the loader passes BOOT_IMAGE (GRUB), else the other (systemd-boot)", str(bad))]
    path = candidates[0]
    checked = fips_check_of(entry, kernel, host_path, facts)
    if checked is False:
        return []
    if checked is not True:
        return [Finding(EntryState.UNKNOWN, Check.COMPANION,
                        f"{path}: {problems[path]}: with fips=1, an initramfs with a FIPS check (dracut's fips "
                        f"module) stops the boot without the kernel's HMAC file, and whether this entry's holds one "
                        f"cannot be told: {checked}", str(path))]
    return [Finding(EntryState.BROKEN, Check.COMPANION,
                    f"{path}: {problems[path]}: with fips=1, its initramfs's FIPS check stops the boot without the "
                    "kernel's HMAC file", str(path))]


def _devicetree_findings(entry: Entry, host_path: Callable[[BootFile], Path | None],
                         facts: FactsMemo | None) -> list[Finding]:
    findings = []
    for file in entry.files_with_role(FileRole.DEVICETREE):
        path = host_path(file)
        known = facts.of(path) if path is not None and facts is not None else None
        if known is None:
            continue  # missing (the judge's finding), or not placed
        check = known.check
        if check.kind is ImageKind.DEVICETREE and not check.failed:
            continue
        if check.kind is ImageKind.DEVICETREE:
            problem = check.message  # "devicetree truncated: ..."
        elif check.failed:
            problem = f"the devicetree {check.message.removeprefix(f'{path}: ')}"
        else:
            problem = f"is no flattened devicetree (no magic 0x{FDT_MAGIC:08x}), though the entry names it as one"
        findings.append(Finding(EntryState.BROKEN, Check.COMPANION,
                                f"{path}: {problem}; the loader cannot hand it to the kernel", str(path)))
    return findings


def companion_findings(entry: Entry, kernel: Path | None, *, release: str | None = None, boot: Path = Path("/boot"),
                       host_path: Callable[[BootFile], Path | None] = lambda f: None,
                       facts: FactsMemo | None = None) -> list[Finding]:
    """What is wrong with the companions of ``entry``, whose kernel is the host file ``kernel``
    (None when it has none, or its place cannot be told) of release ``release`` (read from the
    image; None: unknown). ``boot`` is the host's boot directory, ``host_path`` where each of the
    entry's files is on the host, ``facts`` what its images are (a devicetree is read once per
    content, as every image; without it devicetrees are not looked at)."""
    return (_fips_findings(entry, kernel, release, boot, host_path, facts)
            + _devicetree_findings(entry, host_path, facts))
