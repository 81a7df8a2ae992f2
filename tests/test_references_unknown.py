"""A missing source of entries is not "no entries" (issue 11, item 1).

The boot partition is a real tmpfs, bind-mounted on the boot directory and really unmounted (the
tmpfs stays mounted elsewhere, so its files survive for the remount, as a partition's would). The
commands and the daemon are real child processes.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from daemonproc import DaemonProcess, write_config
from polling import wait_for

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
