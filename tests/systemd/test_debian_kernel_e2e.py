"""End to end on Debian: real ``dpkg -i`` and ``dpkg --purge`` of real kernel packages, with the
bootwatch daemon running as the shipped unit under a real systemd 252, in both Debian layouts.

Each layout gets its own container (see nspawn_disks and nspawn_debian): a root ext4 filesystem on
a loop device made from the cached Debian tree, with /boot either a second ext4 filesystem
(:attr:`BootLayout.SEPARATE_BOOT`) or a directory of root (:attr:`BootLayout.BOOT_ON_ROOT`).
Debian's own GRUB (grub2-common) and initramfs-tools are installed there; the two newest
``linux-image-*-cloud-amd64`` packages (cached on the host by tests/realboot) are installed in one
``dpkg -i`` with the daemon running. Their postinst hooks make each initramfs and run update-grub,
so grub.cfg is what the real grub-mkconfig writes for them. A grub-btrfs snapshot (its
``grub-btrfs.cfg``, included from grub.cfg by the stand-in for grub-btrfs's 41_snapshots-btrfs)
names the older kernel.

Then, in file order, each on the state the previous one leaves:

1. both kernels' images are cached (by bootwatch's postinst hook, or the daemon), known from grub.cfg
   alone;
2. ``dpkg --purge`` of the newer kernel: its postrm hooks delete the initramfs and rewrite grub.cfg
   without it. Nothing names it any more: once the transaction has ended the daemon decides so,
   restores nothing, and a later ``update-grub`` does not bring it back;
3. ``dpkg --purge`` of the older kernel, which the snapshot entry still names: after the
   transaction the daemon restores its kernel and initramfs, each with its ``.NAME.boomrestored``
   marker.

One thing differs from a real host, on purpose: Debian's zz-update-grub does nothing in a container
(``systemd-detect-virt --container``). dpkg runs in a mount namespace of its own in which
``systemd-detect-virt`` is ``/bin/false``, so the hooks run as on the real host this container
stands for. The daemon and everything else see the real one.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nspawn_container import Container, booted_container, sigterm_raises, wait_until
from nspawn_debian import DEBS, GRUB_BTRFS_CFG, GRUB_BTRFS_SCRIPT, INSTALL_SCRIPT, ROOTFS, STAGE, grub_btrfs_cfg
from nspawn_disks import BootLayout, container_disks
from nspawn_rootfs import cached_rootfs
from nspawn_testbed import UNIT, stage_bootwatch
from realboot.grub_mkconfig import Unavailable, kernel_debs

from bootwatch.log import Event

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("BOOTWATCH_TEST_CACHE", "/var/cache/bootwatch-tests"))
Record = dict[str, object]
# How long the daemon's references may stay unknown after the transaction before a wait for its
# decision gives up (a batch applied just then may be followed by one that reads them).
UNKNOWN_GRACE = 10.0


@dataclass(frozen=True)
class KernelPackage:
    package: str  # linux-image-6.1.0-57-cloud-amd64
    deb: str  # its file in the container
    version: str  # 6.1.0-57-cloud-amd64

    @property
    def images(self) -> tuple[str, str]:
        """The boot files an entry names, as paths relative to /boot (the cache's keys)."""
        return f"/vmlinuz-{self.version}", f"/initrd.img-{self.version}"


@dataclass(frozen=True)
class DebianHost:
    ct: Container
    layout: BootLayout
    removed: KernelPackage
    """Purged together with its entry."""
    snapshot: KernelPackage
    """Purged while a snapshot entry still names it."""
    not_cached: list[str] = field(default_factory=list)
    """Why the daemon did not cache the kernels, once a wait for it timed out: the later tests
    of the layout fail at once with it instead of waiting again."""


def _kernel(deb: Path) -> KernelPackage:
    package = deb.name.split("_")[0]
    return KernelPackage(package, f"{DEBS}/{deb.name}", package[len("linux-image-"):])


def _required(reason: str) -> None:
    if os.environ.get("BOOTWATCH_REQUIRE_NSPAWN") == "1":
        pytest.fail(f"Debian end-to-end tests required (BOOTWATCH_REQUIRE_NSPAWN=1), but {reason}")
    pytest.skip(reason)


def dpkg(ct: Container, *args: str) -> str:
    """Run dpkg as on a real host: in a mount namespace where systemd-detect-virt says "not a
    container", so that zz-update-grub runs update-grub (see the module docstring)."""
    script = 'mount --bind /bin/false /usr/bin/systemd-detect-virt && exec dpkg "$@"'
    proc = ct.run(["env", "DEBIAN_FRONTEND=noninteractive", "unshare", "--mount", "--propagation", "private",
                   "/bin/sh", "-ec", script, "dpkg", *args], timeout=600)
    return proc.stdout + proc.stderr


def dpkg_ended(ct: Container) -> int:
    """When the last dpkg run ended, in µs: dpkg writes its status file last, before it unlocks."""
    out = ct.run(["python3", "-c", "import os; print(os.stat('/var/lib/dpkg/status').st_mtime_ns // 1000)"])
    return int(out.stdout)


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the containers get from the host, bound read-only at STAGE."""
    stage = tmp_path_factory.mktemp("debian-stage")
    stage_bootwatch(REPO, stage)
    (stage / "install.sh").write_text(textwrap.dedent(INSTALL_SCRIPT))
    (stage / "41_snapshots-btrfs").write_text(GRUB_BTRFS_SCRIPT)
    shutil.copy(REPO / "contrib/kernel/zzz-bootwatch", stage / "zzz-bootwatch")
    return stage


@pytest.fixture(scope="module", params=list(BootLayout), ids=lambda layout: layout.value)
def debian_host(request: pytest.FixtureRequest, nspawn_prerequisites: None, stage: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianHost]:
    layout: BootLayout = request.param
    if shutil.which("mkfs.ext4") is None or shutil.which("losetup") is None:
        _required("mkfs.ext4 and losetup are needed (apt-get install e2fsprogs util-linux)")
    try:
        newer, older = kernel_debs(2)
    except Unavailable as e:
        _required(f"no cached Debian kernel packages: {e}")
    rootfs = cached_rootfs(ROOTFS, CACHE_DIR)
    work = tmp_path_factory.mktemp(f"debian-{layout.value}")
    removed, snapshot = _kernel(newer), _kernel(older)
    with sigterm_raises(), container_disks(rootfs, layout, work / "disks") as disks, booted_container(
            disks.mount_point, machine=f"bwdeb{os.getpid()}", log=work / "nspawn.log", volatile=False,
            namespace_setup=disks.namespace_setup,
            nspawn_args=[*disks.nspawn_args, f"--bind-ro={stage}:{STAGE}",
                         f"--bind-ro={newer.parent}:{DEBS}"]) as ct:
        try:
            # udev's links, which 10_linux looks for before it writes root=UUID=.
            ct.run(["mkdir", "-p", "/dev/disk/by-uuid"])
            for node, fs_uuid in disks.nodes.items():
                ct.run(["ln", "-s", node, f"/dev/disk/by-uuid/{fs_uuid}"])
            ct.run(["/bin/sh", "-eu", f"{STAGE}/install.sh", STAGE], timeout=300)
            ct.run(["systemctl", "start", UNIT], timeout=120)
            dpkg(ct, "-i", removed.deb, snapshot.deb)
            boot_prefix = "" if layout is BootLayout.SEPARATE_BOOT else "/boot"
            ct.run(["/bin/sh", "-ec", f"cat > {GRUB_BTRFS_CFG}"], input=grub_btrfs_cfg(
                snapshot.version, boot_uuid=disks.boot_uuid, root_uuid=disks.root_uuid, boot_prefix=boot_prefix))
            yield DebianHost(ct, layout, removed, snapshot)
        finally:
            # Kept for whoever debugs a failure: the boot's journal, grub.cfg, bootwatch's view.
            (work / "journal.txt").write_text(ct.run(
                ["journalctl", "-b", "--no-pager", "-o", "short-monotonic"], check=False).stdout)
            (work / "grub.cfg").write_text(ct.run(["cat", "/boot/grub/grub.cfg"], check=False).stdout)
            entries = ct.run(["/usr/local/bin/bootwatch", "entries", "--json"], check=False)
            (work / "entries.json").write_text(entries.stdout + entries.stderr)
            status = ct.run(["/bin/sh", "-c", f"systemctl status {UNIT} --no-pager; /usr/local/bin/bootwatch status"],
                            check=False)
            (work / "status.txt").write_text(status.stdout + status.stderr)


# (test, layout) -> what bootwatch on main still lacks for it to pass: xfail(strict=True), so that
# the mark goes as soon as the behaviour lands.
KNOWN_FAILURES: dict[tuple[str, BootLayout], str] = {}


@pytest.fixture(autouse=True)
def _known_failure(request: pytest.FixtureRequest) -> None:
    layout = request.node.callspec.params.get("debian_host")
    reason = KNOWN_FAILURES.get((request.node.originalname, layout))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def unit_journal(ct: Container, after: str | None = None) -> list[Record]:
    return ct.journal("-u", UNIT, *([f"--after-cursor={after}"] if after else []))


def events(records: list[Record], event: Event, path: str) -> list[Record]:
    """The daemon's records of *event* about boot *path* ("/vmlinuz-V", relative to /boot)."""
    return [r for r in records if r.get("_SYSTEMD_UNIT") == UNIT and r.get("_PID") != "1"
            and r.get("MESSAGE_ID") == event.message_id and str(r.get("BOOTWATCH_PATH", "")).endswith(path)]


def grub_cfg(ct: Container) -> str:
    return ct.run(["cat", "/boot/grub/grub.cfg"]).stdout


def sha1(ct: Container, path: str) -> str | None:
    out = ct.run(["sha1sum", path], check=False).stdout.split()
    return out[0] if out else None


def unknown_after(ct: Container, ended: int) -> str | None:
    """Why the daemon's boot entry references are unknown, if its status file (written after each
    batch) says so for a batch applied after *ended* (µs): then it decides nothing."""
    out = ct.run(["cat", "/run/bootwatch/status.json"], check=False).stdout
    try:
        status = json.loads(out)
    except ValueError:
        return None
    if status.get("references_unknown") and (status.get("last_batch") or 0) * 1e6 >= ended:
        return str(status["references_unknown"])
    return None


def wait_event(ct: Container, event: Event, path: str, what: str, *, after: str | None = None,
               references: str | None = None, ended: int | None = None) -> Record:
    """The first of the daemon's records of *event* about *path* (with BOOTWATCH_REFERENCES
    *references*, if given), once there is one. With *ended* (when dpkg's transaction ended), a
    daemon whose references stay unknown after it fails the wait at once, with the reason."""
    unknown_seen: list[float] = []

    def probe() -> list[Record]:
        found = [r for r in events(unit_journal(ct, after), event, path)
                 if references is None or r.get("BOOTWATCH_REFERENCES") == references]
        why = None if found or ended is None else unknown_after(ct, ended)
        if why is None:
            unknown_seen.clear()
        elif not unknown_seen:
            unknown_seen.append(time.monotonic())
        elif time.monotonic() - unknown_seen[0] > UNKNOWN_GRACE:
            raise AssertionError(f"no record of {what}: the daemon's boot entry references are unknown: {why}")
        return found
    return wait_until(what, probe, timeout=120)[0]


def cached_records(ct: Container, path: str) -> list[Record]:
    """IMAGE_CACHED records about *path* from anyone: the daemon, or the scan of bootwatch's
    postinst hook, which runs first (the daemon then finds the images cached)."""
    return [r for r in ct.journal(f"MESSAGE_ID={Event.IMAGE_CACHED.message_id}")
            if str(r.get("BOOTWATCH_PATH", "")).endswith(path)]


def wait_cached(host: DebianHost, kernel: KernelPackage) -> None:
    """Wait until *kernel*'s images are cached: bootwatch knows them from grub.cfg alone."""
    if host.not_cached:
        pytest.fail(f"the kernels were never cached: {host.not_cached[0]}")
    for path in kernel.images:
        try:
            wait_until(f"{path} (named by grub.cfg) to be cached", functools.partial(cached_records, host.ct, path),
                       timeout=120)
        except TimeoutError as e:
            host.not_cached.append(str(e))
            raise


def test_dpkg_install_is_seen_through_grub_cfg(debian_host: DebianHost) -> None:
    ct = debian_host.ct
    cfg = grub_cfg(ct)
    for kernel in (debian_host.removed, debian_host.snapshot):
        assert f"vmlinuz-{kernel.version}" in cfg, "update-grub (zz-update-grub) did not list the new kernel"
        wait_cached(debian_host, kernel)
    assert 'configfile "${prefix}/grub-btrfs.cfg"' in cfg


def test_kernel_purged_with_its_entry_is_not_restored(debian_host: DebianHost) -> None:
    ct, kernel = debian_host.ct, debian_host.removed
    wait_cached(debian_host, kernel)
    cursor = ct.journal_cursor()

    output = dpkg(ct, "--purge", kernel.package)
    ended = dpkg_ended(ct)

    # The postrm hooks ran: initramfs-tools deleted the initramfs, zz-update-grub rewrote grub.cfg.
    assert "update-initramfs: Deleting" in output and "Generating grub configuration file" in output, output
    assert kernel.version not in grub_cfg(ct)
    for path in kernel.images:
        decided = wait_event(ct, Event.IMAGE_MISSING, path, f"the daemon to find nothing naming {path}",
                             after=cursor, references="0", ended=ended)
        assert int(str(decided["__REALTIME_TIMESTAMP"])) >= ended, \
            f"{path}: decided while dpkg's transaction was still running"
    # update-grub again lists what /boot holds: nothing was restored for it to list.
    ct.run(["update-grub"], timeout=300)
    assert kernel.version not in grub_cfg(ct)
    # A fresh daemon's first reconcile (done before READY=1, so before restart returns) agrees.
    ct.run(["systemctl", "restart", UNIT], timeout=120)
    # Neither the daemon nor the hook's scan restored it at any time since the purge began.
    records = [r for r in ct.journal(f"--after-cursor={cursor}")
               if r.get("MESSAGE_ID") == Event.IMAGE_RESTORED.message_id]
    for path in kernel.images:
        assert not [r for r in records if str(r.get("BOOTWATCH_PATH", "")).endswith(path)], f"{path} was restored"
        assert sha1(ct, f"/boot{path}") is None, f"/boot{path} is back"
        assert ct.run(["test", "-e", f"/boot/.{path[1:]}.boomrestored"], check=False).returncode != 0
    assert kernel.version not in grub_cfg(ct)


def test_kernel_named_by_a_snapshot_entry_is_restored(debian_host: DebianHost) -> None:
    ct, kernel = debian_host.ct, debian_host.snapshot
    wait_cached(debian_host, kernel)
    before = {path: sha1(ct, f"/boot{path}") for path in kernel.images}
    cursor = ct.journal_cursor()

    output = dpkg(ct, "--purge", kernel.package)
    ended = dpkg_ended(ct)

    assert "update-initramfs: Deleting" in output and "Generating grub configuration file" in output, output
    # zz-update-grub's update-grub found neither file in /boot: grub.cfg's own entries are gone,
    # the snapshot's include stays. (Restored during the transaction, 10_linux would list it again.)
    cfg = grub_cfg(ct)
    assert f"vmlinuz-{kernel.version}" not in cfg and 'configfile "${prefix}/grub-btrfs.cfg"' in cfg
    for path in kernel.images:
        restored = wait_event(ct, Event.IMAGE_RESTORED, path, f"the daemon to restore {path}", after=cursor,
                              ended=ended)
        assert int(str(restored["__REALTIME_TIMESTAMP"])) >= ended, \
            f"{path}: restored while dpkg's transaction was still running"
        assert sha1(ct, f"/boot{path}") == before[path]
        marker = f"/boot/.{path[1:]}.boomrestored"
        assert ct.run(["find", marker, "-maxdepth", "0", "-type", "f", "-empty"]).stdout.strip() == marker
