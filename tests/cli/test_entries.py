"""``bootwatch entries``: every boot entry of the host, with its files and what the cache holds of them.

Real inputs: the grub.cfg and grub-btrfs.cfg the real grub-mkconfig and grub-btrfs wrote
(tests/realboot/samples, provenance in tests/realboot/README.md), and, in the slow tests, what
Debian's own grub-mkconfig writes here for real kernel packages in both Debian layouts
(tests/realboot/grub_mkconfig.py). Each run is a real ``python -m bootwatch`` child.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BootTree = Any  # conftest.BootTree

SAMPLES = Path(__file__).resolve().parents[1] / "realboot" / "samples"
ENTRY_KEYS = {"id", "source", "title", "version", "release", "files", "options", "state", "findings"}
FILE_KEYS = {"path", "role", "partition", "fs_uuid", "key", "cached", "present"}
BOOT_UUID = "cf6a9deb-e989-48ad-9cad-9bc16b4a7da5"  # the sample's separate /boot


def grub_btrfs_host(tree: BootTree) -> None:
    """The sample's Arch host: grub.cfg with 10_linux's 3 entries, grub-btrfs.cfg with 4 snapshot
    entries; on disk the kernel, the microcode and the initramfs, not the fallback initramfs."""
    shutil.copytree(SAMPLES / "grub-btrfs", tree.boot / "grub")
    for name in ("vmlinuz-linux", "intel-ucode.img", "initramfs-linux.img"):
        tree.write_file(f"/{name}")


def entries_json(tree: BootTree, expected_rc: int = 0) -> tuple[dict[str, Any], str]:
    rc, out, err = tree.cli("entries", "--json")
    assert rc == expected_rc, out + err
    assert "Traceback" not in err, err
    return json.loads(out), err


def test_json_lists_every_grub_entry_with_keys_cache_state_and_presence(boot_tree: BootTree) -> None:
    tree = boot_tree
    grub_btrfs_host(tree)
    assert tree.cli("add", "/vmlinuz-linux")[0] == 0
    data, err = entries_json(tree)
    assert err == ""
    assert set(data) == {"summary", "states", "sources", "entries"}
    assert data["summary"] == "7 boot entries (bls 0, grub 7)"  # the tree has an empty loader/entries
    sources = {(s["source"], s["state"]): s for s in data["sources"]}
    grub = sources["grub", "read"]
    assert grub["location"] == str(tree.boot / "grub" / "grub.cfg") and grub["entries"] == 7 and grub["reason"] is None
    assert ("bls", "read") in sources  # the tree's (empty) loader/entries
    entries = data["entries"]
    assert len(entries) == 7
    for entry in entries:
        assert set(entry) == ENTRY_KEYS
        assert entry["source"] == "grub"
        for f in entry["files"]:
            assert set(f) == FILE_KEYS
            assert f["partition"] == "boot" and f["fs_uuid"] == BOOT_UUID
            assert f["key"] == f["path"]  # a separate /boot: the path is the key
    first = entries[0]
    assert first["title"] == "Arch GNU/Linux" and first["version"] is None
    assert first["id"] == "gnulinux-simple-7b376f0d-99f8-401c-bbd0-7f822c011815"
    assert first["options"].startswith("root=UUID=7b376f0d-99f8-401c-bbd0-7f822c011815 ro rootflags=subvol=@")
    assert [(f["path"], f["role"], f["cached"], f["present"]) for f in first["files"]] == [
        ("/vmlinuz-linux", "kernel", "cached", True),
        ("/intel-ucode.img", "initrd", "not cached", True),
        ("/initramfs-linux.img", "initrd", "not cached", True)]
    fallback = [e for e in entries if e["files"][2]["path"] == "/initramfs-linux-fallback.img"]
    assert len(fallback) == 2 and all(e["id"].startswith("Arch Linux snapshots>") for e in fallback)
    assert all(e["files"][2]["present"] is False for e in fallback)


def test_human_output_names_sources_entries_files_and_whether_each_is_complete(boot_tree: BootTree) -> None:
    tree = boot_tree
    grub_btrfs_host(tree)
    tree.write_kernel("6.1.0")
    tree.write_entry("debian-6.1.0", title="Debian 6.1.0", linux="/vmlinuz-6.1.0", initrd=["/initramfs-6.1.0.img"])
    assert tree.cli("add", "/vmlinuz-6.1.0")[0] == 0
    rc, out, err = tree.cli("entries")
    assert rc == 0 and err == "", out + err
    lines = out.splitlines()
    # Then the entries by health state (tests/cli/test_entries_health.py judges real images).
    assert any(line.startswith("8 boot entries (bls 1, grub 7): ") for line in lines), out
    assert out.count("\n    state: ") == 8
    assert any(line.split() == ["grub", str(tree.boot / "grub" / "grub.cfg"), "7", "entries"] for line in lines), out
    assert "  [grub] Arch GNU/Linux" in lines and "  [bls] Debian 6.1.0" in lines
    assert any(line.split() == ["kernel", "/vmlinuz-6.1.0", "root", "/vmlinuz-6.1.0", "cached", "present"]
               for line in lines), out
    assert any(line.split() == ["initrd", "/initramfs-linux-fallback.img", "boot", "/initramfs-linux-fallback.img",
                                "not", "cached", "MISSING"] for line in lines), out
    assert out.count("INCOMPLETE: 1 of 3 files missing") == 2  # the snapshots' fallback entries
    assert out.count("; complete") == 6


def test_works_without_a_cache_directory_and_creates_none(boot_tree: BootTree) -> None:
    tree = boot_tree
    grub_btrfs_host(tree)
    data, _ = entries_json(tree)
    assert {f["cached"] for e in data["entries"] for f in e["files"]} == {"not cached"}
    assert not tree.cache.exists()


def test_no_entry_source_says_what_was_looked_at(boot_tree: BootTree) -> None:
    tree = boot_tree
    shutil.rmtree(tree.boot / "loader")
    rc, out, err = tree.cli("entries")
    assert rc == 0, out + err
    assert "no boot entries: no entry source found (looked at " in out
    for looked in ("loader/entries", "EFI/Linux", "grub/grub.cfg", "grub2/grub.cfg"):
        assert str(tree.boot / looked) in out
    assert "hint: is the boot partition mounted?" in out
    data, _ = entries_json(tree)
    assert data["entries"] == [] and data["summary"] == "no boot entries (no entry source found)"
    assert {s["state"] for s in data["sources"]} == {"missing"}


def test_an_unreadable_source_is_unknown_its_readable_entries_listed_exit_1(boot_tree: BootTree) -> None:
    """grub-btrfs.cfg is a FIFO: nothing blocks, grub.cfg's own entries and the BLS entry are still
    listed, the source is unknown, and stderr is one line naming the file."""
    tree = boot_tree
    grub_btrfs_host(tree)
    btrfs_cfg = tree.boot / "grub" / "grub-btrfs.cfg"
    btrfs_cfg.unlink()
    os.mkfifo(btrfs_cfg)
    tree.write_kernel("6.1.0")
    tree.write_entry("debian", linux="/vmlinuz-6.1.0")
    rc, out, err = tree.cli("entries", timeout=20)
    line = tree.assert_clean_error(rc, err, names=[str(btrfs_cfg)])
    assert "FIFO" in line
    assert "4 boot entries (bls 1; grub unknown)" in out
    assert "  [grub] Arch GNU/Linux" in out and "  [bls] debian" in out
    data, err = entries_json(tree, expected_rc=1)
    [grub] = [s for s in data["sources"] if s["source"] == "grub"]
    assert grub["state"] == "unknown" and str(btrfs_cfg) in grub["reason"] and grub["entries"] == 3
    assert len(data["entries"]) == 4


def test_a_fifo_grub_cfg_does_not_hang(boot_tree: BootTree) -> None:
    tree = boot_tree
    (tree.boot / "grub").mkdir()
    os.mkfifo(tree.boot / "grub" / "grub.cfg")
    rc, out, err = tree.cli("entries", "--json", timeout=20)
    tree.assert_clean_error(rc, err, names=[str(tree.boot / "grub" / "grub.cfg")])
    assert json.loads(out)["summary"] == "no boot entries (bls 0; grub unknown)"


def test_an_unreadable_index_lists_the_entries_and_exits_1(boot_tree: BootTree) -> None:
    tree = boot_tree
    grub_btrfs_host(tree)
    assert tree.cli("add", "/vmlinuz-linux")[0] == 0
    tree.index_file.write_text("{not json")
    rc, out, err = tree.cli("entries", "--json")
    tree.assert_clean_error(rc, err, names=[str(tree.index_file)])
    data = json.loads(out)
    assert len(data["entries"]) == 7
    assert {f["cached"] for e in data["entries"] for f in e["files"]} == {None}


# -- what Debian's own grub-mkconfig writes ------------------------------------------------------


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Any, Any]]:
    from realboot.grub_mkconfig import Layout, Unavailable, cached_kernels, missing_prerequisite, run_grub_mkconfig
    missing = missing_prerequisite()
    if missing is not None:
        pytest.skip(f"real grub-mkconfig: {missing}")
    try:
        kernels = cached_kernels(2)
    except Unavailable as e:
        pytest.skip(f"real grub-mkconfig: {e}")
    base = tmp_path_factory.mktemp("grub-mkconfig")
    result = {layout: run_grub_mkconfig(layout, kernels, base / layout.value) for layout in Layout}
    for g in result.values():
        for image in g.grub_cfg.parent.parent.glob("*.img"):
            image.unlink()
    yield result


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.parametrize("layout_name", ["SEPARATE_BOOT", "BOOT_ON_ROOT"])
def test_real_grub_mkconfig_output_every_file_keyed_and_present(boot_tree: BootTree, generated: dict[Any, Any],
                                                                layout_name: str) -> None:
    """The boot tree gets the files grub-mkconfig saw on its /boot filesystem (empty stand-ins)
    and the grub.cfg it wrote: every entry is listed, every file has the key boom uses (relative
    to /boot) and is present, so every entry is complete."""
    from realboot.grub_mkconfig import Layout
    g = generated[Layout[layout_name]]
    tree = boot_tree
    prefix = "/boot" if g.layout is Layout.BOOT_ON_ROOT else ""
    for path in g.files[g.boot_uuid]:
        if path.startswith(prefix + "/") and not path.startswith(prefix + "/grub/"):
            tree.write_file(path[len(prefix):], size=16)
    (tree.boot / "grub").mkdir()
    shutil.copy(g.grub_cfg, tree.boot / "grub" / "grub.cfg")
    data, err = entries_json(tree)
    versions = [k.version for k in g.kernels]
    assert data["summary"] == f"{1 + 2 * len(versions)} boot entries (bls 0, grub {1 + 2 * len(versions)})"
    for entry in data["entries"]:
        assert entry["source"] == "grub" and entry["version"] in versions
        assert [f["role"] for f in entry["files"]] == ["kernel", "initrd", "initrd"]  # amd-ucode.img, initrd.img-V
        for f in entry["files"]:
            assert f["path"] == prefix + f["key"], f
            assert f["partition"] == ("root" if prefix else "boot")
            assert f["present"] is True and f["cached"] == "not cached"
    rc, out, err = tree.cli("entries")
    assert rc == 0 and out.count("; complete") == 1 + 2 * len(versions), out + err


# -- scan says what its pass was for ------------------------------------------------------------


def test_scan_names_the_entries_it_examined_paths_for_and_warns_when_there_are_none(boot_tree: BootTree) -> None:
    tree = boot_tree
    grub_btrfs_host(tree)
    rc, out, err = tree.cli("scan")
    assert rc == 0, out + err
    assert out.startswith("7 boot entries (bls 0, grub 7); examined 4 paths, hashed 3: 3 cached"), out
    assert "no boot entries" not in err
    shutil.rmtree(tree.boot / "grub")
    shutil.rmtree(tree.boot / "loader")
    rc, out, err = tree.cli("scan")
    assert out.startswith("no boot entries (no entry source found); examined "), out
    warning = [line for line in err.splitlines() if "no boot entries" in line]
    looked_at = ", ".join(f"{tree.boot}/{name}"
                          for name in ("loader/entries", "EFI/Linux", "grub/grub.cfg", "grub2/grub.cfg"))
    assert warning == [f"bootwatch: warning: no boot entries: no entry source found (looked at {looked_at})"], err
    assert "bootwatch: hint: is the boot partition mounted?" in err
