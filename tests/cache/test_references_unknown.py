"""A missing source of entries is not "no entries".

The boot partition is a real tmpfs, bind-mounted on the boot directory and really unmounted (the
tmpfs stays mounted elsewhere, so its files survive for the remount, as a partition's would). The
commands and the daemon are real child processes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import subprocess_env
from daemonproc import DaemonProcess, write_config
from polling import wait_for

pytestmark = pytest.mark.slow

K, INITRD = "/vmlinuz-1.0", "/initramfs-1.0.img"


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=True, capture_output=True)


@pytest.fixture
def partition(boot_tree, needs_root) -> Iterator[Path]:
    """A tmpfs standing for the boot partition, bind-mounted on the (empty) boot directory."""
    part = boot_tree.root / "partition"
    part.mkdir()
    mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(part))
    try:
        shutil.move(str(boot_tree.boot / "loader"), str(part / "loader"))  # the entries live on the partition
        mount("--bind", str(part), str(boot_tree.boot))
        try:
            yield part
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                umount(boot_tree.boot)
    finally:
        umount(part)


def image_ids(tree) -> set:
    return set(tree.images_on_disk())


def test_clean_refuses_while_the_boot_partition_is_unmounted(boot_tree, partition) -> None:
    tree = boot_tree
    ids = tree.write_kernel("1.0")
    tree.write_entry("one", linux=K, initrd=[INITRD])
    tree.write_entry("two", linux=K)
    rc, out, err = tree.cli("scan")
    assert rc == 0, out + err
    tree.path(K).unlink()  # MISSING, still referenced: the cache holds its only copy
    index_before = tree.index_bytes()

    umount(tree.boot)  # the boot directory is now the empty mount point on the parent filesystem
    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(tree.entries)])
    assert "does not exist" in line and "nothing was cleaned" in line and "hint:" in err
    rc, out, err = tree.cli("clean", "--force")
    tree.assert_clean_error(rc, err, names=[str(tree.entries)])  # a source that cannot be read is never overruled
    rc, out, err = tree.cli("remove", INITRD)
    tree.assert_clean_error(rc, err, names=[str(tree.entries)])
    assert image_ids(tree) == set(ids.values()) and tree.index_bytes() == index_before

    # An entries directory on the empty mount point (an OS image may ship one): readable, empty,
    # and still not the entries: the boot directory is no longer a mount point.
    tree.entries.mkdir(parents=True)
    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(tree.entries)])
    assert "no longer a mount point" in line and "--force" in err
    rc, out, err = tree.cli("restore", K)
    assert rc == 1 and "mount" in err, out + err
    assert not tree.path(K).exists(), "restored onto the root filesystem's empty mount point"
    rc, out, err = tree.cli("scan", "--json")
    assert rc == 0 and '"references_unknown": "' in out, out + err
    assert image_ids(tree) == set(ids.values()) and tree.index_bytes() == index_before
    shutil.rmtree(tree.boot / "loader")

    mount("--bind", str(partition), str(tree.boot))
    rc, out, err = tree.cli("clean")
    assert rc == 0, out + err
    assert tree.cli("restore", K)[0] == 0
    assert tree.sha1_of(tree.path(K)) == ids[K]
    assert image_ids(tree) == set(ids.values())


def test_every_entry_vanishing_at_once_waits_for_clean_force(boot_tree) -> None:
    tree = boot_tree
    ids = {**tree.write_kernel("1.0"), **tree.write_kernel("2.0")}
    tree.write_entry("one", linux=K, initrd=[INITRD])
    tree.write_entry("two", linux="/vmlinuz-2.0", initrd=["/initramfs-2.0.img"])
    assert tree.cli("add", *ids)[0] == 0
    assert tree.cli("clean")[0] == 0  # the entries as last read completely: two files
    tree.remove_entry("one")
    tree.remove_entry("two")
    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(tree.entries)])
    assert "vanished at once" in line and "clean --force" in err
    assert set(tree.list_json()) == set(ids) and image_ids(tree) == set(ids.values())
    rc, out, err = tree.cli("clean", "--dry-run", "--force")
    assert rc == 0 and "would uncache" in out, out + err
    assert set(tree.list_json()) == set(ids)
    report = tree.cli_json("clean", "--force", "--json")
    assert sorted(report["uncached_paths"]) == sorted(ids)
    assert tree.cli("clean")[0] == 0, "the operator's confirmation is remembered"


def test_an_entry_that_cannot_be_read_makes_references_unknown(boot_tree) -> None:
    tree = boot_tree
    ids = {**tree.write_kernel("1.0"), "/vmlinuz-2.0": tree.write_file("/vmlinuz-2.0")}
    tree.write_entry("one", linux=K, initrd=[INITRD])
    two = tree.write_entry("two", linux="/vmlinuz-2.0")
    assert tree.cli("add", *ids)[0] == 0
    assert tree.cli("clean")[0] == 0
    # Restored while referenced: a restored copy the daemon would take away once unreferenced.
    tree.path("/vmlinuz-2.0").unlink()
    assert tree.cli("restore", "/vmlinuz-2.0")[0] == 0
    two.unlink()
    two.symlink_to(two.name)  # a symlink loop: ELOOP, a real read error of a listed entry
    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(two)])
    assert "cannot be read" in line
    rc, out, err = tree.cli("scan")
    assert tree.path("/vmlinuz-2.0").is_file(), "the restored copy was taken away while references are unknown"
    assert set(tree.list_json()) == set(ids) and image_ids(tree) == set(ids.values())
    # Readable entries still say what they reference: a removed kernel of entry one is restored.
    tree.path(K).unlink()
    rc, out, err = tree.cli("scan", "--json")
    assert rc == 0 and K in out, out + err
    assert tree.sha1_of(tree.path(K)) == ids[K]

    two.unlink()
    two.write_text("")  # replaced by the entries directory being a file: not a directory either
    shutil.rmtree(tree.entries)
    tree.entries.write_text("not a directory")
    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(tree.entries)])
    assert "not a directory" in line
    assert image_ids(tree) == set(ids.values())


def metric(path: Path, name: str) -> str:
    text = path.read_text() if path.exists() else ""
    match = re.search(rf"^bootwatch_{name} (\S+)$", text, re.M)
    return match.group(1) if match else ""


def test_the_daemon_says_it_once_and_cleans_nothing_while_unmounted(boot_tree, partition) -> None:
    tree = boot_tree
    ids = tree.write_kernel("1.0")
    tree.write_entry("one", linux=K, initrd=[INITRD])
    tree.write_entry("two", linux=K)
    prom = tree.root / "metrics" / "bootwatch.prom"
    prom.parent.mkdir()
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "150ms"}, jobs={"clean_interval": "1s"},
                          metrics={"textfile": str(prom)})
    assert tree.cli("scan")[0] == 0  # the history the daemon compares with (a first read only starts it)
    with DaemonProcess(config, tree.root) as daemon:
        daemon.wait_ready()
        tree.path(K).unlink()
        wait_for(lambda: tree.path(K).is_file(), what="the restore of a removed referenced kernel")

        def clean_runs() -> int:
            return int(float(metric(prom, 'job_runs_total{job="clean"}') or 0))

        wait_for(lambda: clean_runs() >= 1, what="a first run of the clean job")
        umount(tree.boot)
        runs = clean_runs()
        wait_for(lambda: clean_runs() >= runs + 2, what="two runs of the clean job while unmounted")
        assert image_ids(tree) == set(ids.values()), "the clean job deleted images while the partition was unmounted"
        assert set(tree.list_json()) == set(ids)
        status = daemon.wait_message("STATUS", timeout=30)
        while "references unknown" not in status["STATUS"]:
            status = daemon.wait_message("STATUS", timeout=30)
        assert str(tree.entries) in status["STATUS"]
        assert metric(prom, "references_unknown") == "1"
        mount("--bind", str(partition), str(tree.boot))
        wait_for(lambda: metric(prom, "references_unknown") == "0", what="the metric, known again")
        output = daemon.output()
    assert output.count("event=REFERENCES_UNKNOWN") == 1, output
    assert "Traceback" not in output, output
    assert image_ids(tree) == set(ids.values())


# ---------------------------------------------------------------- hostile cases

K2, K3 = "/vmlinuz-2.0", "/vmlinuz-3.0"


def three_kernels(tree) -> dict:
    ids = {}
    for v in ("1.0", "2.0", "3.0"):
        ids.update(tree.write_kernel(v))
        tree.write_entry(f"e{v}", linux=f"/vmlinuz-{v}")
    return ids


def test_clean_after_a_same_filesystem_bind_mount_of_boot_is_removed(boot_tree, needs_root) -> None:
    """/boot is a bind mount of a directory on the same filesystem (os.path.ismount says False);
    under it, one stale entry. Once the bind mount is gone, the boot directory is not the mount
    it was: references are unknown, and the only copy of a MISSING kernel stays."""
    tree = boot_tree
    real = tree.root / "realboot"
    shutil.move(str(tree.boot), str(real))
    tree.boot.mkdir()
    mount("--bind", str(real), str(tree.boot))
    try:
        three_kernels(tree)
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        tree.path(K3).unlink()  # MISSING, still referenced: the cache has its only copy
        k3_image = tree.read_index()["index"][K3][0]
    finally:
        umount(tree.boot)
    (tree.boot / "loader/entries").mkdir(parents=True)
    shutil.copy(real / "loader/entries/e1.0.conf", tree.boot / "loader/entries/e1.0.conf")
    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(tree.entries)])
    assert "no longer a mount point" in line
    assert k3_image in tree.images_on_disk(), f"clean deleted the only copy of {K3}: rc={rc} {out}{err}"


@pytest.mark.parametrize("hostile", ["intact", "fifo", "garbage", "missing"])
def test_clean_after_unmount_when_the_references_record_is_unreadable(boot_tree, needs_root, hostile) -> None:
    """/boot is a real mount (tmpfs), recorded as one. Then the record is unreadable (a FIFO,
    garbage, gone: the first run after an upgrade) and /boot is unmounted, leaving an entries
    directory with one stale entry: without a trustworthy record, the read is not trusted."""
    tree = boot_tree
    under = tree.root / "under"
    under.mkdir()
    mount("-t", "tmpfs", "tmpfs", str(tree.boot))
    try:
        tree.entries.mkdir(parents=True)
        three_kernels(tree)
        rc, out, err = tree.cli("scan")
        assert rc == 0, out + err
        tree.path(K3).unlink()
        k3_image = tree.read_index()["index"][K3][0]
        shutil.copy(tree.entries / "e1.0.conf", under / "e1.0.conf")
    finally:
        umount(tree.boot)
    shutil.copy(under / "e1.0.conf", tree.entries / "e1.0.conf")
    record = tree.cache / ".bootwatch-references"
    assert record.exists()
    if hostile != "intact":
        record.unlink()
    if hostile == "fifo":
        os.mkfifo(record)
    elif hostile == "garbage":
        record.write_bytes(b"\x00garbage")
    for _ in range(2):  # the untrusted read does not start a history the next clean would trust
        rc, out, err = tree.cli("clean")
        line = tree.assert_clean_error(rc, err, names=[str(tree.entries)])
        assert ("no longer a mount point" if hostile == "intact" else "no trustworthy record") in line
        assert k3_image in tree.images_on_disk(), f"clean deleted the only copy of {K3}: rc={rc} {out}{err}"
    if hostile == "fifo":
        assert stat.S_ISFIFO(os.lstat(record).st_mode)


def test_without_a_record_only_a_read_with_evidence_is_trusted(boot_tree) -> None:
    """No trustworthy record (the first run after an upgrade): a read is trusted, and recorded,
    when an entry names a boot file that is the very file bootwatch cached from there. Without
    that evidence (no entries, or entries naming no such file) references are unknown until
    clean --force."""
    tree = boot_tree
    ids = {**tree.write_kernel("1.0"), **tree.write_kernel("2.0")}
    tree.write_entry("one", linux=K, initrd=[INITRD])
    assert tree.cli("add", *ids)[0] == 0
    record = tree.cache / ".bootwatch-references"
    record.unlink()
    report = tree.cli_json("clean", "--json")
    assert sorted(report["uncached_paths"]) == ["/initramfs-2.0.img", "/vmlinuz-2.0"]
    assert record.exists()

    record.unlink()
    for path in (K, INITRD):  # files of those names, but not the ones bootwatch cached
        tree.write_file(path)
    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(tree.entries)])
    assert "no trustworthy record" in line and "--force" in err
    assert image_ids(tree) == {ids[K], ids[INITRD]} and not record.exists()

    tree.remove_entry("one")
    rc, out, err = tree.cli("clean")
    assert "no trustworthy record" in tree.assert_clean_error(rc, err)
    assert image_ids(tree) == {ids[K], ids[INITRD]} and not record.exists()
    report = tree.cli_json("clean", "--force", "--json")
    assert sorted(report["uncached_paths"]) == sorted([K, INITRD])
    assert record.exists() and tree.cli("clean")[0] == 0


def test_another_filesystem_at_the_boot_directory_is_not_the_boot_partition(boot_tree, needs_root) -> None:
    """The wrong partition at /boot (suspicion e): mounted too, with entries of its own that
    share names with the real ones. The record knows which filesystem it was."""
    tree = boot_tree
    real, wrong = tree.root / "real", tree.root / "wrong"
    for part in (real, wrong):
        part.mkdir()
        mount("-t", "tmpfs", "tmpfs", str(part))
    try:
        (real / "loader/entries").mkdir(parents=True)
        mount("--bind", str(real), str(tree.boot))
        three_kernels(tree)
        assert tree.cli("scan")[0] == 0
        tree.path(K3).unlink()
        k3_image = tree.read_index()["index"][K3][0]
        umount(tree.boot)
        shutil.copytree(real, wrong, dirs_exist_ok=True)
        (wrong / "loader/entries/e3.0.conf").unlink()
        mount("--bind", str(wrong), str(tree.boot))
        rc, out, err = tree.cli("clean")
        line = tree.assert_clean_error(rc, err, names=[str(tree.entries)])
        assert "not the mount it was" in line
        rc, out, err = tree.cli("scan")
        assert not tree.path(K3).exists(), "restored onto another filesystem"
        assert k3_image in tree.images_on_disk()
        umount(tree.boot)
        mount("--bind", str(real), str(tree.boot))  # the real one again: trusted again
        rc, out, err = tree.cli("clean")
        assert rc == 0, out + err
        assert k3_image in tree.images_on_disk()
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            umount(tree.boot)
        for part in (real, wrong):
            umount(part)


def test_an_entries_directory_on_another_filesystem_is_not_the_entries(boot_tree, needs_root) -> None:
    """The entries live on their own partition (an ESP) mounted at the entries directory; the
    boot directory stays. Once that partition is unmounted, a stale entry under its mount
    point is not the entries."""
    tree = boot_tree
    esp = tree.root / "esp"
    esp.mkdir()
    mount("-t", "tmpfs", "tmpfs", str(esp))
    try:
        mount("--bind", str(esp), str(tree.entries))
        try:
            three_kernels(tree)
            assert tree.cli("scan")[0] == 0
            tree.path(K3).unlink()
            k3_image = tree.read_index()["index"][K3][0]
        finally:
            umount(tree.entries)
        shutil.copy(esp / "e1.0.conf", tree.entries / "e1.0.conf")
        rc, out, err = tree.cli("clean")
        line = tree.assert_clean_error(rc, err, names=[str(tree.entries)])
        assert "entries directory is not on the filesystem it was" in line
        assert k3_image in tree.images_on_disk()
    finally:
        umount(esp)


def test_one_new_entry_after_a_sudden_drop_does_not_confirm_it(boot_tree) -> None:
    """Every recorded entry gone at once, and one new entry written where they were (kernel-install
    onto an unmounted partition's mount point): still a sudden drop, until clean --force."""
    tree = boot_tree
    for v in ("1.0", "2.0", "3.0"):
        tree.write_kernel(v)
        tree.write_entry(f"e{v}", linux=f"/vmlinuz-{v}")
    assert tree.cli("scan")[0] == 0
    tree.path(K3).unlink()  # MISSING: the cache holds its only copy
    k3 = tree.read_index()["index"][K3][0]
    for v in ("1.0", "2.0", "3.0"):
        tree.remove_entry(f"e{v}")
    rc, out, err = tree.cli("clean")
    assert "vanished at once" in tree.assert_clean_error(rc, err)
    tree.write_kernel("9.0")
    tree.write_entry("new", linux="/vmlinuz-9.0")
    assert tree.cli("scan")[0] == 0  # a pass under the lock does not record it either
    rc, out, err = tree.cli("clean")
    assert "vanished at once" in tree.assert_clean_error(rc, err)
    assert k3 in tree.images_on_disk(), f"clean deleted the only copy of {K3}: {out}{err}"
    # One at a time is a decision each time: one recorded entry stays while the others go.
    tree.write_entry("e3.0", linux=K3)
    assert tree.cli("clean")[0] == 0
    tree.remove_entry("e3.0")
    report = tree.cli_json("clean", "--json")
    assert K3 in report["uncached_paths"]


def test_an_oversized_entry_is_not_no_entry(boot_tree) -> None:
    """An entry file over bls.MAX_ENTRY_SIZE (a long comment block) is still an entry to a boot
    loader: references are unknown, naming the file."""
    tree = boot_tree
    for v in ("1.0", "3.0"):
        tree.write_kernel(v)
        tree.write_entry(f"e{v}", linux=f"/vmlinuz-{v}")
    assert tree.cli("scan")[0] == 0
    tree.path(K3).unlink()
    k3 = tree.read_index()["index"][K3][0]
    entry = tree.entries / "e3.0.conf"
    entry.write_text(entry.read_text() + ("# " + "x" * 1000 + "\n") * 1100)
    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(entry)])
    assert "larger than" in line
    assert k3 in tree.images_on_disk(), f"clean deleted the only copy of {K3}: {out}{err}"


def test_scan_trims_nothing_while_references_are_unknown(boot_tree) -> None:
    """While references are unknown nothing is trimmed: scan (as the daemon's batches) keeps
    every image listed; a clean with known references trims later."""
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("one", linux=K)
    tree.write_entry("two", linux=K)
    assert tree.cli("scan")[0] == 0
    dangling = tree.entries / "unreadable.conf"
    os.symlink("nowhere", dangling)  # references are unknown from now on
    before = set(tree.images_on_disk())
    for n in range(3):
        with open(tree.path(K), "ab") as f:
            f.write(b"x" * (n + 1))
        rc, out, err = tree.cli("scan")
        assert "references unknown" in err, err
        rc, out, err = tree.cli("add", K)
        assert rc == 0, out + err
    lost = before - set(tree.images_on_disk())
    assert not lost, f"images deleted while references were unknown: {sorted(lost)}"
    assert len(tree.read_index()["index"][K]) == 4, "the images stay listed"
    dangling.unlink()
    report = tree.cli_json("clean", "--json")
    assert len(report["trimmed_images"]) == 2 and len(tree.read_index()["index"][K]) == 2


def test_a_bind_mount_is_a_mount_root_and_a_filesystem_is_compared_by_what_survives_a_reboot(
        tmp_path: Path, needs_root) -> None:
    from bootwatch.cache.mountid import mount_identity, same_filesystem
    boot = tmp_path / "boot"
    boot.mkdir()
    plain = mount_identity(boot)
    mount("--bind", str(boot), str(boot))
    try:
        bound = mount_identity(boot)
        assert not os.path.ismount(boot) and bound["mount_root"] and not plain["mount_root"]
        # A bind mount of itself (a unit's ReadWritePaths=) is the same directory of the same
        # filesystem; a bind mount of another directory is not.
        assert bound["mount_id"] != plain["mount_id"] and same_filesystem(bound, plain)
        assert bound["root"] != plain["root"] and bound["fs_path"] == plain["fs_path"]
    finally:
        umount(boot)
    other = tmp_path / "other"
    other.mkdir()
    mount("--bind", str(other), str(boot))
    try:
        assert not same_filesystem(mount_identity(boot), plain)
    finally:
        umount(boot)
    ext4 = {"type": "ext4", "root": "/", "fs_path": "/", "dev": "8:1", "fsid": 7, "uuid": "u1", "mount_id": 30}
    rebooted = dict(ext4, dev="8:17", mount_id=41)  # another device number and mount id: the same one
    assert same_filesystem(ext4, rebooted)
    assert not same_filesystem(ext4, dict(rebooted, uuid="u2"))
    assert same_filesystem(dict(ext4, uuid=None), dict(rebooted, uuid=None))  # the fs id, from the UUID
    assert not same_filesystem(dict(ext4, uuid=None), dict(rebooted, uuid=None, fsid=8))
    assert not same_filesystem(dict(ext4, uuid=None, fsid=0), dict(rebooted, uuid=None, fsid=0))  # the device
    assert not same_filesystem(ext4, dict(ext4, fs_path="/boot"))


def _in_a_namespace_binding(directory: Path, tree, *args: str) -> tuple[int, str, str]:
    """``bootwatch ARGS`` in a mount namespace of its own where ``directory`` is a bind mount of
    itself, as a unit's ``ReadWritePaths=`` makes it for the daemon."""
    script = 'mount --bind "$1" "$1" && shift && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(directory),
            sys.executable, "-m", "bootwatch", "--boot-dir", str(tree.boot), "--cache-dir", str(tree.cache), *args]
    proc = subprocess.run(argv, env=subprocess_env(tree.config), capture_output=True, text=True, timeout=60,
                          cwd=str(tree.root))
    return proc.returncode, proc.stdout, proc.stderr


def test_a_boot_directory_bound_onto_itself_in_another_namespace_is_the_same_directory(
        boot_tree, needs_root) -> None:
    """/boot a directory of the root filesystem: the daemon (ReadWritePaths=/boot) sees it as a
    bind mount of itself, a hook's scan in the host's namespace as a directory of the / mount.
    Both read the same entries of the same filesystem: references stay known both ways."""
    tree = boot_tree
    three_kernels(tree)
    rc, out, err = tree.cli("scan")  # the host's namespace starts the record
    assert rc == 0, out + err
    tree.path("/vmlinuz-1.0").unlink()
    (tree.entries / "e1.0.conf").unlink()
    report = _in_a_namespace_binding(tree.boot, tree, "clean", "--json")
    assert report[0] == 0 and "Traceback" not in report[2], report
    assert "/vmlinuz-1.0" not in tree.read_index()["index"]
    rc, out, err = _in_a_namespace_binding(tree.boot, tree, "scan")  # now the bound namespace records
    assert rc == 0, out + err
    (tree.entries / "e2.0.conf").unlink()
    rc, out, err = tree.cli("clean")
    assert rc == 0, out + err
    assert "/vmlinuz-2.0" not in tree.read_index()["index"] and "/vmlinuz-3.0" in tree.read_index()["index"]
