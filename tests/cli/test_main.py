"""The command line contract: exit codes 0/1/2/78, one-line errors naming the file, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUBCOMMANDS = ["add", "remove", "restore", "list", "show", "verify", "clean", "fsck"]


@pytest.mark.slow
def test_help_lists_every_subcommand(boot_tree) -> None:
    rc, out, err = boot_tree.cli("--help")
    assert rc == 0, err
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help_with_the_common_options(boot_tree, name: str) -> None:
    rc, out, err = boot_tree.cli(name, "--help")
    assert rc == 0, err
    for option in ("--config", "--boot-dir", "--cache-dir"):
        assert option in out


@pytest.mark.parametrize("args", [
    ("frobnicate",),
    ("add",),                    # PATH is required
    ("list", "--bogus"),
    ("show",),
    ("remove", "--force"),
])
def test_usage_errors_exit_2(boot_tree, args) -> None:
    rc, out, err = boot_tree.cli(*args)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and "usage:" in err


@pytest.mark.slow
def test_an_empty_cache_lists_nothing_and_is_consistent(boot_tree) -> None:
    boot_tree.cache.mkdir(mode=0o700)  # (no cache directory is no cache: see test_main_hygiene)
    assert boot_tree.cli_json("list", "--json") == []
    rc, out, err = boot_tree.cli("fsck")
    assert rc == 0, err
    assert boot_tree.cli("verify")[0] == 0


@pytest.mark.slow
def test_common_options_work_after_the_subcommand_and_override_the_config(boot_tree, tmp_path: Path) -> None:
    image_id = boot_tree.write_file("/vmlinuz-1")
    # The config names other directories; the command line wins.
    boot_tree.config.write_text(f'[paths]\nboot = "{tmp_path}/elsewhere"\ncache = "{tmp_path}/elsewhere-cache"\n')
    rc, out, err = boot_tree.cli_bare("add", "--boot-dir", str(boot_tree.boot),
                                      "--cache-dir", str(boot_tree.cache), "/vmlinuz-1")
    assert rc == 0, err
    assert boot_tree.read_index()["index"] == {"/vmlinuz-1": [image_id]}
    assert not (tmp_path / "elsewhere-cache").exists()


def test_the_config_file_sets_the_directories(boot_tree) -> None:
    image_id = boot_tree.write_file("/vmlinuz-1")
    boot_tree.config.write_text(f'[paths]\nboot = "{boot_tree.boot}"\ncache = "{boot_tree.cache}"\n')
    rc, out, err = boot_tree.cli_bare("add", "/vmlinuz-1")
    assert rc == 0, err
    assert boot_tree.read_index()["index"] == {"/vmlinuz-1": [image_id]}


@pytest.mark.slow
def test_a_bad_config_exits_78_naming_the_file(boot_tree) -> None:
    boot_tree.config.write_text("[cache]\nkeep = 0\n")
    rc, out, err = boot_tree.cli("list")
    boot_tree.assert_clean_error(rc, err, expected_rc=78, names=[str(boot_tree.config)])
    boot_tree.config.write_text("[cache\n")
    rc, out, err = boot_tree.cli("list")
    boot_tree.assert_clean_error(rc, err, expected_rc=78, names=[str(boot_tree.config)])


def test_a_missing_explicit_config_exits_78(boot_tree, tmp_path: Path) -> None:
    missing = tmp_path / "no-such.toml"
    rc, out, err = boot_tree.cli("--config", str(missing), "list")
    boot_tree.assert_clean_error(rc, err, expected_rc=78, names=[str(missing)])


@pytest.mark.slow
@pytest.mark.parametrize("args, name", [
    (("add", "/vmlinuz-nope"), "vmlinuz-nope"),
    (("show", "/vmlinuz-nope"), "/vmlinuz-nope"),
    (("restore", "/vmlinuz-nope"), "/vmlinuz-nope"),
    (("verify", "/vmlinuz-nope"), "/vmlinuz-nope"),
    (("remove", "/vmlinuz-nope"), "/vmlinuz-nope"),
])
def test_operation_errors_exit_1_with_one_line_naming_the_file(boot_tree, args, name: str) -> None:
    boot_tree.write_file("/vmlinuz-1")
    assert boot_tree.cli("add", "/vmlinuz-1")[0] == 0
    rc, out, err = boot_tree.cli(*args)
    boot_tree.assert_clean_error(rc, err, expected_rc=1, names=[name])


@pytest.mark.parametrize("args, name", [
    (("add", "relative-path"), "relative-path"),
    (("add", "/a/../../etc/passwd"), "/a/../../etc/passwd"),
])
def test_a_path_argument_that_is_no_boom_path_is_a_usage_error_naming_it(boot_tree, args, name: str) -> None:
    rc, out, err = boot_tree.cli(*args)
    boot_tree.assert_clean_error(rc, err, expected_rc=2, names=[name])


def test_adding_a_directory_fails_cleanly(boot_tree) -> None:
    (boot_tree.boot / "subdir").mkdir()
    rc, out, err = boot_tree.cli("add", "/subdir")
    line = boot_tree.assert_clean_error(rc, err, names=["subdir"])
    assert "not a regular file" in line


@pytest.mark.slow
def test_an_unreadable_cache_directory_path_fails_cleanly(boot_tree, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    for name in ("list", "fsck"):
        rc, out, err = boot_tree.cli(name, cache=not_a_dir)
        boot_tree.assert_clean_error(rc, err, names=[str(not_a_dir)])


@pytest.mark.slow
def test_json_outputs_parse(boot_tree) -> None:
    boot_tree.write_file("/vmlinuz-1")
    boot_tree.write_entry("one", linux="/vmlinuz-1")
    assert boot_tree.cli("add", "/vmlinuz-1")[0] == 0
    for args in (("list", "--json"), ("show", "/vmlinuz-1", "--json"), ("verify", "--json"),
                 ("clean", "--dry-run", "--json"), ("fsck", "--json")):
        rc, out, err = boot_tree.cli(*args)
        assert rc == 0, (args, err)
        json.loads(out)


@pytest.mark.slow
def test_list_piped_into_a_closed_reader_does_not_trace(boot_tree) -> None:
    for n in range(30):
        boot_tree.write_file(f"/f{n}", 64)
    assert boot_tree.cli("add", *[f"/f{n}" for n in range(30)])[0] == 0
    reader = f"{sys.executable} -m bootwatch --boot-dir {boot_tree.boot} --cache-dir {boot_tree.cache} list " \
             f"| head -c 1 >/dev/null"
    proc = subprocess.run(["sh", "-c", reader], env=boot_tree.env(), capture_output=True,
                          text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_the_module_runs_without_a_tty_and_writes_nothing_outside(boot_tree, tmp_path: Path) -> None:
    before = sorted(os.listdir(tmp_path))
    assert boot_tree.cli("list")[0] == 2  # --cache-dir names no directory: no cache yet, said in one line
    assert sorted(os.listdir(tmp_path)) == before, "list must not create the cache directory"


@pytest.mark.slow
def test_an_absolute_path_inside_the_boot_directory_names_a_missing_file_too(boot_tree) -> None:
    """``restore /boot/vmlinuz-1`` is used exactly when the file is gone: the absolute form must still work."""
    image_id = boot_tree.write_file("/vmlinuz-1")
    absolute = str(boot_tree.path("/vmlinuz-1"))
    assert boot_tree.cli("add", absolute)[0] == 0
    boot_tree.path("/vmlinuz-1").unlink()
    shown = boot_tree.cli_json("show", absolute, "--json")
    assert (shown["path"], shown["state"]) == ("/vmlinuz-1", "MISSING")
    rc, out, err = boot_tree.cli("restore", absolute)
    assert rc == 0, err
    assert boot_tree.sha1_of(boot_tree.path("/vmlinuz-1")) == image_id
