"""The on-disk store: temp files that only become final by rename, the index file, the image names."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from bootwatch.atomic import TempFile
from bootwatch.cache.hashing import hash_path
from bootwatch.cache.index import CacheIndex
from bootwatch.cache.store import TEMP_PREFIX, CacheStore
from bootwatch.errors import IndexCorruptError


@pytest.fixture
def store(tmp_path: Path) -> CacheStore:
    s = CacheStore(tmp_path / "cache")
    s.check(create=True)
    return s


def listing(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir())


def test_check_creates_a_private_directory(tmp_path: Path) -> None:
    s = CacheStore(tmp_path / "a" / "cache")
    s.check(create=True)
    assert stat.S_IMODE(os.lstat(s.directory).st_mode) == 0o700


def test_a_temp_file_left_without_commit_is_removed(store: CacheStore) -> None:
    with pytest.raises(RuntimeError), TempFile(store.directory, TEMP_PREFIX) as tmp:
        os.write(tmp.fd, b"half")
        assert tmp.path is not None and tmp.path.name.startswith(TEMP_PREFIX)
        raise RuntimeError("interrupted")
    assert listing(store.directory) == []


def test_commit_renames_and_replaces(store: CacheStore) -> None:
    final = store.directory / "final"
    final.write_bytes(b"old")
    with TempFile(store.directory, TEMP_PREFIX) as tmp:
        os.write(tmp.fd, b"new")
        tmp.commit(final)
    assert final.read_bytes() == b"new"
    assert listing(store.directory) == ["final"]


def test_commit_without_replace_keeps_an_existing_file(store: CacheStore) -> None:
    final = store.directory / "final"
    final.write_bytes(b"theirs")
    with pytest.raises(FileExistsError), TempFile(store.directory, TEMP_PREFIX) as tmp:
        os.write(tmp.fd, b"ours")
        tmp.commit(final, replace=False)
    assert final.read_bytes() == b"theirs"
    assert listing(store.directory) == ["final"], "the temp file must be gone"


def test_temp_files_are_created_exclusively_and_private(store: CacheStore) -> None:
    with TempFile(store.directory, TEMP_PREFIX) as tmp:
        assert tmp.path is not None
        assert stat.S_IMODE(os.fstat(tmp.fd).st_mode) == 0o600
        # The name is taken: creating it again exclusively fails, as O_EXCL promises.
        with pytest.raises(FileExistsError):
            os.open(tmp.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def test_write_index_is_atomic_and_readable(store: CacheStore, tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"x" * 10)
    index = CacheIndex()
    index.add_image("/k", hash_path(tmp_path / "src")[0], 0o100644, 0, 0, 5, cached_at=5)
    with store.locked():  # writers hold the lock, which also makes the temp directory
        digest = store.write_index(index)
    # Nothing but the index and the protocol's own files; the temp file is gone.
    assert listing(store.directory) == [".bootwatch.lock", ".tmp", "cacheindex.json"]
    assert listing(store.temp_dir) == []
    assert digest == hashlib.sha1(store.index_path.read_bytes()).hexdigest()
    assert stat.S_IMODE(os.stat(store.index_path).st_mode) == 0o644
    assert store.load_index().raw() == json.loads(store.index_path.read_text()) == index.raw()


def test_a_missing_index_is_an_empty_cache(store: CacheStore) -> None:
    assert len(store.load_index()) == 0


def test_a_symlinked_index_is_refused(store: CacheStore, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"index": {}, "paths": {}, "images": {}}))
    os.symlink(target, store.index_path)
    with pytest.raises(IndexCorruptError, match="symlink"):
        store.load_index()


def test_a_kept_corrupt_copy_is_a_copy_and_never_overwritten(store: CacheStore) -> None:
    store.temp_dir.mkdir(mode=0o700)
    store.index_path.write_bytes(b"{garbage")
    first = store.keep_corrupt_copy(store.index_path.read_bytes())
    assert store.index_path.read_bytes() == b"{garbage", "the corrupt index stays at its name"
    assert store.keep_corrupt_copy(b"{garbage") == first, "the same bytes are kept once"
    second = store.keep_corrupt_copy(b"{more garbage")
    assert first != second, "a second corrupt index must not overwrite the first"
    assert first.read_bytes() == b"{garbage" and second.read_bytes() == b"{more garbage"
    assert first.name.startswith("cacheindex.json.corrupt-")
    assert store.unsuperseded_corrupt_copies() == sorted([first, second])
    store.mark_superseded(first)
    assert store.unsuperseded_corrupt_copies() == [second]


def test_stale_temp_files_are_removed_by_the_next_lock_holder(store: CacheStore, tmp_path: Path) -> None:
    (store.directory / f"{TEMP_PREFIX}123.abc.0").write_bytes(b"half an image")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, store.directory / f"{TEMP_PREFIX}evil")
    with store.locked():
        pass
    # bootwatch's temp files are regular files: a symlink of that name is not one, and stays.
    assert [n for n in listing(store.directory) if n.startswith(TEMP_PREFIX)] == [f"{TEMP_PREFIX}evil"]
    assert victim.read_bytes() == b"precious", "a symlink named like a temp file must not touch its target"


def test_only_regular_sha1_named_files_are_images(store: CacheStore, tmp_path: Path) -> None:
    good = hashlib.sha1(b"x").hexdigest()
    (store.directory / f"{good}.img").write_bytes(b"x")
    (store.directory / f"{'b' * 40}.img.old").write_bytes(b"y")
    (store.directory / "notanid.img").write_bytes(b"z")
    os.symlink(tmp_path, store.directory / f"{'c' * 40}.img")
    (store.directory / f"{'d' * 40}.img").mkdir()
    assert store.image_ids_on_disk() == [good]
    assert store.has_image(good) and not store.has_image("c" * 40) and not store.has_image("d" * 40)


def test_pinned_ids_come_from_links(store: CacheStore) -> None:
    store.links_dir.mkdir()
    (store.links_dir / f"{'a' * 40}.1234.img").write_bytes(b"")
    (store.links_dir / "junk").write_bytes(b"")
    assert store.pinned_image_ids() == {"a" * 40}


def test_lost_found_never_replaces_an_earlier_copy(tmp_path: Path) -> None:
    from bootwatch.cache.store import CacheStore
    store = CacheStore(tmp_path / "cache")
    store.check(create=True)
    image_id = "a" * 40
    kept = []
    for content in (b"first", b"second"):
        store.image_path(image_id).write_bytes(content)
        kept.append(store.move_to_lost_found(image_id, ".corrupt"))
    assert kept[0] != kept[1]
    assert [p.read_bytes() for p in kept] == [b"first", b"second"]


def test_images_and_a_symlinked_index_are_read_in_the_directory_opened(store: CacheStore, tmp_path: Path) -> None:
    """fsck's and the daemon's image hashes, and the copy of a symlinked index, go through the
    descriptor opened once: a directory swapped in under the cache's name
    afterwards is never read."""
    content = b"the image"
    image_id = hashlib.sha1(content).hexdigest()
    (store.directory / f"{image_id}.img").write_bytes(content)
    os.symlink("/somewhere/cacheindex.json", store.directory / "cacheindex.json")
    assert store.fd >= 0  # opened (and checked) now
    os.rename(store.directory, tmp_path / "moved")
    store.directory.mkdir(mode=0o700)
    (store.directory / f"{image_id}.img").write_bytes(b"another image")
    os.symlink("/elsewhere/cacheindex.json", store.directory / "cacheindex.json")
    assert store.hash_image(image_id).sha1 == image_id
    assert store.index_is_symlink()
    copy = store.keep_corrupt_symlink()
    assert os.readlink(tmp_path / "moved" / copy.name) == "/somewhere/cacheindex.json"
    assert not (store.directory / copy.name).exists() and not (store.directory / copy.name).is_symlink()


@pytest.mark.slow
def test_a_listing_in_another_thread_never_hides_an_unsuperseded_corrupt_copy(tmp_path: Path) -> None:
    """Two threads listing the one cache descriptor at once (the daemon's worker with its
    lock-free counts, the clean job under the lock) must each see the whole directory: a dup of a
    descriptor shares its offset, so a listing through one would see part of it, often nothing,
    and a corrupt copy missed turns clean's deletion block off."""
    import threading
    os.chmod(tmp_path, 0o755)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    for i in range(20):
        data = str(i).encode()
        (cache / (hashlib.sha1(data).hexdigest() + ".img")).write_bytes(data)
    (cache / "cacheindex.json.corrupt-20261205T000000").write_text("{")
    store = CacheStore(cache)
    store.check()
    stop = threading.Event()
    short_listings = []

    def other_thread() -> None:
        while not stop.is_set():
            if len(store.image_ids_on_disk()) != 20:
                short_listings.append(1)

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        blind = sum(1 for _ in range(5000) if not store.unsuperseded_corrupt_copies())
    finally:
        stop.set()
        thread.join()
    assert blind == 0 and not short_listings, f"{blind} blind corrupt-copy checks, {len(short_listings)} short listings"


def test_the_temp_descriptor_another_thread_holds_stays_the_temp_directory(store: CacheStore) -> None:
    """Each holder of the lock checks .tmp again; the descriptor another thread got before (a
    listing, a writer of another thread) must never be closed under it, or its number goes to the
    next file opened and that thread works in the wrong directory."""
    held = store.temp_fd
    before = os.fstat(held)
    with store.locked():
        pass
    other = os.open(store.directory, os.O_RDONLY | os.O_DIRECTORY)  # takes the lowest free number
    try:
        now = os.fstat(held)
        assert (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino)
        assert store.temp_fd == held  # the same directory keeps its descriptor
    finally:
        os.close(other)


def test_a_replaced_temp_directory_is_used_by_the_next_holder_and_the_old_descriptor_stays_valid(
        store: CacheStore) -> None:
    held = store.temp_fd
    old = os.fstat(held)
    (store.directory / ".tmp").rename(store.directory / "old-tmp")
    (store.directory / ".tmp").mkdir(mode=0o700)
    with store.locked():
        new = os.fstat(store.temp_fd)
        assert (new.st_dev, new.st_ino) == (os.stat(store.directory / ".tmp").st_dev,
                                            os.stat(store.directory / ".tmp").st_ino)
    other = os.open(store.directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        now = os.fstat(held)
        assert (now.st_dev, now.st_ino) == (old.st_dev, old.st_ino)
    finally:
        os.close(other)
    store.close()
    with pytest.raises(OSError):
        os.fstat(held)  # closed with the store
