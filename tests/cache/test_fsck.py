"""A corrupt index stops every command with a clear error and is never overwritten, until
``fsck --repair`` keeps a copy of it and rebuilds the index from the images that still hash to their ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

pytestmark = pytest.mark.slow

K1, I1, K2, GONE = "/vmlinuz-1", "/initramfs-1.img", "/vmlinuz-2", "/vmlinuz-gone"


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (the lock file included)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def run_all(tree, commands: list[tuple[str, ...]]) -> list[tuple[tuple[str, ...], int, str, str]]:
    """Run the commands at the same time (each waits ~1 s in read retries on a corrupt index)."""
    procs = []
    for args in commands:
        argv = [sys.executable, "-m", "bootwatch", "--boot-dir", str(tree.boot), "--cache-dir", str(tree.cache),
                *args]
        procs.append((args, subprocess.Popen(argv, env=tree.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True, cwd=str(tree.root))))
    results = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append((args, proc.returncode, out, err))
    return results


@pytest.fixture
def populated(boot_tree) -> dict[str, str]:
    """Four cached paths; the boot file of GONE is deleted afterwards. {path: id}."""
    ids = {K1: boot_tree.write_file(K1, 5000), I1: boot_tree.write_file(I1, 7000),
           K2: boot_tree.write_file(K2, 6000), GONE: boot_tree.write_file(GONE, 4000)}
    boot_tree.write_entry("one", linux=K1, initrd=[I1])
    boot_tree.write_entry("two", linux=K2)
    rc, out, err = boot_tree.cli("add", K1, I1, K2, GONE)
    assert rc == 0, err
    boot_tree.path(GONE).unlink()
    return ids


def truncate_after_first_entry(text: str) -> str:
    """Cut the index right after its first ``"path": [ids]`` entry: only that one can be salvaged."""
    return text[:text.index("]") + 1]


def wrong_types(text: str) -> str:
    data = json.loads(text)
    for meta in data["paths"].values():
        meta["path_mode"] = "0644"
    return json.dumps(data)


def missing_key(text: str) -> str:
    data = json.loads(text)
    del data["images"]
    return json.dumps(data)


def hostile_path(text: str) -> str:
    data = json.loads(text)
    some_id = data["index"][K1][0]
    data["index"]["/sub/../../etc/passwd"] = [some_id]
    data["paths"]["/sub/../../etc/passwd"] = {"path_mode": 0o100644, "path_uid": 0, "path_gid": 0, "path_attrs": {}}
    return json.dumps(data)


CORRUPTIONS: dict[str, Callable[[str], str]] = {
    "truncated": truncate_after_first_entry,
    "wrong-types": wrong_types,
    "missing-key": missing_key,
    "hostile-path": hostile_path,
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_index_stops_every_command_and_is_never_overwritten(boot_tree, populated, kind: str) -> None:
    corrupt = CORRUPTIONS[kind](boot_tree.index_file.read_text()).encode()
    boot_tree.index_file.write_bytes(corrupt)
    boot_tree.write_file(K1, 5001)  # new content that an add would cache
    before = snapshot(boot_tree.cache)
    boot_before = snapshot(boot_tree.boot)

    # Commands that take the writers' lock run one after the other, each retrying its read for
    # about a second: the whole set for two kinds of damage, the usual ones for the others.
    commands = [("add", K1), ("list",), ("list", "--json"), ("show", K1), ("verify",), ("fsck",)]
    if kind in ("truncated", "hostile-path"):
        commands += [("remove", "--force", K2), ("restore", GONE), ("clean",)]
    for args, rc, out, err in run_all(boot_tree, commands):
        assert rc == 1, (args, rc, out, err)
        assert "Traceback" not in err, (args, err)
        where = err if args[0] != "fsck" else out
        assert str(boot_tree.index_file) in where, (args, out, err)
        if args[0] != "fsck":
            boot_tree.assert_clean_error(rc, err, names=[str(boot_tree.index_file)])
            assert "fsck --repair" in err, "the hint must say how to get out"
    assert boot_tree.index_file.read_bytes() == corrupt, "the corrupt index was overwritten"
    assert snapshot(boot_tree.cache) == before, "a command changed the cache while the index is corrupt"
    assert snapshot(boot_tree.boot) == boot_before

    rc, out, err = boot_tree.cli("fsck", "--repair")
    assert rc == 0, out + err
    assert "Traceback" not in err
    # Its count agrees with its noun, as every message's does.
    assert "merged 1 kept corrupt index into the index: cacheindex.json.corrupt-" in out, out
    kept = sorted(boot_tree.cache.glob("cacheindex.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == corrupt, "the corrupt file must be kept, byte for byte"
    rows = boot_tree.list_json()
    expected = {K1: populated[K1], I1: populated[I1], K2: populated[K2]}
    if kind != "truncated":
        expected[GONE] = populated[GONE]  # its path survives in the old index text
    assert {p: r["image_id"] for p, r in rows.items()} == expected
    assert "/sub/../../etc/passwd" not in rows
    for path, row in rows.items():
        assert row["state"] == ("MISSING" if path == GONE else ("CACHED" if path != K1 else row["state"]))
    if kind == "truncated":
        # GONE's path was cut off and its boot file is gone: its image waits in lost+found.
        assert (boot_tree.cache / "lost+found" / f"{populated[GONE]}.img").is_file()
        assert populated[GONE] not in boot_tree.images_on_disk()
    if kind == "wrong-types":
        meta = boot_tree.read_index()["paths"][K2]
        assert meta["path_mode"] == os.stat(boot_tree.path(K2)).st_mode, "mode taken from the boot file"
    # The cache works again, and the new content of K1 can be cached.
    rc, out, err = boot_tree.cli("fsck")
    assert rc == 0, out + err
    rc, out, err = boot_tree.cli("add", K1)
    assert rc == 0 and "changed" in out, out + err


def test_a_repair_counts_one_path_and_one_image_in_the_singular(boot_tree) -> None:
    boot_tree.write_file(K1, 5000)
    rc, out, err = boot_tree.cli("add", K1)
    assert rc == 0, err
    boot_tree.index_file.write_text("{garbage")
    rc, out, err = boot_tree.cli("fsck", "--repair")
    assert rc == 0, out + err
    assert "rebuilt the index with 1 path and 1 image" in out, out


def test_corrupt_and_missing_images_are_problems_that_repair_fixes(boot_tree, populated) -> None:
    # I1: content rotted, boot file intact -> copied again. GONE: rotted and no boot file -> dropped.
    for path in (I1, GONE):
        image = boot_tree.image(populated[path])
        image.write_bytes(os.urandom(image.stat().st_size))
    # K2: image deleted, boot file intact -> copied again.
    boot_tree.image(populated[K2]).unlink()
    rc, out, err = boot_tree.cli("fsck")
    assert rc == 1 and "Traceback" not in err
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3, out
    assert any(populated[I1] in p and "corrupt" in p for p in problems)
    assert any(populated[K2] in p and "missing" in p for p in problems)

    rc, out, err = boot_tree.cli("fsck", "--repair")
    assert rc == 0, out + err
    rows = boot_tree.list_json()
    assert rows[I1]["image_id"] == populated[I1] and rows[K2]["image_id"] == populated[K2]
    assert boot_tree.sha1_of(boot_tree.image(populated[I1])) == populated[I1]
    assert boot_tree.sha1_of(boot_tree.image(populated[K2])) == populated[K2]
    assert GONE not in rows, "an image with no good copy left must be dropped"
    lost = boot_tree.cache / "lost+found"
    assert {p.name for p in lost.iterdir()} == {f"{populated[I1]}.img.corrupt", f"{populated[GONE]}.img.corrupt"}
    assert boot_tree.cli("fsck")[0] == 0


def test_orphans_and_temp_files_are_warnings_not_problems(boot_tree, populated) -> None:
    orphan = os.urandom(100)
    boot_tree.image(boot_tree.sha1_bytes(orphan)).write_bytes(orphan)
    temp = boot_tree.cache / ".bootwatch-tmp.1.2.3"
    temp.write_bytes(b"half")
    report = boot_tree.cli_json("fsck", "--json")
    assert report["ok"] is True and report["problems"] == []
    assert any("orphaned" in w for w in report["warnings"]) and any("temp file" in w for w in report["warnings"])
    rc, out, err = boot_tree.cli("fsck", "--repair")
    assert rc == 0
    assert not temp.exists()


def test_fsck_without_repair_writes_nothing(boot_tree, populated) -> None:
    boot_tree.image(populated[K2]).unlink()
    before = snapshot(boot_tree.cache)
    assert boot_tree.cli("fsck")[0] == 1
    assert snapshot(boot_tree.cache) == before


def test_fsck_on_a_missing_cache_directory_says_there_is_no_cache_and_creates_none(boot_tree) -> None:
    rc, out, err = boot_tree.cli("fsck")
    boot_tree.assert_clean_error(rc, err, expected_rc=2, names=[str(boot_tree.cache), "--cache-dir"])
    assert not boot_tree.cache.exists()


def test_an_unlisted_image_that_does_not_hash_to_its_name_is_a_problem(boot_tree, populated) -> None:
    """A writer only renames complete files: an ``<id>.img`` with other content is damage, not an orphan."""
    rotten = os.urandom(5000)
    name = "e" * 40
    boot_tree.image(name).write_bytes(rotten)
    rc, out, err = boot_tree.cli("fsck")
    assert rc == 1 and name in out and "problem:" in out, out + err
    rc, out, err = boot_tree.cli("fsck", "--repair")
    assert rc == 0, out + err
    assert name not in boot_tree.images_on_disk()
    assert (boot_tree.cache / "lost+found" / f"{name}.img.corrupt").read_bytes() == rotten


def test_repair_of_a_corrupt_index_leaves_no_rotten_image_under_its_name(boot_tree, populated) -> None:
    boot_tree.index_file.write_bytes(b'{"index": {')
    bad = boot_tree.image(populated[I1])
    bad.write_bytes(os.urandom(bad.stat().st_size))
    rc, out, err = boot_tree.cli("fsck", "--repair")
    assert rc == 0, out + err
    for image_id in boot_tree.images_on_disk():
        assert boot_tree.sha1_of(boot_tree.image(image_id)) == image_id, f"{image_id}.img is left rotten"
    # Adding the boot file again caches a good copy.
    assert boot_tree.cli("add", I1)[0] == 0
    assert boot_tree.cli("fsck")[0] == 0


# ------------------------------------------------------------------------------------ a lost index

def image_files(tree) -> dict[str, bytes]:
    """Every image the cache holds, in place or in lost+found, by id: nothing may ever vanish."""
    found = {p.name[:40]: p.read_bytes() for p in tree.cache.glob("*.img")}
    lost = tree.cache / "lost+found"
    if lost.is_dir():
        found.update({p.name[:40]: p.read_bytes() for p in lost.iterdir()})
    return found


def test_a_lost_index_is_not_an_empty_cache(boot_tree, populated) -> None:
    """An index that is gone while its images are still there is not an empty cache: clean must
    not delete every image, including the only copy of a MISSING, referenced kernel; fsck must not
    say 'orphaned image ... clean removes it' and exit 0; the daemon's next pass must not write a
    new index without those images, for clean to delete them next."""
    tree = boot_tree
    tree.write_entry("gone", linux=GONE)  # GONE is MISSING and referenced: the cache has its only copy
    tree.index_file.rename(tree.root / "index-moved-away")
    before = snapshot(tree.cache)
    boot_before = snapshot(tree.boot)
    for args in [("clean",), ("scan",), ("add", K1), ("list",), ("restore", GONE)]:
        rc, out, err = tree.cli(*args)
        line = tree.assert_clean_error(rc, err, names=[str(tree.index_file)])
        assert "missing" in line and "fsck --repair" in err, (args, err)
    assert snapshot(tree.cache) == before, "a command changed the cache while its index is lost"
    assert snapshot(tree.boot) == boot_before

    rc, out, err = tree.cli("fsck")
    assert rc == 1, out + err
    assert f"problem: {tree.index_file}: is missing" in out, out
    assert "orphaned" not in out and "clean' removes" not in out, out
    assert snapshot(tree.cache) == before

    rc, out, err = tree.cli("fsck", "--repair")
    assert rc == 0 and "Traceback" not in err, out + err
    assert image_files(tree) == {i: before[f"{i}.img"] for i in populated.values()}, "the repair lost an image"
    rows = tree.list_json()
    # The paths whose boot files still hold their images are matched again; GONE's image waits in
    # lost+found for an administrator (no boot file says what it was).
    assert {p: r["image_id"] for p, r in rows.items()} == {K1: populated[K1], I1: populated[I1], K2: populated[K2]}
    assert (tree.cache / "lost+found" / f"{populated[GONE]}.img").is_file()
    rc, out, err = tree.cli("clean")
    assert rc == 0, out + err
    assert set(image_files(tree)) == set(populated.values())


def test_a_new_cache_is_an_empty_cache(boot_tree) -> None:
    """No index and no image: a new cache, as before. list, fsck and clean work on it."""
    tree = boot_tree
    tree.cache.mkdir(mode=0o700)
    assert tree.cli("list", "--json")[:2] == (0, "[]\n")
    rc, out, err = tree.cli("fsck")
    assert rc == 0 and "consistent" in out, out + err
    rc, out, err = tree.cli("clean", "--force")  # (no record of the entries yet: --force confirms them)
    assert rc == 0, out + err


def test_the_first_image_of_a_new_cache_comes_after_an_index(boot_tree) -> None:
    """A writer killed between the first image's rename and the index write must leave an index:
    else the next run sees images without an index, a lost index, and refuses until a repair.
    The image is given its name (the flush) before the transaction writes the index."""
    tree = boot_tree
    image_id = tree.write_file(K1, 5000)
    cache = tree.library()
    with cache.transaction() as txn:
        txn.add(K1)
        txn.flush()
        assert tree.image(image_id).is_file()
        assert tree.index_file.is_file(), "the first image of a new cache is in place without an index"
        assert tree.read_index()["index"] == {}
    assert tree.read_index()["index"] == {K1: [image_id]}
    assert tree.cli("list")[0] == 0


def test_clean_and_the_daemon_with_the_index_gone_delete_no_image(boot_tree) -> None:
    """Three kernels, one of them MISSING and referenced; the index moved away. clean must not
    delete every image, nor the daemon's start write a fresh index without the MISSING kernel's
    image, leaving it for clean."""
    from daemonproc import DaemonProcess, write_config
    from polling import wait_for
    tree = boot_tree
    for v in ("1.0", "2.0", "3.0"):
        tree.write_kernel(v)
        tree.write_entry(f"e{v}", linux=f"/vmlinuz-{v}")
    rc, out, err = tree.cli("scan")
    assert rc == 0, out + err
    tree.path("/vmlinuz-3.0").unlink()  # MISSING, still referenced: the cache has its only copy
    k3_image = tree.read_index()["index"]["/vmlinuz-3.0"][0]
    tree.index_file.rename(tree.root / "index-moved-away")
    images = tree.images_on_disk()
    rc, out, err = tree.cli("clean")
    tree.assert_clean_error(rc, err, names=[str(tree.index_file)])
    assert "fsck --repair" in err
    assert k3_image in tree.images_on_disk(), f"clean deleted the only copy of /vmlinuz-3.0: rc={rc} {out}{err}"

    config = write_config(tree.root / "daemon.toml", tree.boot, tree.cache, tree.root / "run",
                          watch={"settle": "100ms"})
    workdir = tree.root / "daemon"
    workdir.mkdir()
    with DaemonProcess(config, workdir) as daemon:
        daemon.wait_ready(timeout=60)  # it stays up, and says why it does nothing
        tree.write_kernel("4.0")  # a batch: refused too, for the same reason
        tree.write_entry("e4.0", linux="/vmlinuz-4.0")
        wait_for(lambda: daemon.output().count(f"{tree.index_file}: is missing") >= 2, timeout=30,
                 what="the batch after the start refused too")
        assert daemon.stop() == 0
        said = daemon.output()
    assert f"{tree.index_file}: is missing" in said, said
    assert not tree.index_file.exists(), "the daemon wrote an index that lacks the lost one's images"
    assert tree.images_on_disk() == images
