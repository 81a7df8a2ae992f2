"""The cache directory is opened once and trusted only with every directory above it.

Item 6: only the last component of the cache path was checked, and every later operation went by
path. A user who owns a directory above the cache swapped the cache for a directory of their own
(``rename(RENAME_EXCHANGE)``) after the check, and root's ``restore`` wrote the attacker's image
into /boot. Now every directory from ``/`` down must be owned by root or the running user and not
writable by others unless sticky, and everything after the check works in the descriptor that
was checked.

Item 8: ``lost+found/``, ``links/`` and ``.tmp/`` are checked as the cache directory is, opened
relative to it: a symlink there would carry images (``fsck --repair``), pins or temp files out of
the cache.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from exchange import exchange

from bootwatch import linux

K = "/vmlinuz-1"
NOBODY = 65534


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A root-owned 0755 directory under /tmp that another user can reach (pytest's own is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="bootwatch-trust-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def chown_tree(top: Path, uid: int) -> None:
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, uid)
    os.lchown(top, uid, uid)


# ------------------------------------------------------------------------------------ item 6: parents

@pytest.mark.slow
@pytest.mark.parametrize("command", [("list",), ("add", K), ("restore", K)])
def test_a_parent_owned_by_another_user_is_refused(boot_tree, open_base: Path, needs_root, command) -> None:
    parent = open_base / "theirs"
    parent.mkdir(mode=0o755)
    cache = parent / "cache"
    boot_tree.write_file(K)
    assert boot_tree.cli("add", K, cache=cache)[0] == 0
    os.chown(parent, NOBODY, NOBODY)
    rc, out, err = boot_tree.cli(*command, cache=cache)
    line = boot_tree.assert_clean_error(rc, err, names=[str(parent)])
    assert "owned by uid 65534" in line and str(cache) not in line


def test_a_parent_writable_by_others_is_refused(boot_tree, open_base: Path) -> None:
    parent = open_base / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)  # not sticky: anyone may rename the cache directory away
    cache = parent / "cache"
    boot_tree.write_file(K)
    rc, out, err = boot_tree.cli("add", K, cache=cache)
    line = boot_tree.assert_clean_error(rc, err, names=[str(parent)])
    assert "writable by group or other (mode 0777)" in line
    assert not cache.exists(), "nothing is created under a directory that failed the check"


@pytest.mark.slow
def test_a_sticky_world_writable_parent_is_accepted(boot_tree, open_base: Path) -> None:
    parent = open_base / "tmp-like"
    parent.mkdir()
    os.chmod(parent, 0o1777)  # like /tmp: others cannot rename what is not theirs
    cache = parent / "cache"
    boot_tree.write_file(K)
    rc, out, err = boot_tree.cli("add", K, cache=cache)
    assert rc == 0, err
    assert boot_tree.cli("list", cache=cache)[0] == 0


def test_the_store_keeps_working_in_the_directory_it_checked(boot_tree, tmp_path: Path) -> None:
    """Swapped after the check, the name leads elsewhere; the store reads and writes the checked one."""
    from bootwatch.cache.store import CacheStore
    from bootwatch.errors import UnsafeDirectoryError
    sha1 = boot_tree.write_file(K)
    assert boot_tree.cli("add", K)[0] == 0
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    (other / "cacheindex.json").write_text('{"index": {}, "paths": {}, "images": {}}')
    with CacheStore(boot_tree.cache) as store, store.locked(create=False):
        exchange(boot_tree.cache, other)  # the checked directory is now at "other"
        assert K in store.load_index()
        fd = store.open_image(sha1)
        try:
            assert hashlib.sha1(os.read(fd, 1 << 20)).hexdigest() == sha1
        finally:
            os.close(fd)
        store.write_derived("marker", b"x")
        assert (other / "marker").read_bytes() == b"x" and not (boot_tree.cache / "marker").exists()
        with pytest.raises(UnsafeDirectoryError, match="was replaced meanwhile"):
            store.check()


def start_attacker(a: Path, b: Path) -> int:
    """A forked child that becomes uid 65534 and swaps ``a`` and ``b`` as fast as it can, until killed."""
    libc = linux.libc()  # the C library, loaded once
    name_a, name_b = os.fsencode(a), os.fsencode(b)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            swaps = 0
            while True:
                if libc.renameat2(-100, name_a, -100, name_b, 2) == 0:  # RENAME_EXCHANGE
                    swaps += 1
                elif swaps == 0 and ctypes.get_errno() not in (0,):
                    os._exit(3)  # not permitted: the test would prove nothing
        finally:
            os._exit(4)
    return pid


@pytest.mark.slow
def test_an_exchange_race_by_the_owner_of_a_parent_never_reaches_boot(boot_tree, open_base: Path, needs_root) -> None:
    parent = open_base / "user"
    parent.mkdir(mode=0o755)
    cache = parent / "cache"
    sha1 = boot_tree.write_file(K, content=b"the real kernel " * 256)
    assert boot_tree.cli("add", K, cache=cache)[0] == 0
    boot_tree.path(K).unlink()
    # The attacker's directory: an index naming K with their image, setuid root.
    evil_content = b"attacker kernel " * 256
    evil_sha1 = hashlib.sha1(evil_content).hexdigest()
    evil = parent / "evil"
    evil.mkdir(mode=0o755)
    index = (cache / "cacheindex.json").read_text()
    real_sha256 = hashlib.sha256(b"the real kernel " * 256).hexdigest()
    data = json.loads(index.replace(sha1, evil_sha1).replace(real_sha256, hashlib.sha256(evil_content).hexdigest()))
    data["paths"][K]["path_mode"] = 0o104755
    (evil / "cacheindex.json").write_text(json.dumps(data))
    (evil / f"{evil_sha1}.img").write_bytes(evil_content)
    chown_tree(evil, NOBODY)
    os.chown(parent, NOBODY, NOBODY)  # the user owns the directory above root's cache
    attacker = start_attacker(cache, evil)
    try:
        outcomes = []
        for _ in range(25):
            rc, out, err = boot_tree.cli("restore", K, cache=cache, timeout=60)
            outcomes.append((rc, err.strip()))
            if os.path.lexists(boot_tree.path(K)):
                restored = boot_tree.path(K).read_bytes()
                assert restored != evil_content, f"attacker content restored into the boot directory: {outcomes}"
                boot_tree.path(K).unlink()
    finally:
        os.kill(attacker, signal.SIGKILL)
        _, status = os.waitpid(attacker, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the attacker stopped swapping early"
    # Refused every time, before anything in the cache was read, naming the directory at fault.
    for rc, err in outcomes:
        assert rc == 1 and str(parent) in err.splitlines()[0] and "owned by uid 65534" in err, outcomes


# ------------------------------------------------------------------------------------ item 8: subdirectories

def outside_dir(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    return outside


@pytest.mark.slow
def test_a_symlinked_lost_and_found_is_refused_by_fsck_repair(boot_tree, tmp_path: Path) -> None:
    boot_tree.write_file(K)
    assert boot_tree.cli("add", K)[0] == 0
    stray = hashlib.sha1(b"never written").hexdigest()
    boot_tree.image(stray).write_bytes(b"rotten: does not hash to its name")  # fsck --repair moves it aside
    outside = outside_dir(tmp_path)
    os.symlink(outside, boot_tree.cache / "lost+found")
    rc, out, err = boot_tree.cli("fsck", "--repair")
    line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.cache / "lost+found")])
    assert "symlink" in line
    assert list(outside.iterdir()) == []
    assert boot_tree.image(stray).exists(), "the image stays in the cache"


@pytest.mark.slow
def test_a_symlinked_links_directory_is_refused(boot_tree, tmp_path: Path) -> None:
    boot_tree.write_file(K)
    boot_tree.write_entry("k", linux=K)  # references known: clean gets as far as the pins
    assert boot_tree.cli("add", K)[0] == 0
    outside = outside_dir(tmp_path)
    os.symlink(outside, boot_tree.cache / "links")
    images = boot_tree.images_on_disk()
    for command in (("clean",), ("pin", "--path", K, "--", "true")):
        rc, out, err = boot_tree.cli(*command)
        line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.cache / "links")])
        assert "symlink" in line
    assert list(outside.iterdir()) == []
    assert boot_tree.images_on_disk() == images


def test_a_symlinked_temp_directory_is_refused(boot_tree, tmp_path: Path) -> None:
    boot_tree.write_file(K)
    boot_tree.cache.mkdir(mode=0o700)
    outside = outside_dir(tmp_path)
    os.symlink(outside, boot_tree.cache / ".tmp")
    rc, out, err = boot_tree.cli("add", K)
    line = boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.cache / ".tmp")])
    assert "symlink" in line
    assert list(outside.iterdir()) == []
    assert boot_tree.images_on_disk() == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lost+found", "links", ".tmp"])
def test_a_subdirectory_writable_by_others_is_refused(boot_tree, name: str) -> None:
    boot_tree.write_file(K)
    boot_tree.write_entry("k", linux=K)  # references known: clean gets as far as the pins
    assert boot_tree.cli("add", K)[0] == 0
    stray = hashlib.sha1(b"never written").hexdigest()
    boot_tree.image(stray).write_bytes(b"rotten")
    sub = boot_tree.cache / name
    sub.mkdir(exist_ok=True)
    os.chmod(sub, 0o777)
    command = {"lost+found": ("fsck", "--repair"), "links": ("clean",), ".tmp": ("add", K)}[name]
    rc, out, err = boot_tree.cli(*command)
    line = boot_tree.assert_clean_error(rc, err, names=[str(sub)])
    assert "writable by group or other" in line


def test_a_bad_lost_and_found_does_not_stop_the_recopy_of_a_damaged_image(boot_tree, tmp_path: Path) -> None:
    """The daemon's check of a damaged image (Reconciler.check_images) with a symlinked lost+found
    does not stop at the move, before the re-copy (the damaged image would stay, and every batch
    log an ERROR): one line naming lost+found, the image copied again from /boot, nothing moved
    out of the cache."""
    from bootwatch.cache.reconcile import Reconciler, ReconcileReport
    from bootwatch.config import load_config
    image_id = boot_tree.write_file(K, 8192)
    boot_tree.write_entry("one", linux=K)
    cache = boot_tree.library()
    cache.add([K])
    outside = outside_dir(tmp_path)
    os.symlink(outside, boot_tree.cache / "lost+found")
    config = load_config(boot_tree.config).with_overrides(boot=boot_tree.boot, cache=boot_tree.cache)
    reconciler = Reconciler(config, cache)
    reports = []
    for _attempt in range(2):
        boot_tree.image(image_id).write_bytes(b"rotten")  # modified in place by someone
        report = ReconcileReport()
        with cache.transaction() as txn:
            reconciler.check_images(txn, [image_id], report)
        reports.append(report)
        assert report.recopied == [K], report
        assert boot_tree.sha1_of(boot_tree.image(image_id)) == image_id, "the damaged image was not copied again"
    assert list(outside.iterdir()) == [], "something was moved out of the cache"
    assert os.path.islink(boot_tree.cache / "lost+found")
    lines = [line for report in reports for line in report.errors]
    assert len(lines) == 1 and lines[0].startswith(str(boot_tree.cache / "lost+found") + ": "), lines
    assert "symlink" in lines[0]
