"""``kill -9`` at any instant never leaves a truncated image or index, nor loses a committed entry.

A writer process caches changing boot files and removes paths through the library, in a loop,
printing (flushed) ``BEGIN <op>`` before each operation and ``DONE`` once it has committed. The
test SIGKILLs it at random instants, again and again on the same cache, and after each kill:

- ``bootwatch fsck`` exits 0 (orphaned images and temp files, which an interrupted writer leaves by
  design, are warnings; a missing or corrupt listed image or an unreadable index is a problem);
- every ``<sha1>.img`` hashes to its name and ``cacheindex.json`` parses and validates;
- every path holds exactly the newest id of its last committed operation, except the path of the
  operation that was cut short, which holds the state from before or after it (never a third one).

Every few kills ``bootwatch clean`` runs, so that orphans are removed the way users remove them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

from bootwatch.cache.index import CacheIndex

pytestmark = pytest.mark.slow

KILLS = 45
PATHS = [f"/img{n}" for n in range(6)]

WRITER = r'''
import hashlib, os, random, sys
from pathlib import Path
from bootwatch.cache.operations import BootCache
from bootwatch.errors import BootwatchError

boot, cache, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
paths = sys.argv[4].split(",")
rnd = random.Random(seed)
bc = BootCache(boot, boot / "loader" / "entries", cache, keep=2)
print("READY", flush=True)
while True:
    path = rnd.choice(paths)
    if rnd.random() < 0.75:
        data = os.urandom(rnd.choice([1024, 64 << 10, 512 << 10, 2 << 20]))
        # Announced before the boot file is written, so that a kill while it is written is one
        # that cut an operation short (the path then holds its state from before), whatever
        # share of the loop the writing takes against the caching. The boot file is replaced
        # atomically, so that its content is the old one or the one announced.
        print(f"BEGIN add {path} {hashlib.sha1(data).hexdigest()}", flush=True)
        staging = boot / (".staging" + path[1:])
        staging.write_bytes(data)
        os.replace(staging, boot / path[1:])
        bc.add([path])
    else:
        print(f"BEGIN remove {path} -", flush=True)
        try:
            bc.remove([path], force=True)
        except BootwatchError:
            pass  # not cached: nothing to commit
    print("DONE", flush=True)
'''

Op = tuple[str, str, Optional[str]]  # (kind, path, resulting newest id or None)


def parse_log(text: str) -> tuple[list[Op], Op | None]:
    """The committed operations in order, and the one in flight when the writer died (if any)."""
    committed: list[Op] = []
    pending: Op | None = None
    for line in text.splitlines():
        words = line.split()
        if len(words) == 4 and words[0] == "BEGIN":
            assert pending is None, text
            pending = (words[1], words[2], words[3] if words[1] == "add" else None)
        elif line == "DONE":
            assert pending is not None, text
            committed.append(pending)
            pending = None
    return committed, pending


def newest_ids(index_file: Path) -> dict[str, str | None]:
    """Parse and validate the index as the test sees it; {path: newest id} for the writer's paths."""
    if not index_file.exists():
        return {p: None for p in PATHS}
    raw = index_file.read_bytes()
    index = CacheIndex.from_json(raw, source=index_file)  # raises on a truncated or invalid index
    return {p: (index.newest(p) if p in index else None) for p in PATHS}


def check_images(cache_dir: Path, verified: dict[tuple[str, int, int], bool]) -> None:
    """No image is truncated under its final name: each ``<sha1>.img`` hashes to its name."""
    for image in cache_dir.glob("*.img"):
        st = image.stat()
        key = (image.name, st.st_ino, st.st_mtime_ns)
        if key in verified:
            continue
        h = hashlib.sha1()
        with open(image, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        assert h.hexdigest() + ".img" == image.name, f"{image} does not hash to its name ({st.st_size} bytes)"
        verified[key] = True


def test_sigkill_at_random_points_loses_nothing_committed(boot_tree) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rnd = random.Random(seed)
    # Every path is referenced, so that clean keeps them and only removes orphans and temp files.
    boot_tree.write_entry("all", linux=PATHS[0], initrd=[" ".join(PATHS)])
    script = boot_tree.root / "writer.py"
    script.write_text(WRITER)
    expected: dict[str, str | None] = {p: None for p in PATHS}
    verified: dict[tuple[str, int, int], bool] = {}
    cut_short = 0
    committed_total = 0
    saw_leftovers = 0
    for kill in range(KILLS):
        context = f"seed {seed}, kill {kill}"
        proc = subprocess.Popen([sys.executable, str(script), str(boot_tree.boot), str(boot_tree.cache),
                                 str(rnd.randrange(1 << 30)), ",".join(PATHS)],
                                env=boot_tree.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                bufsize=0)  # unbuffered: readline must not swallow what follows READY
        try:
            # Wait until the writer has imported bootwatch, then let it run for a random while.
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            assert ready == b"READY\n", (ready, proc.stderr.read() if proc.poll() is not None else "")
            time.sleep(rnd.uniform(0.0, 0.35))
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, f"{context}: the writer died on its own:\n{err.decode()}"
        committed, pending = parse_log(out.decode())
        committed_total += len(committed)
        for _kind, path, result in committed:
            expected[path] = result

        rc, fsck_out, fsck_err = boot_tree.cli("fsck", "--json")
        assert "Traceback" not in fsck_err, fsck_err
        report = json.loads(fsck_out)
        assert rc == 0 and report["problems"] == [], f"{context}: fsck found problems: {report}"
        if report["warnings"]:
            saw_leftovers += 1
        check_images(boot_tree.cache, verified)
        actual = newest_ids(boot_tree.index_file)
        for path in PATHS:
            allowed = {expected[path]}
            if pending is not None and pending[1] == path:
                allowed.add(pending[2])
            assert actual[path] in allowed, (
                f"{context}: {path} holds {actual[path]}, expected one of {allowed} "
                f"(committed ops: {committed}, in flight: {pending})")
        if pending is not None:
            cut_short += 1
            expected[pending[1]] = actual[pending[1]]
        for path, image_id in expected.items():
            if image_id is not None:
                assert (boot_tree.cache / f"{image_id}.img").is_file(), f"{context}: image of {path} is gone"

        if kill % 5 == 4:
            rc, clean_out, clean_err = boot_tree.cli("clean", "--json")
            assert rc == 0, clean_err
            assert json.loads(clean_out)["uncached_paths"] == []
            assert newest_ids(boot_tree.index_file) == expected, f"{context}: clean changed a referenced path"
            assert boot_tree.temp_files() == []

    # The test only means something if the kills hit operations in progress and work got done.
    assert committed_total >= KILLS, f"seed {seed}: only {committed_total} operations committed"
    assert cut_short >= KILLS // 2, f"seed {seed}: only {cut_short} kills interrupted an operation"
    assert saw_leftovers >= 1, f"seed {seed}: no kill ever left an orphan or a temp file"
