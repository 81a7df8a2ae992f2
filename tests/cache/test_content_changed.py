"""A file that changes while bootwatch hashes it is a :class:`ContentChangedError`, a BootwatchError:
every command that hashes handles it (one clear line, or the file skipped for now), none reports
an internal error or stops half-way.

The change is real: a child process appends to the file the whole time the command runs.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bootwatch.errors import BootwatchError, ContentChangedError

K = "/vmlinuz-1"

# Appends 4 KiB every millisecond (4 MB/s, a few MB over a test) until it is killed.
APPENDER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
block = os.urandom(4096)
os.write(fd, block)
sys.stdout.write("open\\n"); sys.stdout.flush()
while True:
    os.write(fd, block)
    time.sleep(0.001)
"""


@contextlib.contextmanager
def appending(path: Path) -> Iterator[subprocess.Popen]:
    """A child process appending to ``path`` for the duration of the block (it appended once already)."""
    proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "open\n"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_content_changed_is_a_bootwatch_error_naming_the_file() -> None:
    err = ContentChangedError("/boot/vmlinuz-1")
    assert isinstance(err, BootwatchError) and not isinstance(err, OSError)
    assert err.exit_code == 1
    assert str(err).startswith("/boot/vmlinuz-1: ")
    assert err.path == Path("/boot/vmlinuz-1") and err.hint


def make_boom_restored(tree, path: str) -> None:
    """As after boom restored ``path``: the marker beside it and no stat signature of bootwatch's,
    so that ``list`` hashes the boot file to tell RESTORED from CACHED (as boom does)."""
    data = tree.read_index()
    data["paths"][path].pop("bootwatch", None)
    tree.index_file.write_text(json.dumps(data))
    real = tree.path(path)
    (real.parent / f".{real.name}.boomrestored").touch()


@pytest.mark.slow
def test_list_of_a_boom_restored_file_being_appended_to(boot_tree) -> None:
    boot_tree.write_file(K, 8 << 20)
    boot_tree.write_entry("one", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    make_boom_restored(boot_tree, K)
    with appending(boot_tree.path(K)):
        for _ in range(3):
            rc, out, err = boot_tree.cli("list", "--json")
            assert rc == 0, err
            assert "internal error" not in err and "Traceback" not in err, err
            rows = {row["path"]: row for row in json.loads(out)}
            assert rows[K]["state"] == "CACHED"  # its content is not the image's: not RESTORED


@pytest.mark.slow
def test_fsck_repair_with_an_image_being_appended_to(boot_tree) -> None:
    """Something writes into a cached image while fsck --repair hashes it: fsck finishes, the image
    counts as damaged (moved to lost+found) and is copied again from the boot file."""
    sha = boot_tree.write_file(K, 8 << 20)
    boot_tree.write_entry("one", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    with appending(boot_tree.image(sha)):
        rc, out, err = boot_tree.cli("fsck", "--repair", "--json")
    assert "internal error" not in err and "Traceback" not in err, err
    report = json.loads(out)
    assert rc == 0, err  # repaired: the cache is sound again
    assert any(sha in line for line in report["problems"])
    assert any(f"copied {sha} again" in line for line in report["repaired"]), report
    assert boot_tree.sha1_of(boot_tree.image(sha)) == sha
    assert boot_tree.read_index()["index"][K] == [sha]
    assert list((boot_tree.cache / "lost+found").iterdir())


def test_add_of_a_file_being_appended_to(boot_tree) -> None:
    boot_tree.write_file(K, 8 << 20)
    boot_tree.write_entry("one", linux=K)
    with appending(boot_tree.path(K)):
        rc, out, err = boot_tree.cli("add", K)
    line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.path(K))])
    assert "hint:" in err
    assert "written" in line or "changed" in line
    assert boot_tree.images_on_disk() == [] and boot_tree.temp_files() == []


def test_the_daemon_check_of_an_image_being_appended_to(boot_tree) -> None:
    """The daemon's check of an image someone writes to in the cache (reconcile.check_images): no
    verdict while the writer has it open (its close is an event that brings the image back), and
    a damaged image once it closed it."""
    from bootwatch.cache.reconcile import Reconciler, ReconcileReport
    from bootwatch.config import load_config
    sha = boot_tree.write_file(K, 8 << 20)
    boot_tree.write_entry("one", linux=K)
    cache = boot_tree.library()
    cache.add([K])
    config = load_config(boot_tree.config).with_overrides(boot=boot_tree.boot, cache=boot_tree.cache)
    reconciler = Reconciler(config, cache)
    report = ReconcileReport()
    with appending(boot_tree.image(sha)):
        with cache.transaction() as txn:
            reconciler.check_images(txn, [sha], report)
        assert report.broken == [] and report.errors == []
    with cache.transaction() as txn:
        reconciler.check_images(txn, [sha], report)
    assert report.broken == [K] and report.recopied == [K], report
    assert boot_tree.sha1_of(boot_tree.image(sha)) == sha
