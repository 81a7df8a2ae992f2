"""bootwatch and the real boom (boom-boot 1.6.8) read and write one cache the same way.

Each test lays out a boot directory that boom accepts (see ``boomenv``), with bootwatch's cache
directory being boom's ``<boot>/boom/cache``, and runs both tools as real subprocesses.

boom uncaches every path that no boom-recognised entry references each time it runs, even for
``boom cache list``. Every path cached here is therefore referenced by an entry that matches
the test OS profile, unless a test wants boom to uncache it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boomenv import BoomEnv, boom_command, boom_environment, sha1_file

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    boom_command() is None,
    reason="boom-boot is not installed: apt-get install libdbus-1-dev libglib2.0-dev "
           "pkg-config, then pip install boom-boot==1.6.8")]

#: The keys boom itself writes; anything else in the index is bootwatch's.
BOOM_TOP_KEYS = {"index", "paths", "images"}
BOOM_PATH_KEYS = {"path_mode", "path_uid", "path_gid", "path_attrs"}
BOOM_IMAGE_KEYS = {"image_ts"}

# A fixed base mtime keeps image_ts values distinct and predictable: boom picks the newest image
# by image_ts alone, and with equal timestamps its choice would depend on index order.
BASE_MTIME = 1_700_000_000


@pytest.fixture
def env(tmp_path: Path) -> Iterator[BoomEnv]:
    with boom_environment(tmp_path) as e:
        yield e


def kernel_paths(version: str) -> tuple[str, str]:
    return f"/vmlinuz-{version}", f"/initramfs-{version}.img"


def by_path(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table = {r["path"]: r for r in rows}
    assert len(table) == len(rows), f"a path is listed twice: {rows}"
    return table


def view(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str, int]]:
    """The part both tools must agree on: path -> (newest image id, state, count)."""
    return {p: (r["image_id"], r["state"], r["count"]) for p, r in by_path(rows).items()}


def assert_same_view(env: BoomEnv) -> dict[str, tuple[str, str, int]]:
    """bootwatch and boom list the same paths, newest image ids, states and counts.

    bootwatch goes first: it must not change the cache by listing it. boom goes second and must
    not change it either (no path has a count of 0): the index bytes are compared around it.
    """
    ours = env.bootwatch_list()
    before = env.index_file.read_bytes()
    theirs = env.boom_cache_list()
    assert env.index_file.read_bytes() == before, "boom rewrote the index: a path had count 0"
    for row in theirs:
        # boom 1.6.8 prints the full id in JSON; a short one would make the comparison weaker.
        assert len(row["image_id"]) == 40, row
    assert view(ours) == view(theirs), (
        f"bootwatch list --json:\n{ours}\nboom cache list --json:\n{theirs}")
    return view(ours)


def set_mtime(env: BoomEnv, img_path: str, mtime: int) -> None:
    os.utime(env.boot_file(img_path), (mtime, mtime))


def put_in_states(env: BoomEnv, versions: dict[str, str], ids: dict[str, str]) -> None:
    """From CACHED, each kernel into the state its version is for: boot files or images removed,
    the RESTORED one restored by bootwatch."""
    for state in ("MISSING", "RESTORED", "UNKNOWN"):
        for p in kernel_paths(versions[state]):
            env.boot_file(p).unlink()
    for state in ("BROKEN", "UNKNOWN"):
        for p in kernel_paths(versions[state]):
            (env.cache / f"{ids[p]}.img").unlink()
    env.bootwatch("restore", *kernel_paths(versions["RESTORED"]))


def test_boom_reads_a_cache_bootwatch_wrote_in_every_state(env: BoomEnv) -> None:
    versions = {state: f"6.1.0-{n}.bwtest" for n, state in enumerate(
        ["CACHED", "MISSING", "RESTORED", "BROKEN", "UNKNOWN"], start=1)}
    ids: dict[str, str] = {}
    for n, version in enumerate(versions.values()):
        ids.update(env.write_kernel(version))
        for p in kernel_paths(version):
            set_mtime(env, p, BASE_MTIME + n)
    # A second entry for the CACHED kernel: both tools must count 2 for it.
    env.write_entry(versions["CACHED"], *kernel_paths(versions["CACHED"]), title="second")
    modes = {p: env.boot_file(p).stat().st_mode for p in ids}

    env.bootwatch("add", *ids)
    index = env.read_index()
    assert set(index) >= BOOM_TOP_KEYS
    for p, img_id in ids.items():
        assert index["index"][p] == [img_id]
        assert (env.cache / f"{img_id}.img").read_bytes() == env.boot_file(p).read_bytes()
        assert index["paths"][p]["path_mode"] == modes[p]
        assert index["images"][img_id]["image_ts"] == env.boot_file(p).stat().st_mtime

    put_in_states(env, versions, ids)
    for p in kernel_paths(versions["RESTORED"]):
        assert sha1_file(env.boot_file(p)) == ids[p]
        assert env.boot_file(p).stat().st_mode == modes[p]
        assert env.restored_marker(p).stat().st_size == 0

    expected = {}
    for state, version in versions.items():
        count = 2 if state == "CACHED" else 1
        for p in kernel_paths(version):
            expected[p] = (ids[p], state, count)
    assert assert_same_view(env) == expected

    # boom reports image_ts of the newest image as 'ts'; bootwatch wrote the boot file's mtime.
    for row in env.boom_cache_list():
        version = next(v for v in versions.values() if v in row["path"])
        assert row["ts"] == BASE_MTIME + list(versions.values()).index(version)

    ours = by_path(env.bootwatch_list())
    for p, img_id in ids.items():
        assert ours[p]["images"] == [img_id]


def test_both_pick_the_image_with_the_highest_image_ts_as_newest(env: BoomEnv) -> None:
    version = "6.1.0-1.bwtest"
    linux, initrd = kernel_paths(version)
    env.write_kernel(version)
    set_mtime(env, linux, BASE_MTIME + 100)
    first = sha1_file(env.boot_file(linux))
    env.bootwatch("add", linux, initrd)

    # A rebuilt kernel with a later mtime: appended, and newest by both tools' rule.
    env.write_image(linux, 3000)
    set_mtime(env, linux, BASE_MTIME + 200)
    second = sha1_file(env.boot_file(linux))
    env.bootwatch("add", linux)
    assert env.read_index()["index"][linux] == [first, second]
    assert by_path(env.bootwatch_list())[linux]["images"] == [second, first]
    assert assert_same_view(env)[linux] == (second, "CACHED", 1)

    # An older build copied back, with an mtime older than the second image's. bootwatch appends
    # it; boom takes the highest image_ts as newest, so bootwatch must record a image_ts that
    # makes the content now in the boot directory the newest for boom as well.
    env.write_image(linux, 3000)
    set_mtime(env, linux, BASE_MTIME + 150)
    third = sha1_file(env.boot_file(linux))
    env.bootwatch("add", linux)
    index = env.read_index()
    assert index["index"][linux][-1] == third
    assert assert_same_view(env)[linux] == (third, "CACHED", 1)
    assert by_path(env.bootwatch_list())[linux]["images"][0] == third


def test_bootwatch_orders_boom_images_by_image_ts_not_index_order(env: BoomEnv) -> None:
    # boom itself appends a new image with image_ts = mtime, so in a cache boom wrote the last id
    # in the index need not be the newest: boom then restores the image with the highest ts.
    version = "6.1.0-1.bwtest"
    linux, initrd = kernel_paths(version)
    env.write_kernel(version)
    set_mtime(env, linux, BASE_MTIME + 300)
    newer = sha1_file(env.boot_file(linux))
    env.boom_api_cache(linux, initrd)
    env.write_image(linux, 3000)
    set_mtime(env, linux, BASE_MTIME + 250)
    older = sha1_file(env.boot_file(linux))
    env.boom_api_cache(linux)
    index = env.read_index()
    assert index["index"][linux] == [newer, older]
    assert index["images"][older]["image_ts"] < index["images"][newer]["image_ts"]

    assert assert_same_view(env)[linux] == (newer, "CACHED", 1)
    assert by_path(env.bootwatch_list())[linux]["images"] == [newer, older]

    # Both restore the same image: the one boom calls newest.
    env.boot_file(linux).unlink()
    env.bootwatch("restore", linux)
    assert sha1_file(env.boot_file(linux)) == newer
    assert assert_same_view(env)[linux] == (newer, "RESTORED", 1)


def make_boom_cache(env: BoomEnv) -> dict[str, str]:
    """A cache made by boom alone: two ``boom create --backup`` entries and one kernel cached
    through boom's API. Returns ``{path: image id}`` of the API-cached kernel (mode 0600)."""
    for n, version in enumerate(["6.1.0-1.bwtest", "6.1.0-2.bwtest"]):
        for p in kernel_paths(version):
            env.write_image(p, 3000 + n)
            set_mtime(env, p, BASE_MTIME + n)
        env.boom_create(version, backup=True)
    # boom's API caches a path under its own name (create --backup uses '.boomN' names).
    plain_ids = env.write_kernel("6.1.0-3.bwtest")
    env.boot_file(kernel_paths("6.1.0-3.bwtest")[0]).chmod(0o600)
    env.boom_api_cache(*plain_ids)
    return plain_ids


def test_bootwatch_lists_a_cache_boom_made_as_boom_does(env: BoomEnv) -> None:
    plain_ids = make_boom_cache(env)
    boom_rows = by_path(env.boom_cache_list())
    backups = {f"{p}.boom0" for v in ["6.1.0-1.bwtest", "6.1.0-2.bwtest"]
               for p in kernel_paths(v)}
    assert set(boom_rows) == backups | set(plain_ids)
    # boom restored its backups into the boot directory and marked them.
    assert {boom_rows[p]["state"] for p in backups} == {"RESTORED"}
    linux = kernel_paths("6.1.0-3.bwtest")[0]
    env.boot_file(linux).unlink()
    view_now = assert_same_view(env)
    assert view_now[linux] == (plain_ids[linux], "MISSING", 1)
    assert {view_now[p][1] for p in backups} == {"RESTORED"}


def test_bootwatch_verifies_checks_and_restores_a_cache_boom_made(env: BoomEnv) -> None:
    plain_ids = make_boom_cache(env)
    linux = kernel_paths("6.1.0-3.bwtest")[0]
    env.boot_file(linux).unlink()
    boom_before = env.boom_cache_list()
    ours = by_path(env.bootwatch_list())
    assert {p: (r["image_id"], r["count"]) for p, r in ours.items()} == \
        {r["path"]: (r["image_id"], r["count"]) for r in boom_before}
    assert ours[linux]["state"] == "MISSING"

    verify = env.bootwatch("verify", check=False)
    assert verify.returncode == 0, f"verify on boom's cache:\n{verify.stdout}{verify.stderr}"
    fsck = env.bootwatch("fsck", check=False)
    assert fsck.returncode == 0, f"fsck on boom's cache:\n{fsck.stdout}{fsck.stderr}"
    fsck_json = env.bootwatch("fsck", "--json", check=False)
    assert fsck_json.returncode == 0, fsck_json.stdout + fsck_json.stderr
    # Whatever verify or fsck recorded in the index, boom still reads it the same way.
    assert env.boom_cache_list() == boom_before

    env.bootwatch("restore", linux)
    assert sha1_file(env.boot_file(linux)) == plain_ids[linux]
    assert env.boot_file(linux).stat().st_mode & 0o7777 == 0o600
    assert env.restored_marker(linux).exists()
    assert by_path(env.boom_cache_list())[linux]["state"] == "RESTORED"
    assert by_path(env.bootwatch_list())[linux]["state"] == "RESTORED"


def test_bootwatch_reads_the_index_after_boom_uncached_paths(env: BoomEnv) -> None:
    kept, orphan, later = "6.1.0-1.bwtest", "6.1.0-2.bwtest", "6.1.0-3.bwtest"
    kept_ids = env.write_kernel(kept)
    # The orphan's files exist but no entry uses them: boom's count is 0.
    orphan_ids = {p: env.write_image(p) for p in kernel_paths(orphan)}
    env.bootwatch("add", *kept_ids, *orphan_ids)
    mine = env.read_index()
    extras_paths = {p: {k: v for k, v in mine["paths"][p].items() if k not in BOOM_PATH_KEYS}
                    for p in kept_ids}
    extras_images = {i: {k: v for k, v in mine["images"][i].items() if k not in BOOM_IMAGE_KEYS}
                     for i in kept_ids.values()}

    # Any boom command cleans the cache after doing its job: 'boom cache list' still reports the
    # orphan's paths (with count 0), then uncaches them and deletes their images.
    boom_rows = by_path(env.boom_cache_list())
    assert {p: r["count"] for p, r in boom_rows.items()} == \
        {**{p: 1 for p in kept_ids}, **{p: 0 for p in orphan_ids}}
    theirs = env.read_index()
    assert set(theirs["index"]) == set(kept_ids)
    for img_id in orphan_ids.values():
        assert not (env.cache / f"{img_id}.img").exists()

    # bootwatch put its per-path and per-image data where boom carries it along.
    for p in kept_ids:
        assert {k: v for k, v in theirs["paths"][p].items() if k not in BOOM_PATH_KEYS} == \
            extras_paths[p]
    for img_id in kept_ids.values():
        assert {k: v for k, v in theirs["images"][img_id].items()
                if k not in BOOM_IMAGE_KEYS} == extras_images[img_id]

    # bootwatch reads what boom wrote, finds nothing wrong, and agrees with boom.
    view_now = assert_same_view(env)
    assert {p: v[1] for p, v in view_now.items()} == {p: "CACHED" for p in kept_ids}
    for cmd in (["verify"], ["fsck"]):
        proc = env.bootwatch(*cmd, check=False)
        assert proc.returncode == 0, f"{cmd} after boom's clean:\n{proc.stdout}{proc.stderr}"

    # A bootwatch mutation keeps its own keys (verify may have added some) and boom's.
    before_add = env.read_index()
    later_ids = env.write_kernel(later)
    env.bootwatch("add", *later_ids)
    final = env.read_index()
    for p in kept_ids:
        assert final["paths"][p] == before_add["paths"][p]
        assert {k: final["paths"][p][k] for k in BOOM_PATH_KEYS} == \
            {k: theirs["paths"][p][k] for k in BOOM_PATH_KEYS}
    for img_id in kept_ids.values():
        assert final["images"][img_id] == before_add["images"][img_id]
        assert final["images"][img_id]["image_ts"] == theirs["images"][img_id]["image_ts"]
    # boom drops unknown top-level keys when it rewrites; bootwatch must not depend on them.
    assert set(theirs) == BOOM_TOP_KEYS, f"boom kept top-level keys {set(theirs)}"
    assert set(view(env.bootwatch_list())) == set(kept_ids) | set(later_ids)
    assert_same_view(env)


def test_boom_works_after_bootwatch_restored_and_cleans_up_its_marker(env: BoomEnv) -> None:
    version = "6.1.0-1.bwtest"
    ids = env.write_kernel(version)
    modes = {p: env.boot_file(p).stat().st_mode for p in ids}
    env.bootwatch("add", *ids)
    for p in ids:
        env.boot_file(p).unlink()
    env.bootwatch("restore", *ids)
    markers = [env.restored_marker(p) for p in ids]
    assert all(m.exists() for m in markers)

    assert {p: v[1] for p, v in assert_same_view(env).items()} == \
        {p: "RESTORED" for p in ids}
    # 'boom cache show' prints the mode bootwatch recorded, as ls would.
    show = env.boom("cache", "show").stdout
    for p in ids:
        assert f"Path: {p}\n" in show
    assert show.count(f"Mode: {stat.filemode(modes[next(iter(ids))])}") == 2, show

    # With its entry gone, boom uncaches the paths and, seeing bootwatch's markers, treats the
    # restored files as its own: it removes both the files and the markers.
    for entry in env.entries.glob("*.conf"):
        entry.unlink()
    assert {r["count"] for r in env.boom_cache_list()} == {0}
    assert env.boom_cache_list() == []
    for p in ids:
        assert not env.boot_file(p).exists()
    assert not any(m.exists() for m in markers)
    assert env.bootwatch_list() == []
    proc = env.bootwatch("fsck", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
