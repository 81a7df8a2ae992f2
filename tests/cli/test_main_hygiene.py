"""Smaller rules of the command line, each checked by running it for real.

- a --boot-dir that does not exist is a usage error, not an empty table;
- an error reading the index names the file, never a descriptor number;
- every argument error exits 2 (a bare name, a bad image id);
- a pin link whose PID field holds a non-ASCII digit is left alone by gc;
- control characters in names never reach the terminal raw (table, messages, errors, logs);
- fsck --repair does what it recommends for a symlinked index;
- check-config FILE reads FILE only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from daemonproc import run_with_config

pytestmark = pytest.mark.slow

BootTree = Any  # conftest.BootTree

ESCAPE_NAME = "vmlinuz-\x1b]0;owned\x07\x1b[2J\x9b1m"


def test_a_boot_dir_that_does_not_exist_is_a_usage_error(boot_tree: BootTree, tmp_path: Path) -> None:
    for args in (("list",), ("list", "--json"), ("clean", "--dry-run")):
        rc, out, err = boot_tree.cli(*args, boot=tmp_path / "nope")
        boot_tree.assert_clean_error(rc, err, expected_rc=2, names=[str(tmp_path / "nope"), "--boot-dir"])
        assert not out, out


def test_an_index_that_is_a_directory_is_named_in_the_error(boot_tree: BootTree) -> None:
    boot_tree.cache.mkdir(mode=0o700)
    boot_tree.index_file.mkdir()
    for args in (("list",), ("show", "/vmlinuz-1"), ("clean",)):
        rc, out, err = boot_tree.cli(*args)
        line = boot_tree.assert_clean_error(rc, err, expected_rc=1, names=[str(boot_tree.index_file)])
        assert "bootwatch: 3:" not in line and ": 3: " not in line, line


def test_argument_errors_exit_2(boot_tree: BootTree) -> None:
    boot_tree.write_file("/vmlinuz-X")
    for args in (("show", "vmlinuz-X"), ("add", "vmlinuz-X"), ("remove", "vmlinuz-X"), ("restore", "vmlinuz-X"),
                 ("verify", "vmlinuz-X"), ("show", "/a/../vmlinuz-X"), ("pin", "--path", "vmlinuz-X", "--", "true"),
                 ("pin", "--image", "deadbeef", "--", "true")):
        rc, out, err = boot_tree.cli(*args)
        boot_tree.assert_clean_error(rc, err, expected_rc=2)
    # Not a usage error: a well-formed path that is not cached (in a cache that exists).
    boot_tree.write_file("/vmlinuz-1")
    assert boot_tree.cli("add", "/vmlinuz-1")[0] == 0
    rc, out, err = boot_tree.cli("show", "/vmlinuz-X")
    boot_tree.assert_clean_error(rc, err, expected_rc=1, names=["/vmlinuz-X"])


def test_gc_leaves_a_pin_name_with_a_superscript_digit_alone(boot_tree: BootTree) -> None:
    boot_tree.cache.mkdir(mode=0o700)
    links = boot_tree.cache / "links"
    links.mkdir(mode=0o700)
    name = f"{'a' * 40}.12\u00b2.1.{'0' * 32}.0.img"
    (links / name).write_bytes(b"")
    rc, out, err = boot_tree.cli("gc")
    assert rc == 0 and "internal error" not in err and "Traceback" not in err, (rc, out, err)
    assert "left alone" in out
    assert (links / name).exists()


def test_control_characters_in_names_are_escaped_everywhere(boot_tree: BootTree) -> None:
    path = "/" + ESCAPE_NAME
    boot_tree.write_file(path)
    boot_tree.write_entry("one", linux=path)
    for args in (("add", path), ("list",), ("show", path), ("verify",), ("fsck",), ("show", path + "\x1b[31m"),
                 ("scan",), ("remove", "--force", path)):
        rc, out, err = boot_tree.cli(*args)
        assert "internal error" not in err, (args, err)
        for stream in (out, err):
            raw = [c for c in stream if (ord(c) < 0x20 and c not in "\n\t") or 0x7f <= ord(c) <= 0x9f]
            assert not raw, f"bootwatch {args[0]} printed control characters raw: {stream!r}"
    rc, out, err = boot_tree.cli("list")
    assert "\\x1b]0;owned\\x07" not in out  # removed above
    boot_tree.cli("add", path)
    rc, out, err = boot_tree.cli("list")
    assert "/vmlinuz-\\x1b]0;owned\\x07\\x1b[2J\\x9b1m" in out, out
    header, row = out.splitlines()[:2]
    assert header.index("IMAGE") == row.index(boot_tree.sha1_of(boot_tree.path(path))[:12]), "columns misaligned"


def test_a_newline_in_an_entry_never_starts_a_line_of_its_own(boot_tree: BootTree) -> None:
    # GRUB keeps a newline inside quotes (a title, a path, options); the output stream keeps
    # newlines, so every field printed from an entry escapes them itself. (The cache refuses a
    # path with a newline as a key: add/list/show never meet one; see boot_paths.)
    (boot_tree.boot / "grub").mkdir()
    (boot_tree.boot / "grub" / "grub.cfg").write_text(
        "menuentry 'one\nFORGED title' {\n\tlinux '/vmlinuz-1\nFORGED path' 'ro\nFORGED options'\n}\n"
        "menuentry 'two' {\n\tlinux /vmlinuz-2 ro\n}\n")
    boot_tree.write_file("/vmlinuz-2")
    for args in (("entries",), ("scan",), ("list",), ("clean", "--dry-run"), ("status",)):
        rc, out, err = boot_tree.cli(*args)
        assert "internal error" not in err and "Traceback" not in err, (args, err)
        forged = [line for line in (out + err).splitlines() if line.lstrip().startswith("FORGED")]
        assert not forged, f"bootwatch {args[0]} printed an entry's newline raw: {out + err!r}"
    out = boot_tree.cli("entries")[1]
    assert "one\\x0aFORGED title" in out and "ro\\x0aFORGED options" in out, out


def test_fsck_repair_replaces_a_symlinked_index_with_a_real_file(boot_tree: BootTree, tmp_path: Path) -> None:
    image_id = boot_tree.write_file("/vmlinuz-1")
    boot_tree.write_entry("one", linux="/vmlinuz-1")
    assert boot_tree.cli("add", "/vmlinuz-1")[0] == 0
    target = tmp_path / "elsewhere.json"
    target.write_bytes(boot_tree.index_bytes())
    boot_tree.index_file.unlink()
    boot_tree.index_file.symlink_to(target)
    target_before = target.read_bytes()
    rc, out, err = boot_tree.cli("list")
    boot_tree.assert_clean_error(rc, err, expected_rc=1, names=["symlink"])
    assert "fsck --repair" in err
    rc, out, err = boot_tree.cli("fsck", "--repair")
    assert rc == 0, (out, err)
    assert not boot_tree.index_file.is_symlink() and boot_tree.index_file.is_file()
    assert target.read_bytes() == target_before, "repair wrote through the symlink"
    assert boot_tree.list_json()["/vmlinuz-1"]["image_id"] == image_id
    assert boot_tree.image(image_id).is_file()


def test_check_config_file_reads_only_that_file(boot_tree: BootTree, tmp_path: Path) -> None:
    boot_tree.config.write_text("[watch]\nsettle = \"broken\"\n")  # the default ($BOOTWATCH_CONFIG), broken
    good = tmp_path / "good.toml"
    good.write_text('[watch]\nsettle = "2s"\n')
    rc, out, err = boot_tree.cli_bare("check-config", str(good))
    assert rc == 0, err
    assert 'settle = "2s"' in out and str(good) in out
    # The broken one is still refused when it is the one asked for.
    result = run_with_config(boot_tree.config, "check-config", timeout=30)
    assert result.returncode == 78 and "[watch] settle" in result.stderr
    assert os.environ.get("BOOTWATCH_CONFIG") == str(boot_tree.config)


def test_clean_dry_run_on_a_mistyped_cache_dir_writes_nothing_and_does_not_say_nothing_to_clean(
        boot_tree: BootTree, tmp_path: Path) -> None:
    """A dry run must not write, and a cache directory that does not exist is not an empty cache:
    a mistyped --cache-dir is a usage error, as a mistyped --boot-dir is, for every command that
    only reads the cache (and for clean, which only takes from it)."""
    boot_tree.write_file("/vmlinuz-1")
    typo = tmp_path / "cahce"
    for args in (("clean", "--dry-run"), ("clean", "--dry-run", "--json"), ("clean",), ("list",), ("list", "--json"),
                 ("show", "/vmlinuz-1"), ("verify",), ("fsck",), ("fsck", "--repair")):
        rc, out, err = boot_tree.cli(*args, cache=typo)
        assert not typo.exists(), f"{args} created {typo}: {sorted(os.listdir(typo))}"
        boot_tree.assert_clean_error(rc, err, expected_rc=2, names=[str(typo), "--cache-dir"])
        assert not out, f"{args}: {out}"


def test_a_cache_that_was_never_made_is_no_cache_not_an_empty_one(boot_tree: BootTree, tmp_path: Path) -> None:
    """A fresh host where the daemon never ran: the configured cache directory is not there.
    The commands that only read say so (exit 1) and create nothing; a command that writes makes it."""
    cache = tmp_path / "var-cache-bootwatch"
    boot_tree.config.write_text(f'[paths]\nboot = "{boot_tree.boot}"\ncache = "{cache}"\n')
    boot_tree.write_file("/vmlinuz-1")
    for args in (("list",), ("list", "--json"), ("verify",), ("fsck",), ("clean", "--dry-run"), ("clean",)):
        rc, out, err = boot_tree.cli_bare(*args)
        line = boot_tree.assert_clean_error(rc, err, expected_rc=1, names=[str(cache)])
        assert "no cache directory" in line and "hint:" in err, err
        assert not out and not cache.exists(), (args, out)
    assert boot_tree.cli_bare("add", "/vmlinuz-1")[0] == 0
    rc, out, err = boot_tree.cli_bare("list")
    assert rc == 0 and "/vmlinuz-1" in out, err


def test_a_dry_run_clean_writes_nothing_into_an_existing_cache(boot_tree: BootTree) -> None:
    """Not even the lock file or .tmp/: a dry run takes the lock only on a lock file that is there."""
    boot_tree.write_file("/vmlinuz-1")
    boot_tree.write_entry("one", linux="/vmlinuz-1")
    boot_tree.cache.mkdir(mode=0o700)
    rc, out, err = boot_tree.cli("clean", "--dry-run")
    assert rc == 0 and "nothing to clean" in out, err
    assert sorted(os.listdir(boot_tree.cache)) == []
