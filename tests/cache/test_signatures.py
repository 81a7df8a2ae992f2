"""The signatures file and the full pass that uses it without the lock (signatures.py).

The quick pass may only ever conclude "nothing to do". These tests hold it to that against a real
tree: for each kind of change a host sees, the quick pass must refuse and the ordinary pass then
does the work; with no change it must succeed, and it must succeed while another writer holds
the lock (the proof that it took none). A damaged, stale or hostile signatures file costs one
ordinary pass and nothing else.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import marshal
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from bootwatch.cache.index import CacheIndex
from bootwatch.cache.reconcile import Reconciler
from bootwatch.cache.session import open_cache, reconcile_once
from bootwatch.cache.signatures import decode, encode
from bootwatch.cache.store import LOCK_NAME, SIGNATURES_NAME, index_digest
from bootwatch.config import Config, load_config


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, Config]:
    """``track = "all"``: a few kernels in two directories, two of them referenced by entries."""
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    (boot / "efi").mkdir()
    for n in range(6):
        (boot / ("efi" if n % 2 else "") / f"vmlinuz-6.{n}").write_bytes(os.urandom(4096) + bytes([n]))
    entry(boot, "a", "/vmlinuz-6.0")
    entry(boot, "b", "/efi/vmlinuz-6.1")
    toml = tmp_path / "bootwatch.toml"
    toml.write_text(f'[paths]\nboot = "{boot}"\ncache = "{tmp_path / "cache"}"\nruntime = "{tmp_path / "run"}"\n'
                    '[cache]\ntrack = "all"\n')
    config = load_config(toml, environ={})
    assert len(reconcile_once(config, open_cache(config)).cached) == 6
    return boot, config


def entry(boot: Path, name: str, linux: str) -> None:
    (boot / "loader" / "entries" / f"{name}.conf").write_text(f"title {name}\nlinux {linux}\n")


def cache_dir(config: Config) -> Path:
    return Path(config.paths.cache)


def quick(config: Config):
    return Reconciler(config, open_cache(config)).unchanged_pass()


def boot_snapshot(boot: Path) -> dict[str, bytes]:
    return {str(p.relative_to(boot)): p.read_bytes() for p in sorted(boot.rglob("*")) if p.is_file()}


def full_pass_changes(config: Config) -> list:
    """What an ordinary pass under the lock changes: the index, the boot tree, the images."""
    boot, cache = Path(config.paths.boot), cache_dir(config)
    before = ((cache / "cacheindex.json").read_bytes(), boot_snapshot(boot), sorted(os.listdir(cache)))
    cache_obj = open_cache(config)
    with cache_obj.transaction() as txn:
        report = Reconciler(config, cache_obj).full(txn)
    after = ((cache / "cacheindex.json").read_bytes(), boot_snapshot(boot), sorted(os.listdir(cache)))
    changes = [name for name, a, b in zip(("index", "boot", "cache"), before, after) if a != b]
    return changes + [k for k in ("cached", "changed", "restored", "recopied", "unrestored")
                      if getattr(report, k)]


def test_signatures_are_derived_from_the_index_they_are_keyed_by(host: tuple[Path, Config]) -> None:
    boot, config = host
    data = (cache_dir(config) / "cacheindex.json").read_bytes()
    index = CacheIndex.from_json(data, source="test")
    table = decode((cache_dir(config) / SIGNATURES_NAME).read_bytes(), index_digest(data))
    assert table is not None and table.entries == index.signatures().entries  # the table, as it is
    assert set(table.entries) == set(index.paths())
    for path, recorded in table.entries.items():
        st = os.lstat(boot / path.lstrip("/"))
        assert recorded == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, index.newest(path), True)
    # Keyed by the index bytes: the same file is stale for any other index.
    encoded = encode(index.signatures(), index_digest(data))
    again = decode(encoded, index_digest(data))
    assert decode(encoded, index_digest(data + b" ")) is None
    assert again is not None and again.entries == table.entries


@pytest.mark.slow
def test_unchanged_host_passes_without_the_lock(host: tuple[Path, Config]) -> None:
    """A real ``bootwatch scan`` finishes while another process holds the writers' flock; after a
    change it waits for the lock, then does the work."""
    boot, config = host
    toml = Path(config.paths.cache).parent / "bootwatch.toml"
    scan = [sys.executable, "-m", "bootwatch", "--config", str(toml), "scan", "--json"]
    fd = os.open(cache_dir(config) / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        done = subprocess.run(scan, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["examined"] == 6
        (boot / "vmlinuz-6.2").write_bytes(b"a rebuilt kernel")
        waiting = subprocess.Popen(scan, stdout=subprocess.PIPE, text=True)
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(timeout=1.0)  # a change needs the lock
    finally:
        os.close(fd)
    out, _ = waiting.communicate(timeout=30)
    assert waiting.returncode == 0 and json.loads(out)["changed"] == ["/vmlinuz-6.2"]
    assert quick(config) is not None  # the pass that did the work wrote the signatures again


def _rewrite(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _touch(path: Path) -> None:
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))


def _swap_for_symlink(path: Path) -> None:
    path.unlink()
    path.symlink_to("vmlinuz-6.4")


def _delete_image(config: Config) -> None:
    index = json.loads((cache_dir(config) / "cacheindex.json").read_text())
    (cache_dir(config) / f"{index['index']['/vmlinuz-6.4'][0]}.img").unlink()


def _swap_image_for_symlink(config: Config) -> None:
    """The cached image becomes a symlink to a copy of itself: not an image bootwatch trusts."""
    index = json.loads((cache_dir(config) / "cacheindex.json").read_text())
    image = cache_dir(config) / f"{index['index']['/vmlinuz-6.4'][0]}.img"
    elsewhere = cache_dir(config).parent / "elsewhere.img"
    image.rename(elsewhere)
    image.symlink_to(elsewhere)


def _boom_rewrites_index(config: Config) -> None:
    """boom rewrites the index in place, in its own layout: the same content, other bytes."""
    index_file = cache_dir(config) / "cacheindex.json"
    data = json.loads(index_file.read_text())
    with open(index_file, "w") as f:
        json.dump(data, f, indent=4)


def _restore_then_drop_entry(boot: Path, config: Config) -> None:
    (boot / "vmlinuz-6.0").unlink()
    assert reconcile_once(config, open_cache(config)).restored == ["/vmlinuz-6.0"]
    assert quick(config) is not None  # a referenced restored copy is an unchanged file
    (boot / "loader" / "entries" / "a.conf").unlink()


# Each change, and whether the full pass has work to do afterwards (the quick pass must refuse).
CHANGES: dict[str, tuple[Callable[[Path, Config], None], bool]] = {
    "nothing": (lambda boot, config: None, False),
    "content rewritten, same size": (lambda boot, config: _rewrite(boot / "efi" / "vmlinuz-6.3"), True),
    "mtime only": (lambda boot, config: _touch(boot / "vmlinuz-6.2"), True),
    "chmod (ctime)": (lambda boot, config: (boot / "vmlinuz-6.2").chmod(0o600), True),
    "referenced kernel removed": (lambda boot, config: (boot / "vmlinuz-6.0").unlink(), True),
    "unreferenced kernel removed": (lambda boot, config: (boot / "vmlinuz-6.2").unlink(), False),
    "new kernel": (lambda boot, config: (boot / "efi" / "vmlinuz-7.0").write_bytes(b"new"), True),
    "kernel renamed": (lambda boot, config: (boot / "vmlinuz-6.2").rename(boot / "vmlinuz-6.9"), True),
    "kernel swapped for a symlink": (lambda boot, config: _swap_for_symlink(boot / "vmlinuz-6.2"), True),
    "image deleted from the cache": (lambda boot, config: _delete_image(config), True),
    "image swapped for a symlink in the cache": (lambda boot, config: _swap_image_for_symlink(config), True),
    "entry for a path not on disk": (lambda boot, config: entry(boot, "c", "/vmlinuz-9.9"), False),
    "entry for a cached path": (lambda boot, config: entry(boot, "c", "/vmlinuz-6.2"), False),
    "restored copy lost its last entry": (_restore_then_drop_entry, True),
    "index rewritten by boom": (lambda boot, config: _boom_rewrites_index(config), False),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_quick_pass_concludes_nothing_to_do_only_when_so(host: tuple[Path, Config], name: str) -> None:
    boot, config = host
    assert quick(config) is not None
    change, has_work = CHANGES[name]
    change(boot, config)
    report = quick(config)
    changes = full_pass_changes(config)
    if report is not None:
        assert changes == [], f"the quick pass missed: {changes}"
    assert bool(changes) == has_work, changes
    if name in ("nothing", "entry for a cached path"):
        assert report is not None and report.examined == 6  # the common case stays quick
    if name == "entry for a path not on disk":
        assert report is None  # a referenced path that is missing goes to the full pass (reported there)
    if name == "unreferenced kernel removed":
        # Removed with its entry: both passes only report it; the quick one needs no lock for that.
        assert report is not None and report.missing == ["/vmlinuz-6.2"] and report.examined == 6
    # The pass under the lock leaves signatures that a quiet host passes with; but a missing
    # referenced path, or a tracked symlink (its signature is its target's), always takes it.
    if name not in ("entry for a path not on disk", "kernel swapped for a symlink"):
        assert quick(config) is not None


@pytest.mark.parametrize("damage", ["truncated", "rotten body", "the format before", "empty", "symlink", "directory"])
def test_damaged_signatures_cost_one_ordinary_pass(host: tuple[Path, Config], damage: str) -> None:
    boot, config = host
    sig = cache_dir(config) / SIGNATURES_NAME
    data = sig.read_bytes()
    if damage == "truncated":
        sig.write_bytes(data[: len(data) // 2])
    elif damage == "rotten body":
        sig.write_bytes(data[:-10] + bytes([data[-10] ^ 0x40]) + data[-9:])
    elif damage == "the format before":  # bootwatch-signatures/2, written by an older bootwatch
        sig.write_bytes(data.replace(b"bootwatch-signatures/3", b"bootwatch-signatures/2", 1))
    elif damage == "empty":
        sig.write_bytes(b"")
    elif damage == "symlink":
        target = cache_dir(config).parent / "elsewhere"
        target.write_bytes(data)
        sig.unlink()
        sig.symlink_to(target)
    else:
        sig.unlink()
        sig.mkdir()
    assert quick(config) is None
    report = reconcile_once(config, open_cache(config))
    assert (report.examined, report.hashed, report.errors) == (6, 0, [])
    if damage == "directory":
        assert sig.is_dir() and quick(config) is None  # cannot be replaced; every pass is ordinary
    else:
        assert not sig.is_symlink() and quick(config) is not None


WRONG_SHAPES = {
    "an int for an entry": {"/vmlinuz-6.0": 5},
    "a short tuple": {"/vmlinuz-6.0": (1, 2)},
    "a long tuple": {"/vmlinuz-6.0": (1, 2, 3, 4, 5, "x", True, 8)},
    "a list for a tuple": {"/vmlinuz-6.0": [1, 2, 3, 4, 5, "x", True]},
    "a float for an int": {"/vmlinuz-6.0": (1, 2, 3, 4.0, 5, "x", True)},
    "a bool for an int": {"/vmlinuz-6.0": (True, 2, 3, 4, 5, "x", True)},
    "bytes for the image id": {"/vmlinuz-6.0": (1, 2, 3, 4, 5, b"x", True)},
    "an int for the newest flag": {"/vmlinuz-6.0": (1, 2, 3, 4, 5, "x", 1)},
    "a key that is not text": {b"/vmlinuz-6.0": None},
    "a list for the table": [("/vmlinuz-6.0", None)],
}


def self_consistent(body: object, digest: str) -> bytes:
    """A signatures file whose header names ``digest`` and the SHA1 of ``body``: only its shape is wrong."""
    data = marshal.dumps(body, 4)
    return b"bootwatch-signatures/3 " + digest.encode() + b" " + hashlib.sha1(data).hexdigest().encode() + b"\n" + data


@pytest.mark.parametrize("shape", WRONG_SHAPES)
def test_a_body_of_the_wrong_shape_is_no_table(shape: str) -> None:
    assert decode(self_consistent(WRONG_SHAPES[shape], "0" * 40), "0" * 40) is None


def test_a_well_formed_body_is_a_table() -> None:
    entries = {"/vmlinuz-6.0": (1, 2, 3, 4, 5, "x", True), "/vmlinuz-6.1": None}
    table = decode(self_consistent(entries, "0" * 40), "0" * 40)
    assert table is not None and table.entries == entries


def test_a_self_consistent_file_of_the_wrong_shape_costs_one_ordinary_pass(host: tuple[Path, Config]) -> None:
    """The header matches the index and the body's SHA1, the body is no table: scan runs as usual
    (it died with "internal error: TypeError", and the daemon with it at every start)."""
    boot, config = host
    index = (cache_dir(config) / "cacheindex.json").read_bytes()
    sig = cache_dir(config) / SIGNATURES_NAME
    sig.write_bytes(self_consistent({"/vmlinuz-6.0": 5, "/efi/vmlinuz-6.1": (1, 2)}, index_digest(index)))
    assert quick(config) is None
    report = reconcile_once(config, open_cache(config))
    assert (report.examined, report.hashed, report.errors) == (6, 0, [])
    assert quick(config) is not None  # the ordinary pass wrote a good table again


def test_track_referenced_writes_no_signatures(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    (boot / "vmlinuz-1").write_bytes(b"one")
    entry(boot, "a", "/vmlinuz-1")
    toml = tmp_path / "bootwatch.toml"
    toml.write_text(f'[paths]\nboot = "{boot}"\ncache = "{tmp_path / "cache"}"\nruntime = "{tmp_path / "run"}"\n')
    config = load_config(toml, environ={})
    assert reconcile_once(config, open_cache(config)).cached == ["/vmlinuz-1"]
    assert not (tmp_path / "cache" / SIGNATURES_NAME).exists() and quick(config) is None


def test_unknown_references_still_let_an_unchanged_tree_pass_without_the_lock(tmp_path: Path) -> None:
    """No boot entries and no record of a read (the benchmark's tree): references are unknown,
    which forbids taking anything away, not concluding that nothing changed. The quick pass says
    why they are unknown, as the full pass does; a change still takes the full pass."""
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    for n in range(3):
        (boot / f"vmlinuz-{n}").write_bytes(os.urandom(4096))
    toml = tmp_path / "bootwatch.toml"
    toml.write_text(f'[paths]\nboot = "{boot}"\ncache = "{tmp_path / "cache"}"\nruntime = "{tmp_path / "run"}"\n'
                    '[cache]\ntrack = "all"\n')
    config = load_config(toml, environ={})
    first = reconcile_once(config, open_cache(config))
    assert len(first.cached) == 3 and first.references_unknown is not None
    report = quick(config)
    assert report is not None and report.examined == 3 and report.references_unknown == first.references_unknown
    assert full_pass_changes(config) == []
    (boot / "vmlinuz-1").write_bytes(b"rebuilt")
    assert quick(config) is None
    assert "changed" in full_pass_changes(config)
