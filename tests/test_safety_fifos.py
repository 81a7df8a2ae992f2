"""A FIFO under a name bootwatch reads never makes it hang.

A plain ``open(2)`` of a FIFO for reading blocks until some writer opens it: planted under the
name of a referenced kernel it hung ``add`` forever while it held the writers' lock, and planted
as ``cacheindex.json`` or ``.bootwatch-signatures`` it hung ``list``, ``add``, ``fsck`` and
``scan``. Every test here runs the real CLI as a child process with a timeout: a hang fails the
test (the child is killed) instead of hanging the suite.

What is decided: a file bootwatch was asked to read that is not a regular file is one error line
naming it (exit 1); a FIFO boot file that a pass merely comes across (``scan``) is not cached,
like any other non-regular boot file, and the pass succeeds; a FIFO where the derived signatures
file belongs counts as no signatures file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from exchange import exchange

K = "/vmlinuz-1"
TIMEOUT = 30  # seconds; every command here takes well under one when it does not hang


def make_fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path, 0o644)
    return path


def is_fifo(path: Path) -> bool:
    import stat
    return stat.S_ISFIFO(os.lstat(path).st_mode)


# ------------------------------------------------------------------------------------ boot files

@pytest.mark.slow
def test_adding_a_fifo_boot_file_fails_at_once_and_frees_the_lock(boot_tree) -> None:
    boot_tree.write_entry("e1", linux=K)
    make_fifo(boot_tree.path(K))
    boot_tree.write_file("/vmlinuz-2")
    assert boot_tree.cli("add", "/vmlinuz-2")[0] == 0  # the cache exists; the next writers contend
    env = boot_tree.env()
    base = [sys.executable, "-m", "bootwatch", "--boot-dir", str(boot_tree.boot), "--cache-dir", str(boot_tree.cache)]
    boot_tree.write_file("/vmlinuz-3")
    # Both writers at once: a first writer blocked in open(2) with the lock held would keep the
    # second waiting for the lock behind it, forever.
    fifo_add = subprocess.Popen([*base, "add", K], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other_add = subprocess.Popen([*base, "add", "/vmlinuz-3"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    try:
        _, err = fifo_add.communicate(timeout=TIMEOUT)
        other_out, other_err = other_add.communicate(timeout=TIMEOUT)
    finally:
        for proc in (fifo_add, other_add):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    line = boot_tree.assert_clean_error(fifo_add.returncode, err, names=[str(boot_tree.path(K))])
    assert "is a FIFO, not a regular file" in line
    assert other_add.returncode == 0, other_err
    assert "/vmlinuz-3: cached" in other_out
    assert K not in boot_tree.read_index()["index"]
    assert is_fifo(boot_tree.path(K))


def test_scan_passes_over_a_fifo_boot_file(boot_tree) -> None:
    boot_tree.write_entry("e1", linux=K, initrd=["/initrd-1"])
    make_fifo(boot_tree.path(K))
    boot_tree.write_file("/initrd-1")
    rc, out, err = boot_tree.cli("scan", timeout=TIMEOUT)
    assert rc == 0, err
    index = boot_tree.read_index()["index"]
    assert "/initrd-1" in index and K not in index


@pytest.mark.slow
def test_scan_warns_of_a_fifo_at_a_referenced_boot_path_each_time(boot_tree) -> None:
    """Skipped, but never silently: one warning naming the file, each scan."""
    boot_tree.write_entry("e1", linux=K, initrd=["/initrd-1"])
    make_fifo(boot_tree.path(K))
    boot_tree.write_file("/initrd-1")
    for _ in range(2):
        rc, out, err = boot_tree.cli("scan", timeout=TIMEOUT)
        assert rc == 0, err
        [line] = [line for line in err.splitlines() if str(boot_tree.path(K)) in line]
        assert "is a FIFO, not a regular file" in line


@pytest.mark.slow
def test_scan_warns_of_a_fifo_entry_each_time(boot_tree) -> None:
    boot_tree.write_entry("e1", linux=K)
    boot_tree.write_file(K)
    fifo = make_fifo(boot_tree.entries / "e2.conf")
    for _ in range(2):
        rc, out, err = boot_tree.cli("scan", timeout=TIMEOUT)
        assert rc == 0, err
        [line] = [line for line in err.splitlines() if str(fifo) in line]
        assert "is a FIFO, not a regular file" in line and "not a boot entry" in line


def test_the_daemon_warns_of_a_fifo_once_per_path(boot_tree, caplog) -> None:
    """The daemon's passes share one cache and one reconciler: a FIFO that stays is said once; one
    that comes back after a regular file was there is said again."""
    from bootwatch.cache.reconcile import Reconciler
    from bootwatch.config import load_config
    boot_tree.write_entry("e1", linux=K, initrd=["/initrd-1"])
    boot_tree.write_file("/initrd-1")
    make_fifo(boot_tree.path(K))
    entry_fifo = make_fifo(boot_tree.entries / "e2.conf")
    config = load_config(boot_tree.config).with_overrides(boot=boot_tree.boot, cache=boot_tree.cache)
    cache = boot_tree.library()
    reconciler = Reconciler(config, cache)

    def warnings_after_a_pass() -> list:
        caplog.clear()
        with caplog.at_level("WARNING"), cache.transaction() as txn:
            reconciler.full(txn)
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    first = warnings_after_a_pass()
    assert len([m for m in first if str(boot_tree.path(K)) in m]) == 1, first
    assert len([m for m in first if str(entry_fifo) in m]) == 1, first
    assert warnings_after_a_pass() == []
    boot_tree.path(K).unlink()
    boot_tree.write_file(K)
    assert warnings_after_a_pass() == []
    boot_tree.path(K).unlink()
    make_fifo(boot_tree.path(K))
    assert [m for m in warnings_after_a_pass() if str(boot_tree.path(K)) in m], "a new FIFO is said again"


def test_list_does_not_read_a_fifo_that_replaced_a_restored_copy(boot_tree) -> None:
    """boom records no stat signature: list hashes a restored boot file once, which must not be a FIFO."""
    boot_tree.write_entry("e1", linux=K)
    boot_tree.write_file(K)
    assert boot_tree.cli("add", K)[0] == 0
    data = boot_tree.read_index()
    data["paths"][K].pop("bootwatch")  # as boom writes it
    boot_tree.index_file.write_text(json.dumps(data))
    (boot_tree.boot / ".vmlinuz-1.boomrestored").touch()
    boot_tree.path(K).unlink()
    make_fifo(boot_tree.path(K))
    rc, out, err = boot_tree.cli("list", "--json", timeout=TIMEOUT)
    assert rc == 0, err
    [row] = json.loads(out)
    assert row["path"] == K and row["state"] == "CACHED"


@pytest.mark.slow
def test_fsck_repair_does_not_copy_again_from_a_fifo_boot_file(boot_tree) -> None:
    boot_tree.write_entry("e1", linux=K)
    sha1 = boot_tree.write_file(K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.image(sha1).unlink()
    boot_tree.path(K).unlink()
    make_fifo(boot_tree.path(K))
    rc, out, err = boot_tree.cli("fsck", "--repair", timeout=TIMEOUT)
    assert "Traceback" not in err
    assert rc == 0, out + err  # the repair dropped the image no good copy is left of: sound again
    assert f"dropped {sha1} from {K}: no good copy is left" in out
    assert is_fifo(boot_tree.path(K))


# ------------------------------------------------------------------------------------ the cache directory

@pytest.mark.slow
@pytest.mark.parametrize("command", [("list",), ("add", "/vmlinuz-2"), ("fsck",), ("fsck", "--repair"), ("scan",),
                                     ("clean",), ("verify",)])
def test_a_fifo_index_is_one_error_line(boot_tree, command) -> None:
    boot_tree.write_entry("e1", linux=K)
    boot_tree.write_file(K)
    boot_tree.write_file("/vmlinuz-2")
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.index_file.unlink()
    make_fifo(boot_tree.index_file)
    images = boot_tree.images_on_disk()
    rc, out, err = boot_tree.cli(*command, timeout=TIMEOUT)
    line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.index_file)])
    assert "is a FIFO, not a regular file" in line
    # Unknown is not none: nothing was deleted or rewritten on the strength of "no index".
    assert is_fifo(boot_tree.index_file)
    assert boot_tree.images_on_disk() == images


@pytest.mark.slow
def test_a_fifo_signatures_file_counts_as_none(boot_tree) -> None:
    boot_tree.config.write_text('[cache]\ntrack = "all"\n')
    boot_tree.write_file(K)
    boot_tree.write_file("/vmlinuz-2")
    assert boot_tree.cli("scan", timeout=TIMEOUT)[0] == 0
    signatures = boot_tree.cache / ".bootwatch-signatures"
    assert signatures.is_file()
    signatures.unlink()
    make_fifo(signatures)
    boot_tree.write_file("/vmlinuz-3")
    rc, out, err = boot_tree.cli("scan", timeout=TIMEOUT)  # reads it first: the quick pass
    assert rc == 0, out + err
    assert set(boot_tree.read_index()["index"]) == {K, "/vmlinuz-2", "/vmlinuz-3"}
    assert signatures.is_file()  # the pass wrote a real one in its place


def test_a_fifo_lock_file_is_refused(boot_tree) -> None:
    boot_tree.write_file(K)
    boot_tree.cache.mkdir(mode=0o700)
    make_fifo(boot_tree.cache / ".bootwatch.lock")
    rc, out, err = boot_tree.cli("add", K, timeout=TIMEOUT)
    line = boot_tree.assert_clean_error(rc, err, names=[".bootwatch.lock"])
    assert "is a FIFO" in line
    assert boot_tree.images_on_disk() == []


@pytest.mark.slow
def test_verify_reports_a_fifo_image_as_failed(boot_tree) -> None:
    boot_tree.write_entry("e1", linux=K)
    sha1 = boot_tree.write_file(K)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.image(sha1).unlink()
    make_fifo(boot_tree.image(sha1))
    rc, out, err = boot_tree.cli("verify", timeout=TIMEOUT)
    assert rc == 1 and "Traceback" not in err, out + err
    assert f"FAILED {sha1[:12]}" in out and "is a FIFO, not a regular file" in out


# ------------------------------------------------------------------------------------ entries, configuration, status

@pytest.mark.slow
def test_an_entry_swapped_for_a_fifo_is_never_opened(boot_tree, tmp_path: Path) -> None:
    """The swap races the entries' reader between its look at the file and the open: the open itself must check."""
    entry = boot_tree.write_entry("e1", linux=K)
    fifo = make_fifo(tmp_path / "e1.fifo")
    reader = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom pathlib import Path\nfrom bootwatch.entries.bls_type1 import "
         "read_type1_entries\nfrom bootwatch.entries.model import Partition, PartitionKind\n"
         "for _ in range(3000):\n    read_type1_entries(Path(sys.argv[1]), Partition(PartitionKind.BOOT))\n",
         str(boot_tree.entries)],
        env=boot_tree.env(), stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            exchange(entry, fifo)

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        _, err = reader.communicate(timeout=120)
    finally:
        stop.set()
        swapper.join()
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert reader.returncode == 0, err


def test_check_config_of_a_fifo_is_a_config_error(boot_tree, tmp_path: Path) -> None:
    config = make_fifo(tmp_path / "fifo.toml")
    rc, out, err = boot_tree.cli_bare("check-config", str(config), timeout=TIMEOUT)
    line = boot_tree.assert_clean_error(rc, err, expected_rc=78, names=[str(config)])
    assert "is a FIFO" in line


def test_status_with_a_fifo_status_file_says_not_running(boot_tree, tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    make_fifo(runtime / "status.json")
    boot_tree.config.write_text(f'[paths]\nruntime = "{runtime}"\n')
    rc, out, err = boot_tree.cli("status", timeout=TIMEOUT)
    assert rc == 3 and "Traceback" not in err, out + err
    assert "not running" in out
