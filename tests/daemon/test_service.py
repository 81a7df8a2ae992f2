"""``bootwatch run`` as a real child process: inotify, the settle window, restores, sd_notify, signals."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProcess, run_with_config, write_config
from polling import wait_for

pytestmark = pytest.mark.slow

BootTree = Any  # conftest.BootTree (the boot_tree fixture); conftest is not imported by name


def index_of(tree: BootTree) -> dict:
    try:
        return json.loads(tree.index_file.read_text())
    except (OSError, ValueError):
        return {"index": {}, "paths": {}, "images": {}}


def cached_paths(tree: BootTree) -> dict:
    return index_of(tree)["index"]


@pytest.fixture
def daemon_config(boot_tree: BootTree) -> Path:
    return write_config(boot_tree.root / "daemon.toml", boot_tree.boot, boot_tree.cache, boot_tree.root / "run",
                        watch={"settle": "150ms"})


@pytest.fixture
def tree_with_kernel(boot_tree: BootTree) -> BootTree:
    boot_tree.write_kernel("1.0")
    boot_tree.write_entry("one", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    return boot_tree


def test_ready_only_after_first_reconcile(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    tree = tree_with_kernel
    with DaemonProcess(daemon_config, tree.root) as daemon:
        ready = daemon.wait_ready()
        # At READY the first reconcile is done: both referenced images are already in the index.
        assert set(cached_paths(tree)) == {"/vmlinuz-1.0", "/initramfs-1.0.img"}
        assert "2 cached" in ready.get("STATUS", ""), ready
        assert all("READY" not in m for m in daemon.messages[:-1])
        status = json.loads((tree.root / "run" / "status.json").read_text())
        assert status["pid"] == daemon.proc.pid and status["last_reconcile"]


def test_new_kernel_and_entry_are_cached(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    tree = tree_with_kernel
    with DaemonProcess(daemon_config, tree.root) as daemon:
        daemon.wait_ready()
        # As a package manager does it: write a temp file, rename it into place, then the entry.
        tmp = tree.boot / ".vmlinuz-2.0.tmp"
        tmp.write_bytes(os.urandom(300_000))
        os.rename(tmp, tree.boot / "vmlinuz-2.0")
        tree.write_entry("two", linux="/vmlinuz-2.0")
        wait_for(lambda: "/vmlinuz-2.0" in cached_paths(tree), what="/vmlinuz-2.0 cached")
        assert cached_paths(tree)["/vmlinuz-2.0"] == [tree.sha1_of(tree.boot / "vmlinuz-2.0")]
        assert tree.image(tree.sha1_of(tree.boot / "vmlinuz-2.0")).is_file()
        # An unreferenced file is not cached with track = "referenced".
        (tree.boot / "vmlinuz-stray").write_bytes(b"x" * 1000)
        tree.write_entry("three", linux="/vmlinuz-1.0")  # a change that forces a batch
        time.sleep(1.0)
        assert "/vmlinuz-stray" not in cached_paths(tree)
        assert "IMAGE_CACHED" in daemon.output()


def test_changed_image_gets_new_id(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    tree = tree_with_kernel
    with DaemonProcess(daemon_config, tree.root) as daemon:
        daemon.wait_ready()
        old = cached_paths(tree)["/vmlinuz-1.0"]
        new = tree.write_file("/vmlinuz-1.0", 5000)
        wait_for(lambda: cached_paths(tree)["/vmlinuz-1.0"] == old + [new], what="new image id appended")
        assert "IMAGE_CHANGED" in daemon.output()


def test_removed_referenced_kernel_is_restored(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    tree = tree_with_kernel
    kernel = tree.boot / "vmlinuz-1.0"
    os.chmod(kernel, 0o600)
    with DaemonProcess(daemon_config, tree.root) as daemon:
        daemon.wait_ready()
        image_id = tree.sha1_of(kernel)
        kernel.unlink()
        wait_for(kernel.exists, what="the kernel restored")
        assert tree.sha1_of(kernel) == image_id
        assert (tree.boot / ".vmlinuz-1.0.boomrestored").exists()
        assert kernel.stat().st_mode & 0o777 == 0o600
        wait_for(lambda: "IMAGE_RESTORED" in daemon.output(), what="the restore logged")
    rc, out, _ = tree.cli("list", "--json")
    assert {r["path"]: r["state"] for r in json.loads(out)}["/vmlinuz-1.0"] == "RESTORED"


def test_kernel_and_entry_removal_race_leaves_nothing(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    """A package manager removes the kernel, then its entry 100 ms later: nothing may be restored."""
    tree = tree_with_kernel
    with DaemonProcess(daemon_config, tree.root) as daemon:
        daemon.wait_ready()
        (tree.boot / "vmlinuz-1.0").unlink()
        (tree.boot / "initramfs-1.0.img").unlink()
        time.sleep(0.1)
        tree.remove_entry("one")
        # Let several settle windows pass, then make sure a batch after the race has been applied.
        time.sleep(1.0)
        tree.write_entry("marker", linux="/vmlinuz-marker")
        wait_for(lambda: "/vmlinuz-marker" in daemon.output() or "IMAGE_MISSING" in daemon.output(),
                 what="a batch after the race")
        time.sleep(0.5)
        leftovers = sorted(p.name for p in tree.boot.iterdir())
        assert leftovers == ["loader"], leftovers
        assert "IMAGE_RESTORED" not in daemon.output()


def test_entry_removed_after_restore_takes_the_copy_away(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    """The entry goes only after the restore happened: the restored copy is removed again."""
    tree = tree_with_kernel
    with DaemonProcess(daemon_config, tree.root) as daemon:
        daemon.wait_ready()
        (tree.boot / "vmlinuz-1.0").unlink()
        wait_for((tree.boot / "vmlinuz-1.0").exists, what="the restore")
        tree.remove_entry("one")
        wait_for(lambda: not (tree.boot / "vmlinuz-1.0").exists()
                 and not (tree.boot / ".vmlinuz-1.0.boomrestored").exists(), what="the restored copy removed")
        # The initramfs was never removed by anyone: it is not ours to delete.
        assert (tree.boot / "initramfs-1.0.img").exists()


def test_cache_changes_by_others_are_noticed(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    tree = tree_with_kernel
    with DaemonProcess(daemon_config, tree.root) as daemon:
        daemon.wait_ready()
        image_id = cached_paths(tree)["/vmlinuz-1.0"][0]
        # Someone deletes a cached image: copied again from /boot, whose copy still matches.
        tree.image(image_id).unlink()
        wait_for(tree.image(image_id).exists, what="the image copied again")
        assert tree.sha1_of(tree.image(image_id)) == image_id
        # Someone corrupts one in place: set aside, and copied again.
        initrd_id = cached_paths(tree)["/initramfs-1.0.img"][0]
        with open(tree.image(initrd_id), "r+b") as f:
            f.write(b"rot")
        wait_for(lambda: tree.image(initrd_id).exists() and tree.sha1_of(tree.image(initrd_id)) == initrd_id
                 and (tree.cache / "lost+found" / f"{initrd_id}.img.corrupt").exists(), what="the rot repaired")
        assert "IMAGE_BROKEN" in daemon.output()
        # Someone (boom) rewrites the index in place without /vmlinuz-1.0: reloaded and reconciled.
        data = index_of(tree)
        del data["index"]["/vmlinuz-1.0"]
        del data["paths"]["/vmlinuz-1.0"]
        with open(tree.index_file, "w") as f:
            json.dump(data, f)
        wait_for(lambda: "/vmlinuz-1.0" in cached_paths(tree), what="the path cached again")


def test_event_storm_is_fully_indexed(boot_tree: BootTree) -> None:
    tree = boot_tree
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"}, cache={"track": "all", "patterns": ["vmlinuz-*"]})
    with DaemonProcess(config, tree.root) as daemon:
        daemon.wait_ready()
        for n in range(5000):
            (tree.boot / f"vmlinuz-storm-{n}").write_bytes(b"storm %d\n" % n)
        wait_for(lambda: len(cached_paths(tree)) == 5000, timeout=180, interval=0.5, what="5000 paths indexed")
    # A fresh scan of the same tree, into another cache, finds exactly the same paths and ids.
    fresh = tree.root / "fresh-cache"
    fresh_config = write_config(tree.root / "fresh.toml", tree.boot, fresh, tree.root / "run2",
                                cache={"track": "all", "patterns": ["vmlinuz-*"]})
    result = run_with_config(fresh_config, "scan", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads((fresh / "cacheindex.json").read_text())["index"] == cached_paths(tree)


def test_sighup_reloads(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    tree = tree_with_kernel
    with DaemonProcess(daemon_config, tree.root) as daemon:
        daemon.wait_ready()
        daemon.signal(signal.SIGHUP)
        reloading = daemon.wait_message("RELOADING", "1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        daemon.wait_ready()
        wait_for(lambda: "CONFIG_RELOADED" in daemon.output(), what="the reload logged")
        # A bad config on reload is refused; the daemon keeps running with the old one.
        daemon_config.write_text(daemon_config.read_text() + "\n[cache]\nkeep = \"many\"\n")
        daemon.signal(signal.SIGHUP)
        daemon.wait_message("RELOADING", "1")
        daemon.wait_ready()
        assert daemon.proc.poll() is None
        assert "keeping the running configuration" in daemon.output()


def test_sigterm_stops_cleanly(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    tree = tree_with_kernel
    with DaemonProcess(daemon_config, tree.root) as daemon:
        daemon.wait_ready()
        daemon.signal(signal.SIGTERM)
        daemon.wait_message("STOPPING", "1")
        assert daemon.proc.wait(10) == 0
        assert not (tree.root / "run" / "status.json").exists()


def test_watchdog_pings_only_while_healthy(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    tree = tree_with_kernel
    with DaemonProcess(daemon_config, tree.root,
                       env={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": ""}) as daemon:
        daemon.wait_ready()
        daemon.wait_message("WATCHDOG", "1", timeout=5)
        daemon.wait_message("WATCHDOG", "1", timeout=5)


def test_bad_config_exits_78(boot_tree: BootTree) -> None:
    config = boot_tree.root / "bad.toml"
    config.write_text('[watch]\nsettle = "fast"\n')
    result = run_with_config(config, "run", timeout=30)
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert str(config) in result.stderr and "[watch] settle" in result.stderr


def test_status_command(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    tree = tree_with_kernel
    result = run_with_config(daemon_config, "status")
    assert result.returncode == 3 and "not running" in result.stdout
    with DaemonProcess(daemon_config, tree.root) as daemon:
        daemon.wait_ready()
        result = run_with_config(daemon_config, "status", "--json")
        status = json.loads(result.stdout)
        assert result.returncode == 0 and status["running"] and status["counts"] == {"CACHED": 2}


def test_corrupt_index_at_start_keeps_the_daemon_up(tree_with_kernel: BootTree, daemon_config: Path) -> None:
    """A corrupt index is reported (STATUS, log) but does not keep the service down; repair heals it."""
    tree = tree_with_kernel
    tree.cache.mkdir(mode=0o700)
    tree.index_file.write_text('{"index": {"/vmlinuz-1.0": ["nope"]}')
    corrupt = tree.index_bytes()
    with DaemonProcess(daemon_config, tree.root) as daemon:
        ready = daemon.wait_ready()
        assert "cacheindex.json" in ready["STATUS"], ready
        assert tree.index_bytes() == corrupt  # nothing overwritten
        rc, out, err = tree.cli("fsck", "--repair")
        assert rc == 0, out + err
        tree.write_entry("poke", linux="/vmlinuz-1.0")
        wait_for(lambda: "/vmlinuz-1.0" in cached_paths(tree), what="caching after the repair")
        assert list(tree.cache.glob("cacheindex.json.corrupt-*"))


def test_counts_are_refreshed_after_a_batch_with_a_tick_pending(boot_tree: BootTree) -> None:
    """A tick (or a job's report) waiting in the worker's queue is no work: after a batch the
    status file's counts say what the batch did."""
    tree = boot_tree
    tree.write_kernel("1.0")
    tree.write_entry("linux-1.0", linux="/vmlinuz-1.0", initrd=["/initramfs-1.0.img"])
    run = tree.root / "run"
    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, run, watch={"settle": "100ms"})
    workdir = tree.root / "w"
    workdir.mkdir()
    # WatchdogSec=200ms: the main loop sends a TICK every 100 ms, so one waits in the queue after
    # any batch that takes longer than that (caching a 64 MiB kernel does).
    with DaemonProcess(config, workdir, env={"WATCHDOG_USEC": "200000"}) as daemon:
        daemon.wait_ready()
        status = run / "status.json"
        before = sum(json.loads(status.read_text())["counts"].values())
        (tree.boot / "vmlinuz-2.0").write_bytes(b"\x01" * (64 << 20))
        tree.write_entry("linux-2.0", linux="/vmlinuz-2.0")
        wait_for(lambda: len(list(tree.cache.glob("*.img"))) == 3, timeout=30, what="the new kernel cached")
        # The batch is over once the image is in place; its status write follows (after the batch
        # reads the entry sources again: seconds on a loaded machine). Without the refresh the
        # counts never change, whatever the wait.
        wait_for(lambda: sum(json.loads(status.read_text())["counts"].values()) == before + 1, timeout=30,
                 what="status.json's counts to include the new kernel")
        daemon.stop()
