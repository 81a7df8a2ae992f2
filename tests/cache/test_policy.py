"""bootwatch.cache.policy: which unreferenced boot files clean keeps, by ``[cache] track`` and ``patterns``.

Real configuration files read by load_config, a real boot directory with files, directories,
symlinks and a FIFO in it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from bootwatch.cache.operations import BootCache
from bootwatch.cache.policy import keep_unreferenced_predicate, tracks_all
from bootwatch.config import Config, load_config


def setup(tmp_path: Path, track: str | None = None,
          patterns: Sequence[str] | None = None) -> tuple[Config, BootCache, Path]:
    boot = tmp_path / "boot"
    (boot / "loader" / "entries").mkdir(parents=True)
    lines = [f'[paths]\nboot = "{boot}"\ncache = "{tmp_path / "cache"}"\n[cache]']
    if track is not None:
        lines.append(f'track = "{track}"')
    if patterns is not None:
        lines.append("patterns = [" + ", ".join(f'"{p}"' for p in patterns) + "]")
    toml = tmp_path / "bootwatch.toml"
    toml.write_text("\n".join(lines) + "\n")
    config = load_config(toml)
    return config, BootCache.from_config(config), boot


def keeper(tmp_path: Path, track: str | None = None,
           patterns: Sequence[str] | None = None) -> tuple[Callable[[str], bool], Path]:
    config, cache, boot = setup(tmp_path, track, patterns)
    return keep_unreferenced_predicate(config, cache), boot


def test_track_referenced_is_the_default_and_keeps_nothing_unreferenced(tmp_path: Path) -> None:
    config, cache, boot = setup(tmp_path)
    assert not tracks_all(config)
    (boot / "vmlinuz-1").write_bytes(b"kernel")
    keep = keep_unreferenced_predicate(config, cache)
    assert keep("/vmlinuz-1") is False, "track = referenced kept a file no entry names"


def test_track_all_keeps_a_matching_file_that_is_still_in_the_boot_directory(tmp_path: Path) -> None:
    config, cache, boot = setup(tmp_path, "all")
    assert tracks_all(config)
    keep = keep_unreferenced_predicate(config, cache)
    for name in ("vmlinuz-1", "initramfs-1.img", "initrd.img-1", "linux.efi", "config-1"):
        (boot / name).write_bytes(b"x")
    # The default patterns: vmlinuz-*, vmlinux-*, initramfs-*, initrd*, *.efi.
    assert [keep(f"/{n}") for n in ("vmlinuz-1", "initramfs-1.img", "initrd.img-1", "linux.efi")] == [True] * 4
    assert keep("/config-1") is False, "a file no pattern matches was kept"
    assert keep("/vmlinuz-2") is False, "a file that is gone from the boot directory was kept"
    (boot / "vmlinuz-1").unlink()
    assert keep("/vmlinuz-1") is False, "the predicate remembered a file that is gone"


def test_patterns_match_the_file_name_only_and_case_sensitively(tmp_path: Path) -> None:
    keep, boot = keeper(tmp_path, "all", ["vmlinuz-*"])
    (boot / "EFI" / "vmlinuz-dir").mkdir(parents=True)
    (boot / "EFI" / "vmlinuz-1").write_bytes(b"x")
    (boot / "EFI" / "vmlinuz-dir" / "grubx64.bin").write_bytes(b"x")
    (boot / "VMLINUZ-1").write_bytes(b"x")
    (boot / "initramfs-1.img").write_bytes(b"x")
    assert keep("/EFI/vmlinuz-1") is True, "a matching file in a subdirectory was not kept"
    assert keep("/EFI/vmlinuz-dir/grubx64.bin") is False, "a directory's name matched for the file in it"
    assert keep("/VMLINUZ-1") is False, "patterns matched without regard to case"
    assert keep("/initramfs-1.img") is False, "the default patterns applied although patterns are set"


def test_only_a_regular_file_is_kept_and_symlinks_stay_inside_the_boot_directory(tmp_path: Path) -> None:
    keep, boot = keeper(tmp_path, "all", ["vmlinuz*"])
    outside = tmp_path / "outside"
    outside.write_bytes(b"not a boot file")
    (boot / "vmlinuz-6.1").write_bytes(b"kernel")
    (boot / "vmlinuz-dir").mkdir()
    os.mkfifo(boot / "vmlinuz-fifo")
    os.symlink("vmlinuz-6.1", boot / "vmlinuz")
    os.symlink("vmlinuz-gone", boot / "vmlinuz-dangling")
    os.symlink(outside, boot / "vmlinuz-escape")
    assert keep("/vmlinuz") is True, "a symlink to a kernel in the boot directory was not kept"
    assert keep("/vmlinuz-dir") is False, "a directory was kept"
    assert keep("/vmlinuz-fifo") is False, "a FIFO was kept"
    assert keep("/vmlinuz-dangling") is False, "a dangling symlink was kept"
    # A link out of the boot directory is not followed (UnsafePathError inside): not kept, no error.
    assert keep("/vmlinuz-escape") is False, "a symlink out of the boot directory was followed"


def test_a_path_bootwatch_refuses_is_not_kept_and_raises_nothing(tmp_path: Path) -> None:
    keep, boot = keeper(tmp_path, "all", ["*"])
    (tmp_path / "vmlinuz-up").write_bytes(b"x")  # what "/../vmlinuz-up" would name
    for path in ("/../vmlinuz-up", "/./vmlinuz-up", "//vmlinuz-up", "/vmlinuz-\ud800"):
        assert keep(path) is False, path
