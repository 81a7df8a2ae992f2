"""The health of every boot entry of the host (see :mod:`bootwatch.health.model` for the states).

For each entry, :class:`HostCheck` looks at:

* every file it names: there, or only in the cache (AT_RISK: restorable), or nowhere (BROKEN);
  the file a place cannot be told for is UNKNOWN. A file that is there must pass the format
  check its role needs (:func:`bootwatch.verify.check_image`, through :class:`FactsMemo`, so an
  unchanged file is not read again): a kernel, a unified kernel image, an initramfs whose whole
  cpio chain unpacks;
* its kernel's release, read from the image: the initramfs must hold that release's modules
  directory when it holds any modules at all, and the root it boots must hold them
  (:mod:`bootwatch.health.root`);
* its companions (:mod:`bootwatch.health.companions`) and its partition's headroom;
* its last boot proof (:mod:`bootwatch.prove`), when it is of the files the entry names now
  (their stat signatures unchanged) and failed: BROKEN. A passed proof adds nothing, and a proof
  of files since replaced says nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from bootwatch.cache.headroom import HostHeadroom
from bootwatch.cache.index import CacheIndex
from bootwatch.cache.operations import BootCache, Verification
from bootwatch.cache.writecheck import WANTED_KINDS
from bootwatch.entries.inventory import Inventory
from bootwatch.entries.model import BootFile, Entry, FileRole
from bootwatch.errors import BootwatchError
from bootwatch.health.companions import companion_findings
from bootwatch.health.facts import FactsMemo, ImageFacts
from bootwatch.health.model import Check, EntryHealth, EntryState, Finding
from bootwatch.health.root import RootCheck, resolve_on_filesystem
from bootwatch.prove.proof import ProofStore, Verdict, entry_files
from bootwatch.verify import ImageKind, Outcome


@dataclass(frozen=True)
class CachedCopy:
    image_id: str
    image: Path
    verification: Verification | None


class CacheView:
    """What the cache holds of each key, read from an index loaded without the lock."""

    def __init__(self, cache: BootCache, index: CacheIndex) -> None:
        self.cache = cache
        self.index = index

    def copy_of(self, key: str) -> CachedCopy | None:
        if key not in self.index:
            return None
        image_id = self.index.newest(key)
        if not self.cache.store.has_image(image_id):
            return None
        return CachedCopy(image_id, self.cache.store.image_path(image_id), Verification.recorded(self.index, image_id))


@dataclass(frozen=True)
class _FileFacts:
    """One file of an entry, as judged: its facts (None when neither it nor a cached copy can be read)."""

    file: BootFile
    path: Path | None
    facts: ImageFacts | None




@dataclass
class HostCheck:
    inventory: Inventory
    facts: FactsMemo
    cache: CacheView | None
    """None: the cache cannot be read, so whether a missing file can be restored is unknown."""
    root: RootCheck = field(default_factory=RootCheck)
    proofs: ProofStore | None = None
    """Where the boot proofs are kept; None: not looked at."""

    _headroom: HostHeadroom | None = field(default=None, init=False, repr=False)

    def all(self) -> tuple[EntryHealth, ...]:
        self._headroom = None  # each check of the host looks at its filesystems again
        return tuple(self.entry(e) for e in self.inventory.entries)

    def entry(self, entry: Entry) -> EntryHealth:
        findings: list[Finding] = []
        files = [self._file(f, findings) for f in entry.files]
        findings += self._release(entry, files)
        kernel = next((f.path for f in files if f.file.role in (FileRole.KERNEL, FileRole.UKI)), None)
        release = next((f.facts.release for f in files if f.file.role in (FileRole.KERNEL, FileRole.UKI)
                        and f.facts is not None), None)
        findings += companion_findings(entry, kernel, release=release, boot=self.inventory.roots.boot,
                                       host_path=lambda f: self.host_path(f) or self.root.locate(f), facts=self.facts)
        findings += self._proof(entry)
        findings += self._headroom_findings(entry)
        return EntryHealth.of(entry, findings)

    def _proof(self, entry: Entry) -> list[Finding]:
        proof = self.proofs.load(entry) if self.proofs is not None else None
        if proof is None or proof.verdict is not Verdict.FAILED or not proof.is_of(entry_files(self.inventory, entry)):
            return []
        try:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(proof.started))
        except (OverflowError, OSError, ValueError):  # a result written by hand: no date to show
            when = "an unknown time"
        log = f"; console log {proof.log}" if proof.log else ""
        return [Finding(EntryState.BROKEN, Check.PROOF, f"its boot proof of {when} failed: {proof.reason}{log}",
                        proof.log)]

    def _room(self) -> HostHeadroom:
        if self._headroom is None:
            view = self.cache
            self._headroom = HostHeadroom(self.inventory, self.key_path,
                                          lambda key: view.cache.cached_size(view.index, key) if view else None)
        return self._headroom

    def _headroom_findings(self, entry: Entry) -> list[Finding]:
        """AT_RISK where the entry's filesystem lacks room for one more kernel and initramfs, now
        or once its missing files were restored (:mod:`bootwatch.cache.headroom`)."""
        return [Finding(EntryState.AT_RISK, Check.HEADROOM, s.message, str(s.filesystem))
                for s in self._room().shortfalls(entry)]

    def host_path(self, file: BootFile) -> Path | None:
        """Where the file ``file`` of /boot or the ESP is on this host, as its boot loader finds it
        (:meth:`on_partition`); None when it is on neither."""
        key = self.inventory.key(file)
        return None if key is None else self.on_partition(self.key_path(key))

    def on_partition(self, path: Path) -> Path:
        """``path``, a file of /boot or the ESP, as the boot loader resolves it: on a filesystem
        of its own (a separate /boot, the ESP) within that filesystem alone
        (:func:`bootwatch.health.root.resolve_on_filesystem`: ``/boot/vmlinuz -> /boot/vmlinuz-6.1``
        names ``boot/vmlinuz-6.1`` on the /boot partition), on a /boot of the root filesystem as
        the host resolves it."""
        roots = self.inventory.roots
        if roots.esp is not None and roots.esp in path.parents:
            top: Path | None = roots.esp
        else:
            top = roots.boot if roots.boot_separate and roots.boot in path.parents else None
        if top is None:
            return path
        return resolve_on_filesystem(top, path) or path

    def key_path(self, key: str) -> Path:
        # A key is relative to the boot directory, also for an ESP file (/../efi/...).
        return Path(os.path.normpath(str(self.inventory.roots.boot) + key))

    def _file(self, file: BootFile, findings: list[Finding]) -> _FileFacts:
        key = self.inventory.key(file)
        path = self.key_path(key) if key is not None else self.root.locate(file)  # grub-btrfs: in a snapshot
        if path is None:
            findings.append(Finding(EntryState.UNKNOWN, Check.FILE,
                                    f"{file.path}: on no partition bootwatch can tell", file.path))
            return _FileFacts(file, None, None)
        real = self.on_partition(path) if key is not None else path
        facts = self.facts.of(real)
        if facts is None and real != path and os.path.islink(path):
            # Not restorable: on the host the link resolves, so there is nothing for a restore to put back.
            findings.append(Finding(EntryState.BROKEN, Check.FILE,
                                    f"{path}: a symlink that does not resolve on its partition (the boot loader "
                                    f"looks for {real}, which is not there)", str(path)))
            return _FileFacts(file, path, None)
        if facts is None:
            return self._missing(file, path, findings)
        findings += _format_findings(file, path, facts)
        return _FileFacts(file, path, facts)

    def _missing(self, file: BootFile, path: Path, findings: list[Finding]) -> _FileFacts:
        key = self.inventory.key(file)
        if key is None:  # not a file of /boot or the ESP: nothing caches it
            findings.append(Finding(EntryState.BROKEN, Check.FILE, f"{path}: missing", str(path)))
            return _FileFacts(file, path, None)
        if self.cache is None:
            findings.append(Finding(EntryState.BROKEN, Check.FILE,
                                    f"{path}: missing, and the cache cannot be read", str(path)))
            return _FileFacts(file, path, None)
        copy = self.cache.copy_of(key)
        if copy is None:
            findings.append(Finding(EntryState.BROKEN, Check.FILE, f"{path}: missing, and not in the cache", str(path)))
            return _FileFacts(file, path, None)
        if copy.verification is not None and copy.verification.failed:
            findings.append(Finding(EntryState.BROKEN, Check.FILE,
                                    f"{path}: missing, and its cached image {copy.image_id} failed verification: "
                                    f"{copy.verification.message}", str(path)))
            return _FileFacts(file, path, None)
        facts = self.facts.of(copy.image)
        findings.append(self._restorable(key, path, copy))
        if facts is not None:
            findings += _format_findings(file, path, facts)
        return _FileFacts(file, path, facts)

    def _restorable(self, key: str, path: Path, copy: CachedCopy) -> Finding:
        """A missing file the cache holds: AT_RISK while the headroom rule lets it be restored, or
        while another entry boots; BROKEN when the rule refuses it and no entry boots (which the
        rule's own exception for that case should not let last)."""
        held = f"{path}: missing; only the cache holds it (image {copy.image_id})"
        size = self.cache.cache.cached_size(self.cache.index, key) if self.cache is not None else None
        decision = self._room().restore_decision(key, path, size) if size is not None else None
        refusal = decision.refusal if decision is not None else None
        if refusal is None:
            return Finding(EntryState.AT_RISK, Check.FILE, f"{held}: bootwatch restore {key}", str(path))
        anyway = f", or run 'bootwatch restore --force {key}'" if refusal.fits else ""
        state = EntryState.AT_RISK if self._room().host_boots() else EntryState.BROKEN
        return Finding(state, Check.FILE, f"{held}, and bootwatch does not restore it: {refusal.message}; free "
                       f"space on {refusal.filesystem} (remove a kernel no entry needs){anyway}", str(path))

    def _release(self, entry: Entry, files: list[_FileFacts]) -> list[Finding]:
        """The kernel's release against its initramfs's modules and its root's."""
        kernels = [f for f in files if f.file.role in (FileRole.KERNEL, FileRole.UKI) and f.facts is not None]
        if not kernels or not kernels[0].facts or not kernels[0].facts.check.ok:
            return []
        kernel = kernels[0]
        assert kernel.facts is not None
        release = kernel.facts.release
        if release is None:
            if kernel.facts.check.kind is ImageKind.KERNEL and kernel.facts.check.outcome is Outcome.OK:
                return [Finding(EntryState.UNKNOWN, Check.KERNEL_VERSION,
                                f"{kernel.path}: the image states no kernel release", str(kernel.path))]
            return []
        findings: list[Finding] = []
        held: set[str] = set()
        for f in files:
            if f.facts is not None and f.facts.module_releases:
                held |= f.facts.module_releases
        if kernel.facts.module_releases:  # a UKI's .initrd
            held |= kernel.facts.module_releases
        if held and release not in held:
            findings.append(Finding(EntryState.BROKEN, Check.KERNEL_VERSION,
                                    f"the initramfs holds modules for {', '.join(sorted(held))}, "
                                    f"not for the kernel's release {release}"))
        root = self.root.finding(entry, release)
        if root is not None:
            findings.append(root)
        return findings


def _empty(path: Path) -> bool:
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return False


def _format_findings(file: BootFile, path: Path, facts: ImageFacts) -> list[Finding]:
    check = facts.check
    wanted = WANTED_KINDS.get(file.role)
    if wanted is None:
        return []  # a devicetree, an EFI program: being there is what is checked
    if check.failed:
        return [Finding(EntryState.BROKEN, Check.FORMAT, f"{path}: {check.message}", str(path))]
    if check.kind is not ImageKind.UNKNOWN and check.kind not in wanted:
        return [Finding(EntryState.BROKEN, Check.FORMAT,
                        f"{path}: is {check.kind.value} data, not a {file.role.value} image", str(path))]
    if file.role in (FileRole.KERNEL, FileRole.UKI) and check.kind is ImageKind.UNKNOWN and _empty(path):
        # An empty file is no image (check_image leaves it unchecked: not every cached file is
        # one), but a loader given it as the kernel has nothing to boot.
        return [Finding(EntryState.BROKEN, Check.FORMAT, f"{path}: is empty, not a {file.role.value} image",
                        str(path))]
    if file.role is FileRole.INITRD and check.kind is ImageKind.UNKNOWN and check.outcome is Outcome.UNCHECKED:
        return [Finding(EntryState.BROKEN, Check.FORMAT,
                        f"{path}: is no initramfs (no cpio archive, no compression the kernel knows)", str(path))]
    if not check.ok:
        return [Finding(EntryState.UNKNOWN, Check.FORMAT, f"{path}: {check.message}", str(path))]
    return []


def check_host(cache: BootCache, inventory: Inventory, facts: FactsMemo, root: RootCheck | None = None) -> HostCheck:
    """A :class:`HostCheck` of ``inventory`` with the cache's index read without its lock."""
    try:
        view: CacheView | None = CacheView(cache, cache.load_index())
    except (BootwatchError, OSError):
        view = None
    return HostCheck(inventory, facts, view, root or RootCheck(), proofs_of(cache))


def proofs_of(cache: BootCache) -> ProofStore | None:
    """Where the boot proofs of ``cache``'s host are kept (``bootwatch prove``'s and the daemon's):
    its runtime directory's; None without one."""
    return ProofStore(cache.runtime_dir) if cache.runtime_dir is not None else None
