"""Every mutation holds ``flock(LOCK_EX)`` on the cache's lock file; readers see the old or the new index.

Eight processes add and remove their own paths at the same time. Without the lock, two writers
that load the same index and each write back their own change lose one of them (boom's weakness);
with it, the final index holds exactly what every process did last. A reader that parses the index
in a tight loop, without retries, never sees a torn file, because the index is only ever replaced
by rename(2).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time

import pytest

from bootwatch.cache.index import CacheIndex

pytestmark = pytest.mark.slow

WORKERS = 8
ITERATIONS = 25
PATHS_PER_WORKER = 3

WORKER = r'''
import hashlib, json, os, random, sys
from pathlib import Path
from bootwatch.cache.operations import BootCache

boot, cache, worker = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
iterations, per_worker = int(sys.argv[4]), int(sys.argv[5])
rnd = random.Random(worker)
bc = BootCache(boot, boot / "loader" / "entries", cache, keep=2)
mine = [f"/w{worker}-{n}" for n in range(per_worker)]
state = {}
for _ in range(iterations):
    path = rnd.choice(mine)
    if state.get(path) and rnd.random() < 0.3:
        bc.remove([path], force=True)
        state[path] = None
    else:
        data = os.urandom(rnd.randrange(1, 64 << 10))
        (boot / path[1:]).write_bytes(data)
        [result] = bc.add([path])
        assert result.image_id == hashlib.sha1(data).hexdigest()
        state[path] = result.image_id
print(json.dumps(state))
'''

READER = r'''
import json, os, sys
from pathlib import Path
from bootwatch.cache.index import CacheIndex

index_file, stop = Path(sys.argv[1]), Path(sys.argv[2])
reads = errors = 0
versions = set()
first_error = None
while not stop.exists():
    try:
        with open(index_file, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        continue
    reads += 1
    try:
        CacheIndex.from_json(raw, source=index_file)  # no retries: a torn read fails here
        versions.add(hash(raw))
    except Exception as e:
        errors += 1
        first_error = first_error or f"{type(e).__name__}: {e}"
print(json.dumps({"reads": reads, "errors": errors, "versions": len(versions), "first_error": first_error}))
'''


def test_eight_concurrent_writers_lose_no_update_and_a_reader_never_sees_a_torn_index(boot_tree) -> None:
    worker_py = boot_tree.root / "worker.py"
    worker_py.write_text(WORKER)
    reader_py = boot_tree.root / "reader.py"
    reader_py.write_text(READER)
    stop = boot_tree.root / "stop-reader"
    # Seed the cache so that the reader has an index from its first read.
    boot_tree.write_file("/seed", 100)
    assert boot_tree.cli("add", "/seed")[0] == 0

    env = boot_tree.env()
    reader = subprocess.Popen([sys.executable, str(reader_py), str(boot_tree.index_file), str(stop)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = [subprocess.Popen([sys.executable, str(worker_py), str(boot_tree.boot), str(boot_tree.cache),
                                 str(n), str(ITERATIONS), str(PATHS_PER_WORKER)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in range(WORKERS)]
    expected = {"/seed": boot_tree.read_index()["index"]["/seed"][-1]}
    try:
        for n, proc in enumerate(workers):
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"worker {n} failed:\n{err}"
            expected.update({p: i for p, i in json.loads(out).items() if i is not None})
    finally:
        stop.write_text("")
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader_out, reader_err = reader.communicate(timeout=60)
    stats = json.loads(reader_out)

    index = CacheIndex.from_json(boot_tree.index_bytes(), source=boot_tree.index_file)
    actual = {p: index.newest(p) for p in index.paths()}
    assert actual == expected, "an update was lost: " + json.dumps(
        {"missing": sorted(set(expected) - set(actual)), "extra": sorted(set(actual) - set(expected)),
         "wrong": sorted(p for p in set(actual) & set(expected) if actual[p] != expected[p])})
    for image_id in index.all_image_ids():
        assert boot_tree.sha1_of(boot_tree.image(image_id)) == image_id
    assert boot_tree.cli("fsck")[0] == 0

    assert stats["errors"] == 0, f"the reader saw a torn or invalid index: {stats}"
    assert stats["reads"] > 0 and stats["versions"] > 1, f"the reader saw no change at all: {stats}"


def test_a_writer_waits_for_the_lock(boot_tree) -> None:
    boot_tree.write_file("/a", 100)
    boot_tree.write_file("/b", 100)
    assert boot_tree.cli("add", "/a")[0] == 0
    before = boot_tree.index_bytes()
    fd = os.open(boot_tree.cache / ".bootwatch.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        argv = [sys.executable, "-m", "bootwatch", "--boot-dir", str(boot_tree.boot),
                "--cache-dir", str(boot_tree.cache), "add", "/b"]
        proc = subprocess.Popen(argv, env=boot_tree.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            time.sleep(1.0)
            assert proc.poll() is None, "add finished while another process held the lock"
            assert boot_tree.index_bytes() == before
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(fd)
    assert proc.returncode == 0, err
    assert "/b" in boot_tree.read_index()["index"]


def test_readers_take_no_lock(boot_tree) -> None:
    """list, show and fsck-free reads work while a writer holds the lock (e.g. a long add)."""
    boot_tree.write_file("/a", 100)
    assert boot_tree.cli("add", "/a")[0] == 0
    fd = os.open(boot_tree.cache / ".bootwatch.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rc, out, err = boot_tree.cli("list", "--json", timeout=30)
        assert rc == 0 and json.loads(out)[0]["path"] == "/a", err
        rc, out, err = boot_tree.cli("show", "/a", timeout=30)
        assert rc == 0, err
    finally:
        os.close(fd)
