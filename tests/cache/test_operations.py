"""The cache operations through the command line: add, remove, restore, list/show, verify and clean.

States are the ones boom computes from a path's newest image (highest ``image_ts``):
RESTORED (boot file + image + dot file, same content), CACHED (both files), MISSING (image only),
BROKEN (boot file only), UNKNOWN (neither).
"""

from __future__ import annotations

import ctypes
import os
import select
import stat
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import imagefactory
import pytest

from bootwatch import linux

K = "/vmlinuz-1"
INITRD = "/initramfs-1.img"


def state(tree, path: str) -> str:
    return tree.list_json()[path]["state"]


@pytest.fixture
def kernel(boot_tree):
    """A referenced, cached kernel and initramfs: {path: sha1}."""
    ids = {K: boot_tree.write_file(K, 8192), INITRD: boot_tree.write_file(INITRD, 16384)}
    boot_tree.write_entry("linux-1", linux=K, initrd=[INITRD])
    rc, out, err = boot_tree.cli("add", K, INITRD)
    assert rc == 0, err
    return ids


# ------------------------------------------------------------------------------------ add, list

@pytest.mark.slow
def test_add_writes_boom_files_and_list_json_has_the_keys(boot_tree, kernel) -> None:
    assert boot_tree.images_on_disk() == sorted(kernel.values())
    for image_id in kernel.values():
        assert boot_tree.sha1_of(boot_tree.image(image_id)) == image_id
    data = boot_tree.read_index()
    assert set(data) >= {"index", "paths", "images"}
    assert data["index"] == {K: [kernel[K]], INITRD: [kernel[INITRD]]}
    rows = boot_tree.cli_json("list", "--json")
    assert isinstance(rows, list) and len(rows) == 2
    for row in rows:
        assert {"path", "image_id", "state", "count", "images"} <= set(row)
        assert row["image_id"] == kernel[row["path"]] and len(row["image_id"]) == 40
        assert row["images"] == [row["image_id"]]
        assert (row["state"], row["count"]) == ("CACHED", 1)


@pytest.mark.slow
def test_add_accepts_an_absolute_path_inside_the_boot_directory(boot_tree) -> None:
    image_id = boot_tree.write_file(K)
    rc, out, err = boot_tree.cli("add", str(boot_tree.path(K)))
    assert rc == 0, err
    assert boot_tree.list_json()[K]["image_id"] == image_id


@pytest.mark.slow
def test_adding_unchanged_content_adds_no_id_and_does_not_rewrite(boot_tree, kernel) -> None:
    before = boot_tree.index_bytes()
    rc, out, err = boot_tree.cli("add", K)
    assert rc == 0 and "unchanged" in out
    assert boot_tree.index_bytes() == before


@pytest.mark.slow
def test_changed_content_appends_a_new_id_and_keep_trims(boot_tree) -> None:
    boot_tree.set_keep(3)
    boot_tree.write_entry("one", linux=K)  # references known: an add trims only then
    ids: list[str] = []
    for n in range(5):
        ids.append(boot_tree.write_file(K, 1000 + n))
        rc, out, err = boot_tree.cli("add", K)
        assert rc == 0, err
        assert ("cached" if n == 0 else "changed") in out
        row = boot_tree.list_json()[K]
        assert row["images"] == ids[::-1][:3], "images must be newest first, keep = 3"
        assert row["image_id"] == ids[-1]
    assert boot_tree.read_index()["index"][K] == ids[-3:], "index order: oldest first, new ids appended"
    assert boot_tree.images_on_disk() == sorted(ids[-3:]), "trimmed images must be deleted"


@pytest.mark.slow
def test_show_prints_the_path_in_detail(boot_tree, kernel) -> None:
    rc, out, err = boot_tree.cli("show", K)
    assert rc == 0, err
    assert K in out and kernel[K] in out and "CACHED" in out
    shown = boot_tree.cli_json("show", K, "--json")
    assert shown["image_id"] == kernel[K] and shown["count"] == 1
    rc, out, err = boot_tree.cli("show", "/not-cached")
    boot_tree.assert_clean_error(rc, err, names=["/not-cached"])


def test_list_prints_a_table(boot_tree, kernel) -> None:
    rc, out, err = boot_tree.cli("list")
    assert rc == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["PATH", "IMAGE", "STATE", "COUNT"]
    assert sorted(r.split()[0] for r in rows) == sorted(kernel)


# ------------------------------------------------------------------------------------ states

@pytest.mark.slow
def test_states_as_boom_computes_them(boot_tree, kernel) -> None:
    assert state(boot_tree, K) == "CACHED"
    boot_tree.path(K).unlink()
    assert state(boot_tree, K) == "MISSING"
    rc, out, err = boot_tree.cli("restore", K)
    assert rc == 0, err
    assert state(boot_tree, K) == "RESTORED"
    # A restored file that someone rewrote is no longer the restored image: CACHED.
    boot_tree.write_file(K, 100)
    assert state(boot_tree, K) == "CACHED"
    # Image gone, boot file present: BROKEN; both gone: UNKNOWN.
    boot_tree.image(kernel[INITRD]).unlink()
    assert state(boot_tree, INITRD) == "BROKEN"
    boot_tree.path(INITRD).unlink()
    assert state(boot_tree, INITRD) == "UNKNOWN"


@pytest.mark.slow
def test_a_dot_file_beside_an_unchanged_cached_file_is_restored(boot_tree, kernel) -> None:
    (boot_tree.boot / ".vmlinuz-1.boomrestored").write_bytes(b"")
    assert state(boot_tree, K) == "RESTORED"


@pytest.mark.slow
def test_the_state_comes_from_the_newest_image(boot_tree, kernel) -> None:
    old = kernel[K]
    new = boot_tree.write_file(K, 300)
    assert boot_tree.cli("add", K)[0] == 0
    boot_tree.image(new).unlink()
    row = boot_tree.list_json()[K]
    assert row["image_id"] == new and row["images"] == [new, old]
    assert row["state"] == "BROKEN", "boom looks at the newest image only, even though an older one exists"


# ------------------------------------------------------------------------------------ remove

@pytest.mark.slow
def test_remove_is_refused_while_referenced(boot_tree, kernel) -> None:
    before = boot_tree.index_bytes()
    rc, out, err = boot_tree.cli("remove", K)
    line = boot_tree.assert_clean_error(rc, err, names=[K])
    assert "referenced by 1 boot entry" in line
    assert boot_tree.index_bytes() == before
    rc, out, err = boot_tree.cli("remove", "--force", K)
    assert rc == 0, err
    assert K not in boot_tree.list_json()
    assert kernel[K] not in boot_tree.images_on_disk(), "the unshared image must be deleted"
    assert boot_tree.path(K).exists(), "remove never touches a boot file that was not restored by us"


@pytest.mark.slow
def test_remove_of_an_unreferenced_path_needs_no_force(boot_tree, kernel) -> None:
    boot_tree.remove_entry("linux-1")
    rc, out, err = boot_tree.cli("remove", K, INITRD)
    assert rc == 0, err
    assert boot_tree.list_json() == {}
    assert boot_tree.images_on_disk() == []


@pytest.mark.slow
def test_an_image_shared_by_two_paths_stays_until_both_are_removed(boot_tree) -> None:
    data = os.urandom(3000)
    image_id = boot_tree.write_file("/a", content=data)
    boot_tree.write_file("/b", content=data)
    c_id = boot_tree.write_file("/c")
    boot_tree.write_entry("c", linux="/c")  # references known: remove refuses while they are not
    assert boot_tree.cli("add", "/a", "/b", "/c")[0] == 0
    assert boot_tree.cli("remove", "/a")[0] == 0
    assert boot_tree.images_on_disk() == sorted([image_id, c_id])
    assert boot_tree.cli("remove", "/b")[0] == 0
    assert boot_tree.images_on_disk() == [c_id]


@pytest.mark.slow
def test_remove_of_a_path_that_is_not_cached_fails(boot_tree, kernel) -> None:
    rc, out, err = boot_tree.cli("remove", "/vmlinuz-nope")
    boot_tree.assert_clean_error(rc, err, names=["/vmlinuz-nope"])


# ------------------------------------------------------------------------------------ restore

class Inotify:
    """Just enough of inotify(7) to see how a file came to be: created, written, renamed or linked."""

    IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
    NAMES = {IN_MODIFY: "MODIFY", IN_CLOSE_WRITE: "CLOSE_WRITE", IN_MOVED_TO: "MOVED_TO", IN_CREATE: "CREATE"}

    def __init__(self, directory: Path) -> None:
        libc = linux.libc()  # the C library, loaded once
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        mask = self.IN_MODIFY | self.IN_CLOSE_WRITE | self.IN_MOVED_TO | self.IN_CREATE
        if libc.inotify_add_watch(self.fd, os.fsencode(directory), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

    def events(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        while select.select([self.fd], [], [], 0.2)[0]:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, offset)
                name = buf[offset + 16:offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                for bit, label in self.NAMES.items():
                    if mask & bit:
                        out.append((label, name))
        return out

    def close(self) -> None:
        os.close(self.fd)


@contextmanager
def watching(directory: Path) -> Iterator[Inotify]:
    watcher = Inotify(directory)
    try:
        yield watcher
    finally:
        watcher.close()


@pytest.mark.slow
def test_restore_brings_back_content_mode_owner_and_dot_file_through_a_temp_file(boot_tree, needs_root) -> None:
    image_id = boot_tree.write_file(K, 20000, mode=0o600, mtime=1_600_000_000)
    # Restoring as root must give the file back to its owner, here a non-root uid and gid that
    # own the boot directory (any other owner would be refused: see test_restore_trust.py).
    os.chown(boot_tree.path(K), 1234, 5678)
    os.chown(boot_tree.boot, 1234, 5678)
    boot_tree.write_entry("linux-1", linux=K)
    assert boot_tree.cli("add", K)[0] == 0
    content = boot_tree.path(K).read_bytes()
    boot_tree.path(K).unlink()
    assert state(boot_tree, K) == "MISSING"

    with watching(boot_tree.boot) as inotify:
        rc, out, err = boot_tree.cli("restore", K)
        events = inotify.events()
    assert rc == 0, err
    assert image_id in out
    st = os.lstat(boot_tree.path(K))
    assert boot_tree.path(K).read_bytes() == content
    assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)) == (stat.S_IFREG, 0o600)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert int(st.st_mtime) == boot_tree.list_json()[K]["image_ts"]
    marker = boot_tree.boot / ".vmlinuz-1.boomrestored"
    assert marker.is_file() and marker.stat().st_size == 0
    assert state(boot_tree, K) == "RESTORED"

    # How the kernel saw it: the content was written to a temp name, and the final name only
    # appeared (link or rename) once that file was complete; it was never written to.
    temps = {name for ev, name in events if ev == "CREATE" and name.startswith(".bootwatch-restore.")}
    assert len(temps) == 1, events
    temp = temps.pop()
    assert ("MODIFY", "vmlinuz-1") not in events and ("CLOSE_WRITE", "vmlinuz-1") not in events, events
    appeared = [i for i, (ev, name) in enumerate(events) if name == "vmlinuz-1" and ev in ("CREATE", "MOVED_TO")]
    written = [i for i, (ev, name) in enumerate(events) if name == temp and ev == "MODIFY"]
    assert appeared and written and max(written) < appeared[0], events
    assert not [p for p in boot_tree.boot.iterdir() if p.name.startswith(".bootwatch-restore.")]


@pytest.mark.slow
def test_restore_refuses_a_path_that_is_not_missing(boot_tree, kernel) -> None:
    before = boot_tree.path(K).read_bytes()
    rc, out, err = boot_tree.cli("restore", K)
    line = boot_tree.assert_clean_error(rc, err, names=[K])
    assert "CACHED" in line
    assert boot_tree.path(K).read_bytes() == before


@pytest.mark.slow
def test_restore_refuses_a_corrupt_image(boot_tree, kernel) -> None:
    image = boot_tree.image(kernel[K])
    image.write_bytes(os.urandom(image.stat().st_size))
    boot_tree.path(K).unlink()
    rc, out, err = boot_tree.cli("restore", K)
    line = boot_tree.assert_clean_error(rc, err, names=[kernel[K]])
    assert "corrupt" in line
    assert not boot_tree.path(K).exists()
    assert not [p for p in boot_tree.boot.iterdir() if p.name.startswith(".bootwatch-restore.")]


# ------------------------------------------------------------------------------------ verify

@pytest.mark.slow
def test_verify_detects_an_image_that_no_longer_matches_its_id(boot_tree, kernel) -> None:
    rc, out, err = boot_tree.cli("verify")
    assert rc == 0, err
    assert out.count("ok") == 2
    assert "ok" in boot_tree.cli("list")[1]

    image = boot_tree.image(kernel[K])
    # Same size, other content: only re-hashing can tell.
    image.write_bytes(os.urandom(image.stat().st_size))
    assert boot_tree.list_json()[K]["image_problem"] is None, "nothing has re-hashed it yet"
    rc, out, err = boot_tree.cli("verify")
    assert rc == 1
    assert "Traceback" not in err
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and kernel[K][:12] in failed[0] and "hashes to" in failed[0], out
    results = boot_tree.cli("verify", "--json")
    assert results[0] == 1
    # After verify, list reports the problem, in JSON and in the table.
    row = boot_tree.list_json()[K]
    assert row["image_problem"] and "failed verification" in row["image_problem"]
    assert boot_tree.list_json()[INITRD]["image_problem"] is None
    rc, out, err = boot_tree.cli("list")
    assert "FAILED" in out and "failed verification" in out
    # verify of the other path alone still passes.
    assert boot_tree.cli("verify", INITRD)[0] == 0


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not imagefactory.have("mkfs.ext4"), reason="needs root and mkfs.ext4")
def test_a_content_check_cut_off_by_the_bound_is_recorded_unchecked(boot_tree, tmp_path: Path) -> None:
    """A real ext4 image whose walk is cut off by the verify run's bound: hashed, not checked. It is
    recorded neither ok nor failed and without a time, so list/show/metrics say unchecked and the
    next run takes it first."""
    from bootwatch.daemon.jobs import least_recently_verified
    from bootwatch.daemon.metrics import Metrics

    fs = imagefactory.build_ext4(boot_tree.boot / "root.img", imagefactory.make_tree(tmp_path / "tree"))
    kernel_id = boot_tree.write_file(K, 8192)
    boot_tree.write_entry("linux-1", linux=K, initrd=["/root.img"])
    assert boot_tree.cli("add", K, "/root.img")[0] == 0
    assert boot_tree.cli("verify")[0] == 0  # both ok, with a time: the ext4 walk had no bound
    fs_id = boot_tree.list_json()["/root.img"]["image_id"]
    assert boot_tree.sha1_of(fs) == fs_id

    cache = boot_tree.library()
    cache.runtime_dir = tmp_path / "run"
    result = cache.verify_image(cache.load_index(), fs_id, deadline=time.monotonic())  # the bound is past
    assert (result.ok, result.unchecked, result.failed) == (False, True, False)
    assert [check.outcome for check in result.checks] == ["incomplete"] and "gave up" in result.message
    assert cache.record_verifications([result]) == [result]

    row = boot_tree.list_json()["/root.img"]
    assert (row["verified"]["ok"], row["verified"]["unchecked"], row["verified"]["time"]) == (False, True, None)
    assert row["image_problem"] is None  # slowness is not corruption
    assert boot_tree.list_json()[K]["verified"]["ok"] is True
    listed = next(line for line in boot_tree.cli("list")[1].splitlines() if "/root.img" in line)
    assert "unchecked" in listed and "ok" not in listed.split() and "FAILED" not in listed
    assert "Verified:   unchecked (not checked: gave up" in boot_tree.cli("show", "/root.img")[1]
    assert least_recently_verified(cache.load_index())[0] == fs_id  # the next run takes it first
    assert kernel_id != fs_id
    text = Metrics(tmp_path / "bootwatch.prom").render(cache)
    assert "bootwatch_images_verification_failed 0" in text
    assert "bootwatch_images_verification_unchecked 1" in text


@pytest.mark.slow
def test_a_truncated_image_is_reported_by_list_without_verify(boot_tree, kernel) -> None:
    image = boot_tree.image(kernel[INITRD])
    with open(image, "r+b") as f:
        f.truncate(10)
    row = boot_tree.list_json()[INITRD]
    assert row["image_problem"] and "differs" in row["image_problem"]


# ------------------------------------------------------------------------------------ clean

@pytest.mark.slow
def test_clean_uncaches_trims_removes_orphans_and_temps_but_keeps_pins(boot_tree) -> None:
    boot_tree.set_keep(3)
    ref_ids = []
    for n in range(3):
        ref_ids.append(boot_tree.write_file(K, 500 + n))
        assert boot_tree.cli("add", K)[0] == 0
    boot_tree.write_entry("linux-1", linux=K)
    old_id = boot_tree.write_file("/vmlinuz-old", 700)
    pinned_id = boot_tree.write_file("/vmlinuz-pinned", 800)
    assert boot_tree.cli("add", "/vmlinuz-old", "/vmlinuz-pinned")[0] == 0
    # A pin is any file links/<id>.<anything>; an orphan pinned image stays too.
    orphan = os.urandom(900)
    orphan_id = boot_tree.sha1_bytes(orphan)
    boot_tree.image(orphan_id).write_bytes(orphan)
    pinned_orphan = os.urandom(901)
    pinned_orphan_id = boot_tree.sha1_bytes(pinned_orphan)
    boot_tree.image(pinned_orphan_id).write_bytes(pinned_orphan)
    links = boot_tree.cache / "links"
    links.mkdir(mode=0o700)
    os.link(boot_tree.image(pinned_id), links / f"{pinned_id}.4242.img")
    (links / f"{pinned_orphan_id}.anything").write_bytes(b"")
    temp = boot_tree.cache / ".bootwatch-tmp.99999.abc.0"
    temp.write_bytes(b"half")

    boot_tree.set_keep(1)
    snapshot = {p.name: p.read_bytes() for p in boot_tree.cache.iterdir() if p.is_file()}
    rc, out, err = boot_tree.cli("clean", "--dry-run")
    assert rc == 0, err
    assert "would uncache /vmlinuz-old" in out and f"would delete image {orphan_id[:12]}" in out
    assert {p.name: p.read_bytes() for p in boot_tree.cache.iterdir() if p.is_file()} == snapshot, \
        "a dry run changed the cache"

    report = boot_tree.cli_json("clean", "--json")
    assert report["uncached_paths"] == ["/vmlinuz-old"]
    assert sorted(report["trimmed_images"]) == sorted(ref_ids[:2])
    assert "/vmlinuz-pinned" in report["kept_pinned"]
    rows = boot_tree.list_json()
    assert set(rows) == {K, "/vmlinuz-pinned"}
    assert rows[K]["images"] == [ref_ids[-1]]
    assert boot_tree.images_on_disk() == sorted([ref_ids[-1], pinned_id, pinned_orphan_id])
    assert old_id not in boot_tree.images_on_disk() and orphan_id not in boot_tree.images_on_disk()
    assert not temp.exists()
    assert boot_tree.path("/vmlinuz-old").exists(), "clean never deletes a boot file it did not restore"
    again = boot_tree.cli_json("clean", "--json")
    assert again["uncached_paths"] == again["deleted_images"] == again["trimmed_images"] == [], again


@pytest.mark.slow
def test_clean_removes_a_restored_copy_nothing_references(boot_tree, kernel) -> None:
    boot_tree.path(K).unlink()
    assert boot_tree.cli("restore", K)[0] == 0
    boot_tree.remove_entry("linux-1")
    report = boot_tree.cli_json("clean", "--json")
    assert K in report["uncached_paths"] and K in report["removed_restored_copies"]
    assert not boot_tree.path(K).exists()
    assert not (boot_tree.boot / ".vmlinuz-1.boomrestored").exists()
    assert boot_tree.path(INITRD).exists(), "a file bootwatch did not restore stays"


def test_library_add_reports_outcomes(boot_tree) -> None:
    cache = boot_tree.library(keep=2)
    first = boot_tree.write_file(K, 100)
    [r] = cache.add([K])
    assert (r.outcome, r.image_id, r.previous_id) == ("cached", first, None)
    [r] = cache.add([K])
    assert r.outcome == "unchanged"
    second = boot_tree.write_file(K, 101)
    [r] = cache.add([K])
    assert (r.outcome, r.image_id, r.previous_id) == ("changed", second, first)


@pytest.mark.slow
def test_a_failed_add_of_several_paths_writes_nothing(boot_tree, kernel) -> None:
    before = boot_tree.index_bytes()
    boot_tree.write_file("/new", 100)
    rc, out, err = boot_tree.cli("add", "/new", "/does-not-exist")
    boot_tree.assert_clean_error(rc, err, names=["does-not-exist"])
    assert boot_tree.index_bytes() == before


@pytest.mark.slow
def test_add_replaces_a_rotten_image_file_instead_of_trusting_its_name(boot_tree) -> None:
    """An unlisted ``<id>.img`` of the right size but other content must not become the cached copy."""
    image_id = boot_tree.write_file(K, 6000)
    boot_tree.cache.mkdir(mode=0o700)
    boot_tree.index_file.write_text('{"index": {}, "paths": {}, "images": {}}')  # (images without one: a lost index)
    boot_tree.image(image_id).write_bytes(os.urandom(6000))  # same size, wrong content
    rc, out, err = boot_tree.cli("add", K)
    assert rc == 0, err
    assert boot_tree.sha1_of(boot_tree.image(image_id)) == image_id
    assert boot_tree.cli("verify")[0] == 0
