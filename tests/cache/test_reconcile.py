"""The full reconcile pass (``bootwatch scan``) on real trees: what the fast paths must not change.

A full pass over an unchanged, indexed tree reads no file, resolves no path it walked itself, and
looks restored-copy markers up in what the walk saw. These tests pin the behaviour those
shortcuts must keep: restored copies taken away once unreferenced (also in subdirectories), a
file rewritten after its restore left alone, symlinks out of the boot directory refused, hostile
names reported, only matching names cached, and the compiled globs equal to ``fnmatch``.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Callable

import pytest

from bootwatch.cache.hashing import Digest
from bootwatch.cache.index import CacheIndex
from bootwatch.cache.operations import BootCache
from bootwatch.cache.policy import names_pattern
from bootwatch.cache.reconcile import Reconciler, ReconcileReport, unchanged_walked
from bootwatch.cache.session import open_cache, reconcile_once
from bootwatch.cache.store import marker_path_of
from bootwatch.config import Config, load_config


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Config]:
    """A boot directory with ``track = "all"`` and the default patterns; its cache under tmp."""
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    toml = tmp_path / "bootwatch.toml"
    toml.write_text(f'[paths]\nboot = "{boot}"\ncache = "{tmp_path / "cache"}"\nruntime = "{tmp_path / "run"}"\n'
                    '[cache]\ntrack = "all"\n')
    return boot, load_config(toml, environ={})


def scan(config: Config, reconciler: Reconciler | None = None) -> ReconcileReport:
    return reconcile_once(config, open_cache(config), reconciler)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def entry(boot: Path, name: str, linux: str) -> Path:
    return write(boot / "loader" / "entries" / f"{name}.conf", f"title {name}\nlinux {linux}\n".encode())


def test_unchanged_tree_is_examined_without_reading(tree: tuple[Path, Config]) -> None:
    boot, config = tree
    for n in range(20):
        write(boot / f"d{n % 3}" / f"vmlinuz-{n}", os.urandom(1000))
    write(boot / "initramfs-1.img", b"top level")
    first = scan(config)
    assert len(first.cached) == 21 and not first.errors
    again = scan(config)
    assert (again.examined, again.hashed, again.cached, again.errors) == (21, 0, [], [])
    # A rewrite with new content is noticed by its stat signature, and only that file is read.
    write(boot / "d1" / "vmlinuz-4", b"new content")
    third = scan(config)
    assert (third.hashed, third.changed) == (1, ["/d1/vmlinuz-4"])


@pytest.mark.parametrize("damage", ["deleted", "replaced by a symlink"])
def test_an_image_gone_from_the_cache_is_copied_again_and_reported(tree: tuple[Path, Config], damage: str) -> None:
    boot, config = tree
    kernel = write(boot / "vmlinuz-1", os.urandom(5000))
    assert scan(config).cached == ["/vmlinuz-1"]
    image_id = open_cache(config).load_index().newest("/vmlinuz-1")
    image = Path(config.paths.cache) / f"{image_id}.img"
    if damage == "deleted":
        image.unlink()
    else:  # a symlink to the right bytes is still not an image bootwatch trusts
        image.rename(image.with_name("elsewhere"))
        image.symlink_to(image.with_name("elsewhere"))
    report = scan(config)
    assert (report.broken, report.recopied, report.hashed) == (["/vmlinuz-1"], ["/vmlinuz-1"], 1)
    assert not image.is_symlink() and image.read_bytes() == kernel.read_bytes()


def test_unreferenced_restored_copies_are_taken_away(tree: tuple[Path, Config]) -> None:
    """Restored by the daemon while referenced; the entries go: the full pass removes both copies."""
    boot, config = tree
    top, sub = write(boot / "vmlinuz-1.0", b"one"), write(boot / "sub" / "vmlinuz-2.0", b"two")
    entry(boot, "one", "/vmlinuz-1.0")
    entry(boot, "two", "/sub/vmlinuz-2.0")
    entry(boot, "other", "/vmlinuz-other")  # not every entry goes at once (that would make references unknown)
    assert sorted(scan(config).cached) == ["/sub/vmlinuz-2.0", "/vmlinuz-1.0"]
    top.unlink()
    sub.unlink()
    assert sorted(scan(config).restored) == ["/sub/vmlinuz-2.0", "/vmlinuz-1.0"]
    markers = [boot / ".vmlinuz-1.0.boomrestored", boot / "sub" / ".vmlinuz-2.0.boomrestored"]
    assert all(m.exists() for m in markers) and top.read_bytes() == b"one" and sub.read_bytes() == b"two"
    # Referenced, the restored copies stay.
    assert scan(config).unrestored == []
    (boot / "loader" / "entries" / "one.conf").unlink()
    (boot / "loader" / "entries" / "two.conf").unlink()
    report = scan(config)
    assert sorted(report.unrestored) == ["/sub/vmlinuz-2.0", "/vmlinuz-1.0"], report
    assert not top.exists() and not sub.exists()
    assert not any(m.exists() for m in markers)


def test_restored_copy_rewritten_by_someone_is_theirs(tree: tuple[Path, Config]) -> None:
    boot, config = tree
    kernel = write(boot / "vmlinuz-1.0", b"one")
    entry(boot, "one", "/vmlinuz-1.0")
    scan(config)
    kernel.unlink()
    assert scan(config).restored == ["/vmlinuz-1.0"]
    write(kernel, b"a rebuilt kernel")
    (boot / "loader" / "entries" / "one.conf").unlink()
    report = scan(config)
    assert report.unrestored == [] and report.changed == ["/vmlinuz-1.0"]
    assert kernel.read_bytes() == b"a rebuilt kernel"


def test_marker_of_another_name_changes_nothing(tree: tuple[Path, Config]) -> None:
    """A marker names one file: ``.vmlinuz-1.boomrestored`` is not the marker of ``vmlinuz-10``."""
    boot, config = tree
    write(boot / "vmlinuz-10", b"ten")
    scan(config)
    write(boot / ".vmlinuz-1.boomrestored", b"")
    write(boot / "sub" / ".vmlinuz-10.boomrestored", b"")
    report = scan(config)
    assert (report.unrestored, report.hashed) == ([], 0)
    assert (boot / "vmlinuz-10").exists()


def test_symlinks_are_followed_only_inside_boot(tree: tuple[Path, Config], tmp_path: Path) -> None:
    boot, config = tree
    outside = write(tmp_path / "secret" / "vmlinuz-secret", b"not a boot file")
    write(boot / "vmlinuz-6.1.0", b"kernel")
    os.symlink("vmlinuz-6.1.0", boot / "vmlinuz")  # does not match the patterns: not walked
    os.symlink("vmlinuz-6.1.0", boot / "vmlinuz-current")
    os.symlink(outside, boot / "vmlinuz-evil")
    os.symlink("../../secret", boot / "sub")  # a directory link out of boot is never entered
    report = scan(config)
    assert sorted(report.cached) == ["/vmlinuz-6.1.0", "/vmlinuz-current"]
    assert any("/vmlinuz-evil" in e and "outside the boot directory" in e for e in report.errors), report.errors
    assert not any("secret" in p for p in report.cached)
    again = scan(config)
    assert again.hashed == 0 and any("outside the boot directory" in e for e in again.errors)


def test_hostile_and_unmatched_names(tree: tuple[Path, Config]) -> None:
    boot, config = tree
    write(boot / "vmlinuz-a\nb", b"newline in the name")
    write(boot / "vmlinuz-ok", b"fine")
    write(boot / "config-6.1.0", b"not a pattern")
    write(boot / ".vmlinuz-hidden", b"dot file")
    write(boot / "lost+found" / "vmlinuz-lost", b"fsck's")
    write(boot / "loader" / "entries" / "vmlinuz-in-entries", b"not an image")
    report = scan(config)
    assert report.cached == ["/vmlinuz-ok"], report
    assert any("NUL or newline" in e for e in report.errors), report.errors
    again = scan(config)  # the hostile name is refused again, before anything is opened
    assert again.cached == [] and again.errors == report.errors


def test_cache_inside_boot_is_not_walked(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    toml = tmp_path / "bootwatch.toml"
    toml.write_text(f'[paths]\nboot = "{boot}"\ncache = "{boot / "bootwatch"}"\nruntime = "{tmp_path / "run"}"\n'
                    '[cache]\ntrack = "all"\npatterns = ["*"]\n')
    config = load_config(toml, environ={})
    write(boot / "vmlinuz-1", b"one")
    assert scan(config).cached == ["/vmlinuz-1"]
    report = scan(config)
    assert (report.cached, report.hashed, report.examined) == ([], 0, 1)


def test_names_pattern_is_fnmatch() -> None:
    patterns = ("vmlinuz-*", "initrd*", "*.efi", "a?c", "[!x]y*", "x[a-c]z")
    names = ["vmlinuz-6.1", "vmlinuz", "initrd", "initrd.img", "grubx64.efi", "efi", "abc", "abbc", "zy1",
             "xy", "xbz", "xdz", "vmlinuz-\n", "a\nc", "", ".efi"]
    for name in names:
        expected = any(fnmatch.fnmatchcase(name, p) for p in patterns)
        assert (names_pattern(patterns).match(name) is not None) == expected, name
    assert names_pattern(()).match("anything") is None


def test_marker_path_of() -> None:
    assert marker_path_of("/vmlinuz-1") == "/.vmlinuz-1.boomrestored"
    assert marker_path_of("/efi/EFI/x.efi") == "/efi/EFI/.x.efi.boomrestored"


def test_walk_reports_markers_and_files(tree: tuple[Path, Config]) -> None:
    boot, config = tree
    write(boot / "vmlinuz-1", b"1")
    write(boot / ".vmlinuz-1.boomrestored", b"")
    write(boot / "d" / ".initrd-2.boomrestored", b"")
    write(boot / "d" / ".swapfile", b"")
    walked = Reconciler(config, BootCache.from_config(config)).walk()
    assert sorted(walked.files) == ["/vmlinuz-1"]
    assert walked.markers == {"/.vmlinuz-1.boomrestored", "/d/.initrd-2.boomrestored"}


def _recorded(stat_value: Callable[[list], object] | None = None, image_id: Callable[[str], object] | None = None
              ) -> Callable[[Path, dict, str], None]:
    """A case that rewrites the recorded signature (``stat``) or image id (``stat_image_id``)."""
    def change(boot: Path, extra: dict, newest: str) -> None:
        if stat_value is not None:
            extra["stat"] = stat_value(extra["stat"])
        if image_id is not None:
            extra["stat_image_id"] = image_id(newest)
    return change


def _in_boot(change: Callable[[Path], object]) -> Callable[[Path, dict, str], None]:
    return lambda boot, extra, newest: change(boot)


def _delete_image(boot: Path, extra: dict, newest: str) -> None:
    (boot.parent / "cache" / f"{newest}.img").unlink()


PER_PATH = "per-path"  # the quick tiers leave it to the per-path tier, which finds it unchanged

# Each case, and whether /vmlinuz-1 is then unchanged (nothing to read) in every tier.
SIGNATURE_CASES: dict[str, tuple[Callable[[Path, dict, str], None], bool | str]] = {
    "as hashed": (lambda boot, extra, newest: None, True),
    "stat as floats": (_recorded(lambda good: [float(v) for v in good]), False),
    "stat of four values": (_recorded(lambda good: good[:4]), False),
    "stat of six values": (_recorded(lambda good: [*good, 0]), False),
    "true for the device": (_recorded(lambda good: [True, *good[1:]]), False),
    "no stat": (_recorded(lambda good: None), False),
    "stat not a list": (_recorded(lambda good: "x"), False),
    "another device": (_recorded(lambda good: [good[0] + 1, *good[1:]]), False),
    "hashed to an older image": (_recorded(image_id=lambda newest: "0" * 40), False),
    "no image id": (_recorded(image_id=lambda newest: None), False),
    "an image id that is none": (_recorded(image_id=lambda newest: newest.upper()), False),
    "mtime touched": (_in_boot(lambda boot: os.utime(boot / "vmlinuz-1", ns=(0, 10**18))), False),
    "chmod (ctime)": (_in_boot(lambda boot: (boot / "vmlinuz-1").chmod(0o600)), False),
    "image deleted from the cache": (_delete_image, False),
    "an unreferenced file beside a marker": (_in_boot(lambda boot: write(boot / ".vmlinuz-1.boomrestored", b"")),
                                             PER_PATH),
}


@pytest.mark.parametrize("name", list(SIGNATURE_CASES))
def test_every_tier_answers_unchanged_alike(tree: tuple[Path, Config], name: str) -> None:
    """One table of cases through the three tiers that ask "is this boot file unchanged?": the
    lock-free pass (the signature table as signatures.py keeps it), a full pass's bulk rule
    (unchanged_walked) and the per-path pass. The quick tiers may leave a file to the per-path
    one, never answer otherwise."""
    boot, config = tree
    write(boot / "vmlinuz-1", b"one")
    scan(config)
    change, expected = SIGNATURE_CASES[name]
    cache = open_cache(config)
    with cache.transaction() as txn:  # the changed index, and its signature table, as a full pass leaves them
        change(boot, txn.index.raw()["paths"]["/vmlinuz-1"]["bootwatch"], txn.index.newest("/vmlinuz-1"))
        txn.dirty = txn.record_signatures = True
    reconciler = Reconciler(config, cache)
    lock_free = reconciler.unchanged_pass() is not None
    walked = reconciler.walk()
    with cache.transaction() as txn:
        bulk = unchanged_walked(txn.index.signatures(), walked.files, txn.references, walked.markers)
        bulk_unchanged = bulk.get("/vmlinuz-1") in txn.images_on_disk()
    with cache.transaction() as txn:
        report = reconciler.paths(txn, ["/vmlinuz-1"], entries_changed=False)
        per_path = report.hashed == 0 and not report.errors
    quick = expected is True
    assert (lock_free, bulk_unchanged, per_path) == (quick, quick, expected is not False)


def test_the_signature_table_takes_only_integers() -> None:
    """Small numbers, where JSON's true and 1.0 compare equal to the ints of a stat: never a match."""
    index = CacheIndex()
    image_id = "a" * 40
    index.add_image("/k", Digest(image_id, "b" * 64, 3), 0o100644, 0, 0, 0, cached_at=0)
    small = os.stat_result((0o100644, 2, 1, 1, 0, 0, 3, 0, 0, 0, 0.0, 0.0, 0.0, 0, 4, 5))
    extra = index.raw()["paths"]["/k"].setdefault("bootwatch", {"stat_image_id": image_id})
    for recorded, holds in (([1, 2, 3, 4, 5], True), ([True, 2, 3, 4, 5], False), ([1, 2.0, 3, 4, 5], False)):
        extra["stat"] = recorded
        assert index.signatures().image_of("/k", small) == (image_id if holds else None), recorded
        assert index.signatures(["/k"]).newest_image_of("/k", small) == (image_id if holds else None), recorded
