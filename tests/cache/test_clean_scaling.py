"""clean is linear in the paths it uncaches and trims.

No timings: the work is counted. ``sys.settrace`` counts the lines of bootwatch's own code that
one clean executes (a loop or a comprehension counts once per iteration), on a real cache
written to disk. Linear work grows 4 times for 4 times the paths; quadratic work (the index
re-listed for every uncached path) grows 16 times.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import bootwatch
from bootwatch.cache.operations import BootCache

pytestmark = pytest.mark.slow

PACKAGE_DIR = str(Path(bootwatch.__file__).resolve().parent)


def write_cache(tree, paths: int) -> list[str]:
    """A cache of ``paths`` unreferenced paths (one image each) and ``paths`` referenced paths with
    three images each (keep = 2 trims one), written as boom would have: real image files named by
    their SHA1 and an index listing them. Returns the referenced paths."""
    tree.cache.mkdir(mode=0o700)
    data: dict[str, dict] = {"index": {}, "paths": {}, "images": {}}

    def image(content: bytes, ts: int) -> str:
        image_id = tree.sha1_bytes(content)
        tree.image(image_id).write_bytes(content)
        data["images"][image_id] = {"image_ts": ts}
        return image_id

    referenced = []
    for n in range(paths):
        data["index"][f"/gone-{n}"] = [image(b"gone %d" % n, 1000)]
        data["paths"][f"/gone-{n}"] = {"path_mode": 0o100644, "path_uid": 0, "path_gid": 0, "path_attrs": {}}
        path = f"/kept-{n}"
        referenced.append(path)
        data["index"][path] = [image(b"kept %d %d" % (n, v), 1000 + v) for v in range(3)]
        data["paths"][path] = {"path_mode": 0o100644, "path_uid": 0, "path_gid": 0, "path_attrs": {}}
        tree.write_file(path, content=b"kept %d 2" % n)
    tree.index_file.write_text(json.dumps(data))
    tree.write_entry("all", linux=referenced[0], initrd=[" ".join(referenced)])
    return referenced


def lines_executed_by_clean(tree, paths: int) -> int:
    referenced = write_cache(tree, paths)
    cache = BootCache(tree.boot, tree.entries, tree.cache, keep=2)
    count = 0

    def local(frame, event, arg):  # noqa: ANN001 - the settrace protocol
        nonlocal count
        if event == "line":
            count += 1
        return local

    def tracer(frame, event, arg):  # noqa: ANN001
        return local if frame.f_code.co_filename.startswith(PACKAGE_DIR) else None

    sys.settrace(tracer)
    try:
        report = cache.clean(force=True)  # a hand-written index: no record, no signatures to prove the entries
    finally:
        sys.settrace(None)
    # The clean did its work: every unreferenced path uncached, every referenced one trimmed to two.
    assert len(report.uncached_paths) == paths and len(report.trimmed_images) == paths
    index = json.loads(tree.index_file.read_text())
    assert sorted(index["index"]) == sorted(referenced)
    assert all(len(ids) == 2 for ids in index["index"].values())
    assert len(tree.images_on_disk()) == 2 * paths
    return count


def test_clean_does_linear_work_in_the_paths_it_uncaches(boot_tree, tmp_path: Path, bootwatch_config: Path) -> None:
    small = lines_executed_by_clean(boot_tree, 150)
    large = lines_executed_by_clean(type(boot_tree)(tmp_path / "large", bootwatch_config), 600)
    # Linear: about 4 times the work (plus a constant). Quadratic would be about 16 times.
    assert large < 5 * small, f"clean of 4x the paths executed {large / small:.1f}x the lines ({small} -> {large})"
