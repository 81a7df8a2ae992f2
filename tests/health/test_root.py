"""health/root.py: the root an entry boots, resolved on this host's real mounts, and its lib/modules.

A real btrfs on a loop device, mounted as a running system mounts it (``subvol=@``), with snapper
style snapshots under ``@/.snapshots``; udev's ``/dev/disk/by-*`` links (which this machine has
no udev to make) are real symlinks to the loop device in a directory of the test's. The running
root is this machine's own, read from /proc/self/mountinfo.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imagefactory
import pytest
from realboot.grub_mkconfig import Kernel, Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image

from bootwatch import linux
from bootwatch.entries.grub import read_grub_config
from bootwatch.entries.inventory import InventorySettings, read_inventory
from bootwatch.entries.model import Entry, EntrySource
from bootwatch.health.facts import FactsMemo
from bootwatch.health.judge import HostCheck
from bootwatch.health.model import Check, EntryState
from bootwatch.health.root import RootCheck, RootOptions, subvolume_path, udev_encoded

SAMPLES = Path(__file__).resolve().parents[1] / "realboot" / "samples"
OLD = "6.1.0-56-cloud-amd64"
NEW = "6.1.0-57-cloud-amd64"
LABEL = "my root"

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mkfs.btrfs") is None
                                or not Path("/dev/loop-control").exists(),
                                reason="needs root, /dev/loop-control and mkfs.btrfs (btrfs-progs)")


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


def entry(options: str) -> Entry:
    return Entry(EntrySource.BLS, "test.conf", "test", None, (), options, Path("/boot/loader/entries/test.conf"))


@dataclass(frozen=True)
class Btrfs:
    device: str
    uuid: str
    mnt: Path
    """Where ``subvol=@`` is mounted (the test's stand-in for a running system's /)."""
    links: Path
    """The test's /dev/disk: by-uuid and by-label links to ``device``."""
    bait: Path
    """A directory outside the filesystem holding usr/lib/modules/NEW: where a symlink in a
    snapshot would lead if it were followed out of the root."""

    def check(self) -> RootCheck:
        return RootCheck(disk_links=self.links)


def modules(root: Path, release: str, parent: str = "usr/lib/modules") -> None:
    directory = root / parent / release / "kernel"
    directory.mkdir(parents=True)
    (directory / "dummy.ko").write_bytes(b"\x7fELF")
    (root / parent / release / "modules.dep").write_text("kernel/dummy.ko:\n")


def subvolume(path: Path) -> None:
    run("btrfs", "-q", "subvolume", "create", str(path))


@pytest.fixture(scope="module")
def btrfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Btrfs]:
    """The filesystem, top level first (built at ``top``), then ``@`` mounted at ``mnt``:

    * ``@``: modules for OLD and NEW, ``lib -> usr/lib`` (usrmerge); ``@home`` beside it;
    * ``@/.snapshots`` (a subvolume without lib/modules), and in it, each in ``N/snapshot``:
      2. nothing: the snapshot was deleted (``2`` is left, a plain directory);
      3. ``usr -> ../../../../bait/usr``: out of the root if it were followed from the host;
      4. ``usr/lib/modules/NEW`` empty, ``lib -> /usr/lib`` (an absolute usrmerge link);
      6. ``usr`` an absolute symlink to the bait's usr on the host;
      7. ``usr/lib/modules/NEW`` a regular file, ``usr/lib/modules/OLD`` a directory;
      12. a snapshot of ``@`` taken before NEW was installed (modules for OLD only);
      13. ``lib/modules/NEW`` only (no usrmerge).

    12 and 13 are the snapshots of the grub-btrfs sample (tests/realboot/samples/grub-btrfs).
    """
    work = tmp_path_factory.mktemp("btrfs")
    image, top, mnt, links, bait = (work / name for name in ("root.img", "top", "mnt", "disk", "bait"))
    for d in (top, mnt, links / "by-uuid", links / "by-label"):
        d.mkdir(parents=True)
    modules(bait, NEW)
    fs_uuid = str(uuid.uuid4())
    with open(image, "wb") as f:
        f.truncate(320 << 20)  # sparse; room for the snapshots' real kernels and initramfs images
    run("mkfs.btrfs", "-q", "-f", "-U", fs_uuid, "-L", LABEL, str(image))
    device = run("losetup", "--find", "--show", str(image))
    mounted: list[Path] = []
    try:
        run("mount", device, str(top))
        mounted.append(top)
        subvolume(top / "@")
        subvolume(top / "@home")
        modules(top / "@", OLD)
        (top / "@" / "lib").symlink_to("usr/lib")
        subvolume(top / "@" / ".snapshots")
        snapshots = top / "@" / ".snapshots"
        for n in (2, 3, 4, 6, 7, 12, 13):
            (snapshots / str(n)).mkdir()
        run("btrfs", "-q", "subvolume", "snapshot", str(top / "@"), str(snapshots / "12" / "snapshot"))
        modules(top / "@", NEW)
        for n in (3, 4, 6, 7, 13):
            subvolume(snapshots / str(n) / "snapshot")
        (snapshots / "3" / "snapshot" / "usr").symlink_to("../../../../bait/usr")
        (snapshots / "3" / "snapshot" / "lib").symlink_to("usr/lib")
        (snapshots / "4" / "snapshot" / "usr" / "lib" / "modules" / NEW).mkdir(parents=True)
        (snapshots / "4" / "snapshot" / "lib").symlink_to("/usr/lib")
        modules(snapshots / "13" / "snapshot", NEW, "lib/modules")
        (snapshots / "6" / "snapshot" / "usr").symlink_to(bait / "usr")
        modules(snapshots / "7" / "snapshot", OLD)
        (snapshots / "7" / "snapshot" / "usr" / "lib" / "modules" / NEW).write_bytes(b"")
        run("umount", str(top))
        mounted.pop()
        run("mount", "-o", "subvol=@", device, str(mnt))
        mounted.append(mnt)
        (links / "by-uuid" / fs_uuid).symlink_to(device)
        (links / "by-label" / udev_encoded(LABEL)).symlink_to(device)
        yield Btrfs(device, fs_uuid, mnt, links, bait)
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], check=False)
        subprocess.run(["losetup", "-d", device], check=False)


def test_the_root_subvolume_of_a_running_system_holds_both_kernels(btrfs: Btrfs) -> None:
    check = btrfs.check()
    for root in (f"UUID={btrfs.uuid}", btrfs.device, f'"LABEL={LABEL}"', f"UUID={btrfs.uuid.upper()}"):
        for release in (OLD, NEW):
            assert check.finding(entry(f"root={root} ro rootflags=subvol=@ quiet"), release) is None, (root, release)
    # subvol= as grub-btrfs and fstab spell it, with other mount options around it
    options = f"root=UUID={btrfs.uuid} rootflags=rw,noatime,compress=zstd:3,subvol=/@ quiet"
    assert check.finding(entry(options), NEW) is None


def test_a_snapshot_without_the_kernels_modules_is_broken(btrfs: Btrfs) -> None:
    """The rollback that does not boot: the snapshot predates the kernel the entry boots."""
    check = btrfs.check()
    options = f"root=UUID={btrfs.uuid} rw rootflags=subvol=@/.snapshots/12/snapshot"
    assert check.finding(entry(options), OLD) is None
    finding = check.finding(entry(options), NEW)
    assert finding is not None
    assert (finding.state, finding.check) == (EntryState.BROKEN, Check.ROOT_MODULES)
    here = str(btrfs.mnt / ".snapshots" / "12" / "snapshot")
    assert finding.message.startswith(here + ": ")
    assert f"lib/modules/{NEW}" in finding.message and f"modules for {OLD}" in finding.message
    assert finding.path == f"{here}/usr/lib/modules/{NEW}"


def test_the_snapshots_grub_btrfs_names(btrfs: Btrfs, tmp_path: Path) -> None:
    """The entries of the real grub-btrfs.cfg sample (its filesystem's UUID made this one's), read
    by bootwatch's GRUB reader: snapshot 13 holds NEW's modules, 12 (before the upgrade) does not."""
    sample = (SAMPLES / "grub-btrfs" / "grub-btrfs.cfg").read_text()
    sample_uuid = re.search(r"root=UUID=([0-9a-f-]+)", sample)
    assert sample_uuid is not None
    cfg = tmp_path / "grub-btrfs.cfg"
    cfg.write_text(sample.replace(sample_uuid.group(1), btrfs.uuid))
    entries = read_grub_config(cfg).entries
    assert len(entries) == 4
    check = btrfs.check()
    for e in entries:
        finding = check.finding(e, NEW)
        if "@/.snapshots/13/snapshot" in e.id:
            assert finding is None, finding
        else:
            assert "@/.snapshots/12/snapshot" in e.id
            assert finding is not None and finding.state is EntryState.BROKEN, finding
            assert finding.message.startswith(f"{btrfs.mnt}/.snapshots/12/snapshot: the root this entry boots "
                                              f"(root=UUID={btrfs.uuid} subvol=@/.snapshots/12/snapshot)")
        # 12 holds OLD's modules; 13 holds NEW's only
        assert (check.finding(e, OLD) is None) == ("@/.snapshots/12/snapshot" in e.id)


def test_a_deleted_snapshot_cannot_be_mounted(btrfs: Btrfs) -> None:
    check = btrfs.check()
    for subvol, shown in (("@/.snapshots/2/snapshot", "is missing"), ("@/.snapshots/9/snapshot", "is missing")):
        finding = check.finding(entry(f"root={btrfs.device} rootflags=subvol={subvol}"), NEW)
        assert finding is not None and finding.state is EntryState.BROKEN, subvol
        assert shown in finding.message and "cannot mount" in finding.message
    finding = check.finding(entry(f"root={btrfs.device} rootflags=subvol=@/.snapshots/12"), NEW)
    assert finding is not None and finding.state is EntryState.BROKEN
    assert "not a btrfs subvolume" in finding.message


def test_empty_or_odd_modules_directories_are_broken(btrfs: Btrfs) -> None:
    check = btrfs.check()
    finding = check.finding(entry(f"root={btrfs.device} rootflags=subvol=@/.snapshots/4/snapshot"), NEW)
    assert finding is not None and finding.state is EntryState.BROKEN
    assert f"usr/lib/modules/{NEW} is empty" in finding.message  # lib -> /usr/lib is the same directory
    finding = check.finding(entry(f"root={btrfs.device} rootflags=subvol=@/.snapshots/7/snapshot"), NEW)
    assert finding is not None and finding.state is EntryState.BROKEN
    assert "is a regular file, not a directory" in finding.message


def test_symlinks_in_the_root_never_lead_out_of_it(btrfs: Btrfs) -> None:
    """Snapshots 3 and 6 lead to the bait's modules if followed on the host (``..`` above the
    snapshot, an absolute link): inside the root they lead nowhere, so nothing is proven there."""
    assert (btrfs.bait / "usr" / "lib" / "modules" / NEW).is_dir()
    for n in (3, 6):
        snapshot = btrfs.mnt / ".snapshots" / str(n) / "snapshot"
        assert (snapshot / "usr" / "lib" / "modules" / NEW).is_dir(), "the host follows the link to the bait"
        finding = btrfs.check().finding(entry(f"root={btrfs.device} rootflags=subvol=@/.snapshots/{n}/snapshot"), NEW)
        assert finding is not None and finding.state is EntryState.UNKNOWN, n
        assert "no usr/lib/modules or lib/modules at all" in finding.message


def test_roots_that_cannot_be_told_are_unknown_and_say_why(btrfs: Btrfs) -> None:
    check = btrfs.check()
    cases = {
        f"root={btrfs.device} rootflags=subvolid=x": "subvolid=x is no subvolume id",
        f"root={btrfs.device} rootflags=subvol=@home": "no mount here shows the subvolume @home",
        f"root={btrfs.device} rootflags=subvol=@/../etc": "no path",
        f"root={btrfs.device} rootflags=subvol=@ rootflags=compress=zstd": "rootflags= 2 times",
        f"root={btrfs.device} rootflags=subvol=@/.snapshots": "no usr/lib/modules or lib/modules at all",
        f"root=UUID={uuid.uuid4()} rootflags=subvol=@": "no filesystem of this host has UUID=",
        "ro quiet": "name no root=",
        "root=/dev/nfs nfsroot=10.0.0.1:/srv": "a network root",
        "root=zfs:rpool/ROOT/debian": "not a local block device",
        f"root=PARTUUID={uuid.uuid4()}/PARTNROFF=1": "PARTNROFF=",
        "root=/dev/null": "no block device",
    }
    for options, why in cases.items():
        finding = check.finding(entry(options), NEW)
        assert finding is not None and finding.state is EntryState.UNKNOWN, options
        assert finding.check is Check.ROOT_MODULES and why in finding.message, (options, finding.message)


def test_the_default_subvolume_and_subvolid_are_read_from_the_filesystem(btrfs: Btrfs) -> None:
    """No subvol=: the kernel mounts the default subvolume (openSUSE's rollback sets it), or the
    one subvolid= names; bootwatch reads which that is from the filesystem, as btrfs-progs does."""
    def rootid(path: Path) -> int:
        return int(run("btrfs", "inspect-internal", "rootid", str(path)))

    snapshots = btrfs.mnt / ".snapshots"
    plain = entry(f"root={btrfs.device} ro")
    finding = btrfs.check().finding(plain, NEW)  # the default is the top level, mounted nowhere here
    assert finding is not None and finding.state is EntryState.UNKNOWN
    assert "default subvolume /" in finding.message and "no mount here shows the subvolume /" in finding.message
    try:
        run("btrfs", "subvolume", "set-default", str(rootid(snapshots / "12" / "snapshot")), str(btrfs.mnt))
        assert btrfs.check().finding(plain, OLD) is None
        finding = btrfs.check().finding(plain, NEW)
        assert finding is not None and finding.state is EntryState.BROKEN
        assert f"{snapshots}/12/snapshot: the root this entry boots (root={btrfs.device} default subvolume " \
               "@/.snapshots/12/snapshot)" in finding.message
        run("btrfs", "subvolume", "set-default", str(rootid(btrfs.mnt)), str(btrfs.mnt))
        assert btrfs.check().finding(plain, NEW) is None
    finally:
        run("btrfs", "subvolume", "set-default", "5", str(btrfs.mnt))
    by_id = entry(f"root={btrfs.device} rootflags=subvolid={rootid(snapshots / '13' / 'snapshot')}")
    assert btrfs.check().finding(by_id, NEW) is None
    finding = btrfs.check().finding(by_id, OLD)
    assert finding is not None and finding.state is EntryState.BROKEN and "@/.snapshots/13/snapshot" in finding.message
    finding = btrfs.check().finding(entry(f"root={btrfs.device} rootflags=subvolid=99999"), NEW)
    assert finding is not None and finding.state is EntryState.BROKEN
    assert "subvolid=99999: the filesystem has no such subvolume" in finding.message


def test_a_path_another_mount_covers_is_not_the_filesystems(btrfs: Btrfs) -> None:
    """A tmpfs on .snapshots holds a look-alike snapshot with NEW's modules: not the btrfs's."""
    covered = btrfs.mnt / ".snapshots"
    run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(covered))
    try:
        modules(covered / "12" / "snapshot", NEW)
        finding = btrfs.check().finding(entry(f"root={btrfs.device} rootflags=subvol=@/.snapshots/12/snapshot"), NEW)
        assert finding is not None and finding.state is EntryState.UNKNOWN
        assert "another mount covers it" in finding.message
    finally:
        run("umount", str(covered))


def test_a_filesystem_that_is_not_mounted_is_unknown(tmp_path: Path) -> None:
    image = tmp_path / "other.img"
    with open(image, "wb") as f:
        f.truncate(8 << 20)
    fs_uuid = str(uuid.uuid4())
    run("mkfs.ext4", "-q", "-F", "-U", fs_uuid, str(image))
    device = run("losetup", "--find", "--show", str(image))
    try:
        (tmp_path / "disk" / "by-uuid").mkdir(parents=True)
        (tmp_path / "disk" / "by-uuid" / fs_uuid).symlink_to(device)
        finding = RootCheck(disk_links=tmp_path / "disk").finding(entry(f"root=UUID={fs_uuid} ro"), NEW)
        assert finding is not None and finding.state is EntryState.UNKNOWN
        assert "is not mounted on this host" in finding.message
    finally:
        run("losetup", "-d", device)


def test_another_disks_uuid_is_unknown_on_the_hosts_own_links() -> None:
    """The production path: /dev/disk as udev made it (or not at all) and this host's mounts."""
    other = str(uuid.uuid4())
    finding = RootCheck().finding(entry(f"root=UUID={other} ro"), NEW)
    assert finding is not None and finding.state is EntryState.UNKNOWN
    assert f"UUID={other}" in finding.message and "/dev/disk/by-uuid/" in finding.message


def _expected_running_root(release: str) -> tuple[EntryState | None, str]:
    """What this machine's own / holds of lib/modules/<release>, read plainly (the test's view)."""
    for parent in ("/usr/lib/modules", "/lib/modules"):
        path = os.path.join(parent, release)
        if os.path.isdir(path) and os.listdir(path):
            return None, ""
    for parent in ("/usr/lib/modules", "/lib/modules"):
        path = os.path.join(parent, release)
        if os.path.isdir(path):
            return EntryState.BROKEN, "is empty"
        if os.path.lexists(path):
            return EntryState.BROKEN, "not a directory"
    if os.path.isdir("/usr/lib/modules") or os.path.isdir("/lib/modules"):
        return EntryState.BROKEN, "it holds modules for"
    return EntryState.UNKNOWN, "no usr/lib/modules or lib/modules at all"


def test_the_running_root_of_this_machine() -> None:
    """root= naming the device mounted at / (by its path and by MAJOR:MINOR), as this machine has
    it; a / on no block device (a container's overlay) cannot be named, and is UNKNOWN."""
    root = [m for m in linux.mountinfo() if m.mount_point == "/"][-1]
    flags = f" rootflags=subvol={root.root}" if root.fstype == "btrfs" else ""
    specs = [root.source] if root.source.startswith("/dev/") and os.path.exists(root.source) \
        and stat.S_ISBLK(os.stat(root.source).st_mode) else []
    if root.fstype != "btrfs" and os.path.exists(f"/sys/dev/block/{root.dev}"):
        specs.append(root.dev)  # a btrfs's is an anonymous device number
    for release in (os.uname().release, NEW):
        want, why = _expected_running_root(release)
        for spec in specs:
            finding = RootCheck().finding(entry(f"root={spec} ro{flags}"), release)
            if want is None:
                assert finding is None, (spec, finding)
            else:
                assert finding is not None and finding.state is want and why in finding.message, (spec, finding)
                assert finding.message.startswith("/: the root this entry boots"), finding.message
        finding = RootCheck().finding(entry(f"root={root.source or 'none'} ro{flags}"), release)
        if not specs:
            assert finding is not None and finding.state is EntryState.UNKNOWN
    anonymous = next(m for m in linux.mountinfo() if m.fstype in ("proc", "sysfs", "tmpfs"))
    finding = RootCheck().finding(entry(f"root={anonymous.dev} ro"), NEW)
    assert finding is not None and finding.state is EntryState.UNKNOWN and "no block device" in finding.message


def test_another_device_than_the_running_roots_is_not_taken_for_it(btrfs: Btrfs) -> None:
    """The loop btrfs's top level (subvol=/) is mounted nowhere: no mount shows it, / included."""
    finding = btrfs.check().finding(entry(f"root={btrfs.device} rootflags=subvol=/"), NEW)
    assert finding is not None and finding.state is EntryState.UNKNOWN
    assert "no mount here shows the subvolume /" in finding.message


def test_the_mounts_are_read_once_per_check(btrfs: Btrfs) -> None:
    """A RootCheck is made per host check: a mount made after it read the mounts is not seen, a
    new RootCheck sees it."""
    check = btrfs.check()
    options = f"root={btrfs.device} rootflags=subvol=@home"
    assert check.finding(entry(options), NEW) is not None  # reads the mounts
    home = btrfs.mnt.parent / "home"
    home.mkdir(exist_ok=True)
    run("mount", "-o", "subvol=@home", btrfs.device, str(home))
    try:
        assert "no mount here shows" in (check.finding(entry(options + " quiet"), NEW) or pytest.fail()).message
        fresh = btrfs.check().finding(entry(options), NEW)
        assert fresh is not None and "no usr/lib/modules or lib/modules at all" in fresh.message
    finally:
        run("umount", str(home))


def test_options_are_read_as_the_kernel_splits_them() -> None:
    assert RootOptions.of('quiet root="LABEL=my root" ro').root == "LABEL=my root"
    assert RootOptions.of('"root=LABEL=my root" ro').root == "LABEL=my root"
    assert RootOptions.of("root=/dev/sda1 root=/dev/sda2").root == "/dev/sda2"  # the last counts
    assert RootOptions.of("ro -- root=/dev/sda2").root is None  # init's arguments
    assert RootOptions.of("rootflags=subvol=@ rootflags=subvol=@").subvolume == ("@", None)
    assert RootOptions.of("rootflags=subvolid=5").subvolume == (None, "5")
    assert subvolume_path("@/.snapshots/12/snapshot") == subvolume_path("/@//.snapshots/./12/snapshot/")
    assert subvolume_path("@/../x") is None
    assert udev_encoded("my root/x\\y") == "my\\x20root\\x2fx\\x5cy"
    assert udev_encoded("ÄÖ-1.2:3") == "ÄÖ-1.2:3"


# ------------------------------------------------------------------ through the host check

@pytest.fixture(scope="module")
def real_kernels() -> list[tuple[Kernel, Path]]:
    """Two real Debian kernels, newest first, each with the initramfs mkinitramfs made for it."""
    try:
        debs = kernel_debs(2)
        return [(extracted_kernel(deb), mkinitramfs_image(deb)) for deb in debs]
    except Unavailable as e:
        pytest.skip(f"no real kernels and initramfs images: {e}")


@pytest.mark.slow
def test_a_root_without_the_kernels_modules_makes_the_entry_broken(
        btrfs: Btrfs, real_kernels: list[tuple[Kernel, Path]], tmp_path: Path) -> None:
    """The issue's failure variant, through health.judge.HostCheck: a real kernel and its real
    initramfs in /boot, booting a snapshot that holds only the older kernel's modules: BROKEN,
    and the same pair booting a root that holds its modules has no root finding."""
    (new, new_initrd), (old, _) = real_kernels
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    shutil.copyfile(new.boot / f"vmlinuz-{new.version}", boot / f"vmlinuz-{new.version}")
    shutil.copyfile(new_initrd, boot / f"initrd.img-{new.version}")
    snapshots = btrfs.mnt / ".snapshots"
    made = [snapshots / "20" / "snapshot", snapshots / "21" / "snapshot"]
    for subvol, release in zip(made, (old.version, new.version)):
        subvol.parent.mkdir()
        subvolume(subvol)
        modules(subvol, release)
        (subvol / "lib").symlink_to("usr/lib")
    try:
        for name, n in (("rollback", 20), ("current", 21)):
            (boot / "loader" / "entries" / f"{name}.conf").write_text(
                f"title {name}\nlinux /vmlinuz-{new.version}\ninitrd /initrd.img-{new.version}\n"
                f"options root=UUID={btrfs.uuid} ro rootflags=subvol=@/.snapshots/{n}/snapshot quiet\n")
        inventory = read_inventory(InventorySettings(boot=boot, sources=(EntrySource.BLS,)))
        (tmp_path / "run").mkdir()
        health = {h.entry.id: h for h in HostCheck(inventory, FactsMemo(tmp_path / "run"), None,
                                                   RootCheck(disk_links=btrfs.links)).all()}
        assert set(health) == {"rollback.conf", "current.conf"}
        rollback = health["rollback.conf"]
        assert rollback.state is EntryState.BROKEN, rollback.findings
        root = [f for f in rollback.findings if f.check is Check.ROOT_MODULES]
        assert len(root) == 1 and root[0].state is EntryState.BROKEN
        assert f"lib/modules/{new.version}" in root[0].message and f"modules for {old.version}" in root[0].message
        assert not [f for f in rollback.findings if f.check is not Check.ROOT_MODULES and f.state is EntryState.BROKEN]
        current = health["current.conf"]
        assert not [f for f in current.findings if f.check is Check.ROOT_MODULES], current.findings
        assert current.state is not EntryState.BROKEN, current.findings
    finally:
        for subvol in made:
            subprocess.run(["btrfs", "-q", "subvolume", "delete", str(subvol)], check=False)


@pytest.mark.slow
def test_grub_btrfs_snapshots_that_hold_their_own_kernels(btrfs: Btrfs, real_kernels: list[tuple[Kernel, Path]],
                                                          tmp_path: Path) -> None:
    """/boot a directory of the btrfs root (the sample made with "on-root"): each snapshot's entry
    boots the kernel in the snapshot itself, /@/.snapshots/N/snapshot/boot/vmlinuz-linux, which the
    host check finds through the mount of @ and reads for its release. Both snapshots hold the
    real newer kernel; 12 holds only the older modules (BROKEN), 13 holds the kernel's own."""
    (new, new_initrd), _ = real_kernels
    boot = tmp_path / "boot"
    shutil.copytree(SAMPLES / "grub-btrfs-on-root", boot / "grub")
    for cfg in (boot / "grub").iterdir():
        text = cfg.read_text()
        sample_uuid = re.search(r"root=UUID=([0-9a-f-]+)", text)
        assert sample_uuid is not None
        cfg.write_text(text.replace(sample_uuid.group(1), btrfs.uuid))
    ucode = imagefactory.cpio_newc(imagefactory.microcode_tree(tmp_path / "ucode"))
    placed: list[Path] = []
    for n in (12, 13):
        snapshot_boot = btrfs.mnt / ".snapshots" / str(n) / "snapshot" / "boot"
        snapshot_boot.mkdir()
        placed.append(snapshot_boot)
        shutil.copyfile(new.boot / f"vmlinuz-{new.version}", snapshot_boot / f"vmlinuz-{new.version}")
        (snapshot_boot / "vmlinuz-linux").symlink_to(f"vmlinuz-{new.version}")  # followed: a name beside it
        shutil.copyfile(new_initrd, snapshot_boot / "initramfs-linux.img")
        run("cp", "--reflink=always", str(snapshot_boot / "initramfs-linux.img"),
            str(snapshot_boot / "initramfs-linux-fallback.img"))
        (snapshot_boot / "intel-ucode.img").write_bytes(ucode)
    own = btrfs.mnt / ".snapshots" / "13" / "snapshot" / "lib" / "modules" / new.version
    added = not own.exists()
    if added:
        modules(own.parent.parent.parent, new.version, "lib/modules")
    try:
        inventory = read_inventory(InventorySettings(boot=boot, sources=(EntrySource.GRUB,)))
        (tmp_path / "run").mkdir()
        check = HostCheck(inventory, FactsMemo(tmp_path / "run"), None, RootCheck(disk_links=btrfs.links))
        snapshots = [e for e in inventory.entries if "@/.snapshots/" in e.id]
        assert len(snapshots) == 4
        for e in snapshots:
            health = check.entry(e)
            assert not [f for f in health.findings if f.check in (Check.FILE, Check.FORMAT, Check.KERNEL_VERSION)], \
                health.findings  # every file found in the snapshot, each a good image of its role
            root = [f for f in health.findings if f.check is Check.ROOT_MODULES]
            if "@/.snapshots/13/snapshot" in e.id:
                assert not root and health.state is not EntryState.BROKEN, health.findings
            else:
                assert len(root) == 1 and health.state is EntryState.BROKEN, health.findings
                assert f"lib/modules/{new.version}" in root[0].message
        # The snapshot's kernel goes: its entries are BROKEN for the missing file, not UNKNOWN.
        (placed[1] / f"vmlinuz-{new.version}").unlink()
        health = check.entry(next(e for e in snapshots if "@/.snapshots/13/snapshot" in e.id))
        missing = [f for f in health.findings if f.check is Check.FILE]
        assert health.state is EntryState.BROKEN and len(missing) == 1, health.findings
        assert missing[0].path == str(placed[1] / f"vmlinuz-{new.version}")
    finally:
        for directory in placed:
            shutil.rmtree(directory)
        if added:
            shutil.rmtree(own)


def test_a_btrfs_of_two_devices_is_found_from_either(tmp_path: Path) -> None:
    """root= names the member the filesystem was not mounted from: the kernel's list of the
    filesystem's members (/sys/fs/btrfs/<fsid>/devices) says it is the same filesystem."""
    images = [tmp_path / "a.img", tmp_path / "b.img"]
    for image in images:
        with open(image, "wb") as f:
            f.truncate(160 << 20)
    fs_uuid = str(uuid.uuid4())
    run("mkfs.btrfs", "-q", "-f", "-U", fs_uuid, "-d", "single", "-m", "raid1", *map(str, images))
    devices: list[str] = []
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        for image in images:
            devices.append(run("losetup", "--find", "--show", str(image)))
        run("mount", "-o", f"device={devices[1]}", devices[0], str(mnt))
        try:
            subvolume(mnt / "@")
            modules(mnt / "@", NEW)
            mounts = [m for m in linux.mountinfo() if m.mount_point == str(mnt)]
            assert mounts and mounts[-1].source == devices[0]
            (tmp_path / "disk" / "by-uuid").mkdir(parents=True)
            (tmp_path / "disk" / "by-uuid" / fs_uuid).symlink_to(devices[1])  # udev's link: the last member seen
            check = RootCheck(disk_links=tmp_path / "disk")
            for root in (devices[1], f"UUID={fs_uuid}", devices[0]):
                assert check.finding(entry(f"root={root} rootflags=subvol=@"), NEW) is None, root
            finding = check.finding(entry(f"root={devices[1]} rootflags=subvol=@"), OLD)
            assert finding is not None and finding.state is EntryState.BROKEN, finding
            assert finding.message.startswith(f"{mnt}/@: the root this entry boots (root={devices[1]} subvol=@)")
        finally:
            run("umount", str(mnt))
    finally:
        for device in devices:
            subprocess.run(["losetup", "-d", device], check=False)
