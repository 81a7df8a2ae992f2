"""The headroom rule (bootwatch/cache/headroom.py) on a real small /boot, with real kernels.

``/boot`` is a tmpfs of a fixed size mounted over the test's boot directory; it holds Debian's two
cloud kernels and their mkinitramfs images, each named by a BLS entry, and an unrelated filler
file that sets how much room is left. A kernel the package manager removed is then restored only
while the restore leaves room for one more kernel and initramfs of the largest sizes there:
``bootwatch restore``, ``bootwatch scan`` and the daemon refuse it otherwise, write nothing, and
say why; the health check marks the entry AT_RISK (and every entry of a /boot that already lacks
that room).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, write_config
from polling import wait_for
from realboot.grub_mkconfig import Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image

from bootwatch.cache.headroom import Headroom, allocated
from bootwatch.cache.operations import BootCache
from bootwatch.health.facts import FactsMemo
from bootwatch.health.judge import check_host
from bootwatch.health.model import Check, EntryHealth, EntryState

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs as /boot")]

BootTree = Any  # conftest.BootTree
MIB = 1 << 20
Pair = tuple[str, Path, Path]  # release, vmlinuz, initrd


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    """Two real kernels (Debian's cloud flavour, two versions) and mkinitramfs images of each."""
    try:
        debs = kernel_debs(2)
        found = []
        for deb in debs:
            kernel = extracted_kernel(deb)
            found.append((kernel.version, kernel.boot / f"vmlinuz-{kernel.version}", mkinitramfs_image(deb)))
        return found
    except Unavailable as e:
        pytest.skip(str(e))


@contextlib.contextmanager
def small_boot(tree: BootTree, size: str = "96m") -> Iterator[Path]:
    """A tmpfs of ``size`` as the tree's boot directory, with its (empty) entries directory."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(tree.boot)],
                   check=True, capture_output=True)
    try:
        tree.entries.mkdir(parents=True)
        yield tree.boot
    finally:
        if subprocess.run(["umount", str(tree.boot)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(tree.boot)], check=True)


def install(tree: BootTree, pairs: list[Pair]) -> None:
    for release, vmlinuz, initrd in pairs:
        shutil.copyfile(vmlinuz, tree.boot / f"vmlinuz-{release}")
        shutil.copyfile(initrd, tree.boot / f"initrd.img-{release}")
        tree.write_entry(release, linux=f"/vmlinuz-{release}", initrd=[f"/initrd.img-{release}"],
                         lines=[("options", "root=/dev/vda1 ro")])


def free(directory: Path) -> int:
    vfs = os.statvfs(directory)
    return vfs.f_bfree * vfs.f_frsize


def needed(pairs: list[Pair], block: int = 4096) -> int:
    """One more kernel and initramfs of the largest sizes (the rule, computed here from the files)."""
    return (max(allocated(v.stat().st_size, block) for _, v, _ in pairs)
            + max(allocated(i.stat().st_size, block) for _, _, i in pairs))


def leave_free(tree: BootTree, wanted: int) -> None:
    """Grow or shrink the filler (a file no entry names) so that ``wanted`` bytes stay free."""
    filler = tree.boot / "filler"
    size = filler.stat().st_size if filler.exists() else 0
    new_size = size + free(tree.boot) - wanted
    assert new_size >= 0, f"{tree.boot} has less than {wanted} bytes free without a filler"
    with open(filler, "ab") as f:
        f.truncate(new_size)
        if new_size > size:  # tmpfs allocates on write, not on truncate
            f.seek(size)
            f.write(b"\1" * (new_size - size))
    assert free(tree.boot) == wanted


def health(tree: BootTree) -> dict[str, EntryHealth]:
    cache = BootCache(tree.boot, tree.entries, tree.cache)
    hosts = check_host(cache, cache.read_inventory(), FactsMemo(tree.root / "run")).all()
    return {h.entry.id: h for h in hosts}


def headroom_findings(h: EntryHealth) -> list[str]:
    assert all(f.state is EntryState.AT_RISK for f in h.findings if f.check is Check.HEADROOM)
    return [f.message for f in h.findings if f.check is Check.HEADROOM]


def leftovers(boot: Path) -> list[str]:
    return sorted(p.name for p in boot.iterdir() if p.name.startswith(".bootwatch-restore."))


def test_a_restore_that_would_leave_no_room_for_one_more_kernel_is_refused(boot_tree: BootTree,
                                                                           pairs: list[Pair]) -> None:
    tree = boot_tree
    (old, vmlinuz, _), (new, _, _) = pairs
    with small_boot(tree):
        install(tree, pairs)
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        kernel = tree.boot / f"vmlinuz-{old}"
        kernel.unlink()  # as the package manager removes it, while the entry still names it
        size = allocated(vmlinuz.stat().st_size, 4096)
        leave_free(tree, size - MIB)  # it would not even fit
        rc, out, err = tree.cli("restore", f"/vmlinuz-{old}")
        line = tree.assert_clean_error(rc, err, names=[str(kernel)])
        assert f"it does not fit: {tree.boot} has {(size - MIB) / MIB:.1f} MiB free" in line, line
        assert not kernel.exists() and leftovers(tree.boot) == []

        leave_free(tree, needed(pairs) + size - MIB)  # restored, 1 MiB short of the headroom

        rc, out, err = tree.cli("restore", f"/vmlinuz-{old}")
        line = tree.assert_clean_error(rc, err, names=[str(kernel), str(tree.boot)])
        assert "not restoring it" in line and "one more kernel and initramfs" in line, line
        assert f"hint: free space on {tree.boot}" in err and f"bootwatch restore /vmlinuz-{old}" in err, err
        assert not kernel.exists() and leftovers(tree.boot) == []
        assert not (tree.boot / f".vmlinuz-{old}.boomrestored").exists()

        # scan's restore is refused the same way: a warning naming the file, exit code 1.
        rc, out, err = tree.cli("scan")
        assert rc == 1, out + err
        assert "RESTORE_REFUSED" in err and str(kernel) in err and "Traceback" not in err, err
        assert not kernel.exists() and leftovers(tree.boot) == []

        # 'bootwatch entries' shows the headroom finding on the entry that needs the file.
        rc, out, err = tree.cli("entries", "--json")
        shown = {e["id"]: e for e in json.loads(out)["entries"]}
        assert [f["state"] for f in shown[f"{old}.conf"]["findings"] if f["check"] == "headroom"] == ["AT_RISK"], out
        assert not [f for f in shown[f"{new}.conf"]["findings"] if f["check"] == "headroom"], out

        # The entry is AT_RISK for it; the other entry's /boot still has the room.
        verdicts = health(tree)
        [finding] = headroom_findings(verdicts[f"{old}.conf"])
        assert f"restoring /vmlinuz-{old}: that would leave" in finding and str(tree.boot) in finding, finding
        assert verdicts[f"{old}.conf"].state is not EntryState.BOOTABLE
        assert headroom_findings(verdicts[f"{new}.conf"]) == []

        # With 2 MiB more, the restore leaves 1 MiB more than the headroom: it is done.
        leave_free(tree, needed(pairs) + size + MIB)
        assert headroom_findings(health(tree)[f"{old}.conf"]) == []
        rc, out, err = tree.cli("restore", f"/vmlinuz-{old}")
        assert rc == 0, out + err
        assert tree.sha1_of(kernel) == tree.sha1_of(vmlinuz)
        assert free(tree.boot) == needed(pairs) + MIB

        # restore --image over a file counts that file as freed, and one that replaces a file
        # failing its format check (a write cut short) is done below the headroom (rule 2c): the
        # entry does not boot as it is. It still must fit, and it says the headroom is short.
        image_id = tree.sha1_of(vmlinuz)
        os.truncate(kernel, size - 2 * MIB)  # a write cut short
        leave_free(tree, MIB)
        rc, out, err = tree.cli("restore", "--image", image_id, f"/vmlinuz-{old}")
        line = tree.assert_clean_error(rc, err, names=[str(kernel)])
        assert "does not fit" in line and "--force" not in err, err
        assert kernel.stat().st_size == size - 2 * MIB and leftovers(tree.boot) == []
        leave_free(tree, needed(pairs) + MIB)
        rc, out, err = tree.cli("restore", "--image", image_id, f"/vmlinuz-{old}")
        assert rc == 0, out + err
        assert "fails its format check, although that would leave" in err, err
        assert tree.sha1_of(kernel) == image_id and leftovers(tree.boot) == []
        os.truncate(kernel, size - 2 * MIB)
        leave_free(tree, needed(pairs) + 3 * MIB)
        rc, out, err = tree.cli("restore", "--image", image_id, f"/vmlinuz-{old}")
        assert rc == 0, out + err
        assert tree.sha1_of(kernel) == image_id
        # Below the headroom, with room for the copy written beside the file: the same size again
        # is no growth.
        leave_free(tree, size + MIB)
        assert size + MIB < needed(pairs)
        rc, out, err = tree.cli("restore", "--image", image_id, f"/vmlinuz-{old}")
        assert rc == 0, out + err
        assert free(tree.boot) == size + MIB


def test_a_boot_partition_below_the_headroom_puts_every_entry_at_risk(boot_tree: BootTree,
                                                                      pairs: list[Pair]) -> None:
    """Nothing to restore: still, one more kernel would not fit."""
    tree = boot_tree
    with small_boot(tree):
        install(tree, pairs)
        leave_free(tree, needed(pairs) + MIB)
        assert all(headroom_findings(h) == [] for h in health(tree).values())
        leave_free(tree, needed(pairs) - MIB)
        verdicts = health(tree)
        assert len(verdicts) == 2
        for h in verdicts.values():
            [finding] = headroom_findings(h)
            assert finding.startswith(f"{tree.boot} has {(needed(pairs) - MIB) / MIB:.1f} MiB free"), finding


def test_the_daemon_refuses_the_restore_and_makes_it_once_there_is_room(boot_tree: BootTree,
                                                                         pairs: list[Pair]) -> None:
    tree = boot_tree
    (old, vmlinuz, _), _ = pairs
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "150ms"})
    with small_boot(tree):
        install(tree, pairs)
        kernel = tree.boot / f"vmlinuz-{old}"
        with DaemonProcess(config, tree.root) as daemon:
            daemon.wait_ready(timeout=60)
            leave_free(tree, needed(pairs) - MIB)
            kernel.unlink()  # its blocks are free again: a restore would leave 1 MiB short, as before
            wait_for(lambda: "event=RESTORE_REFUSED" in daemon.output(), what="the refusal logged")
            refusal = next(line for line in daemon.output().splitlines() if "event=RESTORE_REFUSED" in line)
            assert str(kernel) in refusal and "free space on" in refusal, refusal
            assert not kernel.exists() and leftovers(tree.boot) == []
            # Space is freed (an old kernel's files removed, as a package removal does with its
            # entry): the next pass over the entries restores the kernel.
            (tree.boot / "filler").unlink()
            tree.write_entry("touch", linux=f"/vmlinuz-{old}", initrd=[f"/initrd.img-{old}"])
            wait_for(kernel.exists, what="the kernel restored")
            assert tree.sha1_of(kernel) == tree.sha1_of(vmlinuz)
            assert daemon.output().count("event=RESTORE_REFUSED") == 1


def test_what_one_more_kernel_needs() -> None:
    """The largest kernel plus the largest initramfs, or the largest UKI when that is more."""
    room = Headroom(Path("/boot"), 1, free=100 * MIB, block=4096, kernel=14 * MIB, initramfs=60 * MIB, uki=50 * MIB)
    assert room.needed == 74 * MIB
    assert room.kept_after([26 * MIB]) and not room.kept_after([26 * MIB + 1])
    assert room.left_after([1]) == 100 * MIB - 4096  # whole blocks
    assert Headroom(Path("/efi"), 1, free=0, block=512, uki=80 * MIB).needed == 80 * MIB
    assert Headroom(Path("/efi"), 1, free=0, block=512).kept_after()  # no kernel there: nothing to keep room for


def test_force_restores_below_the_headroom_and_never_past_the_free_space(boot_tree: BootTree,
                                                                         pairs: list[Pair]) -> None:
    """Rule 2b: '--force' overrides the headroom, not rule 1; until then the entry is AT_RISK (the
    other entry boots) and its finding names the command that works."""
    tree = boot_tree
    (old, vmlinuz, _), (new, _, _) = pairs
    with small_boot(tree):
        install(tree, pairs)
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        kernel = tree.boot / f"vmlinuz-{old}"
        kernel.unlink()
        size = allocated(vmlinuz.stat().st_size, 4096)
        leave_free(tree, needed(pairs) + size - MIB)
        rc, out, err = tree.cli("restore", f"/vmlinuz-{old}")
        line = tree.assert_clean_error(rc, err, names=[str(kernel)])
        assert "not restoring it" in line and f"bootwatch restore --force /vmlinuz-{old}" in err, err
        assert not kernel.exists()

        verdicts = health(tree)
        [finding] = [f for f in verdicts[f"{old}.conf"].findings if f.check is Check.FILE]
        assert finding.state is EntryState.AT_RISK, finding
        assert "does not restore it" in finding.message, finding
        assert f"bootwatch restore --force /vmlinuz-{old}" in finding.message, finding
        assert f"bootwatch restore /vmlinuz-{old}" not in finding.message, finding

        rc, out, err = tree.cli("restore", "--force", f"/vmlinuz-{old}")
        assert rc == 0, out + err
        assert "the operator said --force" in err, err
        assert tree.sha1_of(kernel) == tree.sha1_of(vmlinuz) and leftovers(tree.boot) == []

        kernel.unlink()
        leave_free(tree, size - MIB)  # it does not fit: --force changes nothing
        rc, out, err = tree.cli("restore", "--force", f"/vmlinuz-{old}")
        line = tree.assert_clean_error(rc, err, names=[str(kernel)])
        assert "does not fit" in line and "--force" not in err, err
        assert not kernel.exists() and leftovers(tree.boot) == []
        verdicts = health(tree)
        [finding] = [f for f in verdicts[f"{old}.conf"].findings if f.check is Check.FILE]
        assert finding.state is EntryState.AT_RISK and "--force" not in finding.message, finding
        assert verdicts[f"{new}.conf"].state is not EntryState.BROKEN


def test_scan_restores_the_only_bootable_kernel_below_the_headroom(boot_tree: BootTree, pairs: list[Pair]) -> None:
    """Rule 2d: when no entry of the host boots without it, the restore is done (scan's and the
    daemon's automatic restore too), with a warning that the headroom is short."""
    tree = boot_tree
    (release, vmlinuz, _) = pairs[-1]
    with small_boot(tree):
        install(tree, pairs[-1:])
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        kernel = tree.boot / f"vmlinuz-{release}"
        kernel.unlink()
        size = allocated(vmlinuz.stat().st_size, 4096)
        leave_free(tree, needed(pairs[-1:]) + size - MIB)
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        assert tree.sha1_of(kernel) == tree.sha1_of(vmlinuz) and leftovers(tree.boot) == []
        assert "RESTORE_REFUSED" not in err and "no boot entry of the host has all of its files" in err, err
        # Restored, the entry boots, and its /boot lacks the headroom: AT_RISK for that.
        verdicts = health(tree)
        assert verdicts[f"{release}.conf"].state is EntryState.AT_RISK
        [finding] = headroom_findings(verdicts[f"{release}.conf"])
        assert finding.startswith(f"{tree.boot} has"), finding


def test_the_daemon_restores_the_only_bootable_kernel_below_the_headroom(boot_tree: BootTree,
                                                                         pairs: list[Pair]) -> None:
    tree = boot_tree
    (release, vmlinuz, _) = pairs[-1]
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "150ms"})
    with small_boot(tree):
        install(tree, pairs[-1:])
        kernel = tree.boot / f"vmlinuz-{release}"
        with DaemonProcess(config, tree.root) as daemon:
            daemon.wait_ready(timeout=60)
            leave_free(tree, needed(pairs[-1:]) - MIB)
            kernel.unlink()  # its blocks are free again: the restore leaves 1 MiB short of the headroom
            wait_for(lambda: "no boot entry of the host has all of its files" in daemon.output(),
                     what="the restore below the headroom logged")
            wait_for(kernel.exists, what="the kernel restored")
            assert tree.sha1_of(kernel) == tree.sha1_of(vmlinuz)
            assert "event=RESTORE_REFUSED" not in daemon.output()
