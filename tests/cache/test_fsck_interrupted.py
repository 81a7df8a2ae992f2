"""``fsck --repair`` never leaves the cache without an index, and a repair that did not complete
blocks every deletion of images.

Real child processes killed with SIGKILL at points spread over a real repair of a big cache; real
files for the state a repair killed between its index rename and its "superseded" mark leaves.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PATHS = 240
SIZE = 128 * 1024
KILLS = 8


def image_contents(cache: Path) -> set[str]:
    """The ids of every image file the cache still holds, in place or in lost+found."""
    found = {p.name[:40] for p in cache.glob("*.img") if len(p.name) == 44}
    lost = cache / "lost+found"
    if lost.is_dir():
        found |= {p.name[:40] for p in lost.iterdir()}
    return found


def big_cache(tree) -> dict[str, str]:
    """PATHS cached boot files of the same size, all referenced; {path: id}."""
    ids = {f"/vmlinuz-{n}": tree.write_file(f"/vmlinuz-{n}", SIZE) for n in range(PATHS)}
    tree.write_entry("all", linux=next(iter(ids)), initrd=[" ".join(ids)])
    rc, out, err = tree.cli("add", *ids, timeout=300)
    assert rc == 0, err
    return ids


def truncate_index(tree) -> bytes:
    """Cut the index in the middle of its path list: half of the paths can be salvaged from the
    text, the other half's images are matched against the boot files (all of the same size, so
    every candidate is hashed: the long part of a repair)."""
    text = tree.index_file.read_bytes()
    cut = text[:len(text) // 4]
    tree.index_file.write_bytes(cut)
    return cut


def repair_argv(tree, cache: Path) -> list:
    return [sys.executable, "-m", "bootwatch", "--boot-dir", str(tree.boot), "--cache-dir", str(cache),
            "fsck", "--repair"]


def test_repair_killed_at_any_moment_leaves_an_index_and_clean_deletes_no_image(boot_tree, tmp_path) -> None:
    tree = boot_tree
    ids = big_cache(tree)
    truncate_index(tree)
    before = image_contents(tree.cache)
    assert before == set(ids.values())

    # How long a whole repair takes here, on a scratch copy of the same cache.
    scratch = tmp_path / "scratch-cache"
    shutil.copytree(tree.cache, scratch, symlinks=True)
    started = time.monotonic()
    done = subprocess.run(repair_argv(tree, scratch), env=tree.env(), capture_output=True, text=True, timeout=300)
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(scratch)

    def check_after_kill(what: str) -> None:
        assert tree.index_file.is_file(), f"{what} left no cacheindex.json"
        rc, out, err = tree.cli("clean")
        assert "Traceback" not in err
        assert image_contents(tree.cache) == before, f"clean after {what} (rc {rc}) deleted images:\n{out}{err}"

    # The moment a kept corrupt index appears: the repair is stopped there (SIGSTOP) while the
    # cache is looked at, then killed. Polled, not timed: the rebuild after it hashes every boot file.
    child = subprocess.Popen(repair_argv(tree, tree.cache), env=tree.env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(name.startswith("cacheindex.json.corrupt-") for name in os.listdir(tree.cache)):
        assert child.poll() is None and time.monotonic() < deadline, "the repair ended without keeping a copy"
        time.sleep(0.001)
    child.send_signal(signal.SIGSTOP)
    assert tree.index_file.is_file(), "while the repair keeps its copy, cacheindex.json is gone"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    check_after_kill("a kill right after the copy appeared")

    for n in range(KILLS):
        # Kills spread evenly over the run: from start-up to the final write.
        delay = duration * (n + 0.5) / KILLS
        child = subprocess.Popen(repair_argv(tree, tree.cache), env=tree.env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        check_after_kill(f"kill {n} after {delay:.2f} s of {duration:.2f} s")

    rc, out, err = tree.cli("fsck", "--repair", timeout=300)
    assert rc == 0, out + err
    rc, out, err = tree.cli("clean")
    assert rc == 0, out + err
    rows = tree.list_json()
    assert {path: row["image_id"] for path, row in rows.items()} == ids
    assert set(tree.images_on_disk()) == set(ids.values())
    kept = sorted(tree.cache.glob("cacheindex.json.corrupt-*"))
    assert len(kept) == 1, "a repair killed again and again keeps one copy of the same corrupt index"


def test_an_unsuperseded_copy_blocks_deletions_until_a_repair_merges_it(boot_tree) -> None:
    """The state of a repair killed after its rebuilt index was in place and before it marked the copy
    superseded, or of an index a foreign program rewrote since: the copy knows a path the index lacks."""
    tree = boot_tree
    a = tree.write_file("/vmlinuz-a", 3000)
    b = tree.write_file("/vmlinuz-b", 3100)
    tree.write_entry("a", linux="/vmlinuz-a")
    tree.write_entry("b", linux="/vmlinuz-b")
    assert tree.cli("add", "/vmlinuz-a", "/vmlinuz-b")[0] == 0
    full = tree.index_bytes()
    copy = tree.cache / "cacheindex.json.corrupt-20260101T000000Z"
    copy.write_bytes(full[:-20])  # the kept copy of a corrupt index
    # The index in place lacks /vmlinuz-b (a repair's rebuilt index, or boom's rewrite).
    rc, out, err = tree.cli("remove", "--force", "/vmlinuz-b")
    assert rc == 0, err
    assert b in tree.images_on_disk(), "remove deleted an image while an unsuperseded copy exists"

    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(copy)])
    assert "repair" in line and "fsck --repair" in err
    assert set(tree.images_on_disk()) == {a, b}

    rc, out, err = tree.cli("fsck")
    assert rc == 1 and str(copy) in out, out + err

    rc, out, err = tree.cli("fsck", "--repair")
    assert rc == 0, out + err
    assert (tree.cache / f".{copy.name}.superseded").exists()
    assert copy.read_bytes() == full[:-20], "the kept copy is never changed"
    rows = tree.list_json()
    assert {p: r["image_id"] for p, r in rows.items()} == {"/vmlinuz-a": a, "/vmlinuz-b": b}, \
        "the repair merged the path that only the copy knew"
    rc, out, err = tree.cli("clean")
    assert rc == 0, out + err
    assert set(tree.images_on_disk()) == {a, b}


# ------------------------------------------------------------------------------------ the superseded mark

def corrupt_cached_index(tree) -> None:
    tree.write_kernel("1.0")
    tree.write_entry("one", linux="/vmlinuz-1.0")
    assert tree.cli("scan")[0] == 0
    tree.index_file.write_bytes(tree.index_bytes()[:100])  # corrupt: a repair keeps a copy


def marks_for_the_next_seconds(tree, make) -> None:
    """A mark (made by ``make``) at every name the copy of a repair starting now could get."""
    now = time.time()
    for s in range(-2, 120):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + s))
        make(tree.cache / f".cacheindex.json.corrupt-{stamp}.superseded")


def test_fsck_repair_does_not_hang_on_a_fifo_at_the_superseded_mark(boot_tree) -> None:
    """The mark's name is predictable (the UTC second): a FIFO planted there must not block the
    O_WRONLY open of mark_superseded for ever, with the cache lock held."""
    tree = boot_tree
    corrupt_cached_index(tree)
    marks_for_the_next_seconds(tree, os.mkfifo)
    rc, out, err = tree.cli("fsck", "--repair", timeout=30)  # the harness fails the test on a timeout
    assert rc == 0, out + err
    assert "Traceback" not in err
    copies = [p for p in tree.cache.glob("cacheindex.json.corrupt-*")]
    assert len(copies) == 1 and (tree.cache / f".{copies[0].name}.superseded").is_file()


def test_a_mark_already_there_never_supersedes_a_new_copy(boot_tree) -> None:
    """A mark left at the name a new copy gets (a clock that went back, or one planted) does not
    supersede the copy from its birth: deletions stay blocked by it."""
    tree = boot_tree
    corrupt_cached_index(tree)
    marks_for_the_next_seconds(tree, lambda p: p.write_bytes(b""))
    cache = tree.library()
    with cache.store.locked():
        copy = cache.store.keep_corrupt_copy(b"corrupt")
        assert copy in cache.store.unsuperseded_corrupt_copies(), f"{copy} was superseded from its birth"


def test_something_else_at_the_mark_keeps_the_copy_unsuperseded(boot_tree) -> None:
    """Only a regular file is a mark; anything else at its name is reported, and
    the copy keeps blocking deletions."""
    tree = boot_tree
    corrupt_cached_index(tree)
    copy = tree.cache / "cacheindex.json.corrupt-20260101T000000Z"
    copy.write_bytes(tree.index_bytes())
    mark = tree.cache / f".{copy.name}.superseded"
    os.mkfifo(mark)
    images = tree.images_on_disk()
    rc, out, err = tree.cli("fsck", "--repair", timeout=30)
    assert rc == 1 and "Traceback" not in err, out + err
    assert [line for line in out.splitlines() if str(mark) in line and "FIFO" in line], out
    rc, out, err = tree.cli("clean")
    line = tree.assert_clean_error(rc, err, names=[str(copy)])
    assert "fsck --repair" in err, line
    assert tree.images_on_disk() == images


@pytest.mark.parametrize("kind", ["directory", "FIFO"])
def test_an_unreadable_copy_is_never_marked_superseded(boot_tree, kind) -> None:
    """A kept copy that cannot be read is not marked superseded, since nothing of it was merged:
    the block on deletions does not end without a merge."""
    tree = boot_tree
    corrupt_cached_index(tree)
    copy = tree.cache / "cacheindex.json.corrupt-20260101T000000Z"
    if kind == "directory":
        copy.mkdir()
    else:
        os.mkfifo(copy)
    images = tree.images_on_disk()
    rc, out, err = tree.cli("fsck", "--repair", timeout=30)
    assert rc == 1 and "Traceback" not in err, out + err
    lines = [line for line in out.splitlines() if str(copy) in line and "by hand" in line]
    assert len(lines) == 1 and f"is a {kind}" in lines[0], out
    assert not os.path.lexists(tree.cache / f".{copy.name}.superseded")
    rc, out, err = tree.cli("clean")
    tree.assert_clean_error(rc, err, names=[str(copy)])
    assert tree.images_on_disk() == images
    assert (copy.is_dir() if kind == "directory" else stat.S_ISFIFO(copy.lstat().st_mode)), "the copy was touched"
