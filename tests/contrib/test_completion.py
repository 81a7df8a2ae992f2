"""The bash completion that contrib/generate-docs writes, loaded into a real bash and run as bash
runs it on Tab (COMP_WORDS, COMP_CWORD, _bootwatch, COMPREPLY): commands, each command's options,
option values, and the cached paths, image ids and entry ids of a real cache, listed by a real
bootwatch found on PATH."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, BootTree, subprocess_env
from docgen_support import generate_into, read_command_line, require_tool

pytestmark = pytest.mark.slow  # bash runs, some of which run bootwatch


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_into(tmp_path_factory.mktemp("docs"))["bootwatch"]


@pytest.fixture(scope="module")
def path_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with this tree's bootwatch in it, to be put first on PATH."""
    directory = tmp_path_factory.mktemp("bin")
    wrapper = directory / "bootwatch"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m bootwatch \"$@\"\n")
    wrapper.chmod(0o755)
    return directory


def complete(script: Path, *words: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> list[str]:
    """What bash offers for the command line ``words`` with the cursor at the end of the last word."""
    require_tool("bash", "bash")
    program = (f"source {shlex.quote(str(script))}\n"
               'COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))\n'
               "_bootwatch\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", program, "bash", *words], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_commands_and_top_level_options(script: Path) -> None:
    cli = read_command_line()
    assert complete(script, "bootwatch", "") == [c.name for c in cli.commands]
    assert complete(script, "bootwatch", "re") == ["remove", "restore"]
    assert complete(script, "bootwatch", "--c") == ["--config", "--cache-dir"]
    assert "--version" in complete(script, "bootwatch", "-")
    # After a common option and its value, the command is still the next word.
    assert complete(script, "bootwatch", "--cache-dir", "/x", "li") == ["list"]


def test_options_of_every_command(script: Path) -> None:
    for command in read_command_line().commands:
        offered = complete(script, "bootwatch", command.name, "-")
        expected = {o for a in command.options() for o in a.options} | {"--help", "--config", "--boot-dir",
                                                                         "--cache-dir"}
        if any(a.remainder for a in command.positionals()):
            expected.add("--")
        assert set(offered) == expected, command.name
    assert complete(script, "bootwatch", "clean", "--d") == ["--dry-run"]
    assert complete(script, "bootwatch", "--config", "/etc/x.toml", "scan", "--no") == ["--no-restore"]


def test_option_values(script: Path, tmp_path: Path) -> None:
    assert complete(script, "bootwatch", "prove", "--accel", "") == ["auto", "kvm", "tcg"]
    assert complete(script, "bootwatch", "prove", "--accel", "=", "k") == ["kvm"]
    assert complete(script, "bootwatch", "prove", "--timeout", "") == []
    (tmp_path / "conf.toml").write_text("")
    (tmp_path / "confdir").mkdir()
    assert complete(script, "bootwatch", "--config", "con", cwd=tmp_path) == ["conf.toml", "confdir"]
    assert complete(script, "bootwatch", "list", "--cache-dir", "con", cwd=tmp_path) == ["confdir"]
    # pin: after --, the command to run, then files.
    assert "true" in complete(script, "bootwatch", "pin", "--image", "x", "--", "tru")
    assert complete(script, "bootwatch", "pin", "--", "cp", "con", cwd=tmp_path) == ["conf.toml", "confdir"]


@pytest.fixture
def cached_tree(boot_tree: BootTree) -> BootTree:
    boot_tree.write_kernel("6.1.0-1")
    boot_tree.write_entry("one", linux="/vmlinuz-6.1.0-1", initrd=["/initramfs-6.1.0-1.img"])
    # A name that runs a command if anything evaluates it, and one with a space.
    boot_tree.write_file("/initrd-$(touch PWNED)")
    boot_tree.write_file("/odd name")
    rc, _, err = boot_tree.cli("add", "/vmlinuz-6.1.0-1", "/initramfs-6.1.0-1.img", "/initrd-$(touch PWNED)",
                               "/odd name")
    assert rc == 0, err
    return boot_tree


def tree_env(tree: BootTree, path_dir: Path) -> dict[str, str]:
    env = subprocess_env(tree.config)
    env["PATH"] = f"{path_dir}{os.pathsep}{env['PATH']}"
    return env


def test_cached_paths_from_the_index(script: Path, cached_tree: BootTree, path_dir: Path) -> None:
    env = tree_env(cached_tree, path_dir)
    dirs = ["--boot-dir", str(cached_tree.boot), "--cache-dir", str(cached_tree.cache)]
    paths = sorted(cached_tree.list_json())
    offered = complete(script, "bootwatch", *dirs, "restore", "", env=env, cwd=cached_tree.root)
    # Each offered as the shell would have to read it: quoted, never evaluated.
    assert [shlex.split(word) for word in offered] == [[p] for p in paths]
    assert "/initrd-\\$\\(touch\\ PWNED\\)" in offered
    assert not (cached_tree.root / "PWNED").exists() and not Path("PWNED").exists()
    for command in ("remove", "show", "verify"):
        assert complete(script, "bootwatch", "--boot-dir", str(cached_tree.boot), command,
                        "--cache-dir", str(cached_tree.cache), "/vm", env=env) == ["/vmlinuz-6.1.0-1"], command
    # --cache-dir=DIR, as one word or as bash splits it at the =.
    assert complete(script, "bootwatch", f"--cache-dir={cached_tree.cache}", "--boot-dir", str(cached_tree.boot),
                    "pin", "--path", "/in", env=env) == ["/initramfs-6.1.0-1.img", "/initrd-\\$\\(touch\\ PWNED\\)"]
    assert complete(script, "bootwatch", "--cache-dir", "=", str(cached_tree.cache), "--boot-dir",
                    str(cached_tree.boot), "show", "/o", env=env) == ["/odd\\ name"]
    # show takes one path: nothing after it.
    assert complete(script, "bootwatch", *dirs, "show", "/odd name", "", env=env) == []
    # add takes files, not what is cached already.
    assert complete(script, "bootwatch", *dirs, "add", "boot/vm", env=env, cwd=cached_tree.root) == \
        ["boot/vmlinuz-6.1.0-1"]


def test_image_and_entry_ids(script: Path, cached_tree: BootTree, path_dir: Path) -> None:
    env = tree_env(cached_tree, path_dir)
    dirs = ["--boot-dir", str(cached_tree.boot), "--cache-dir", str(cached_tree.cache)]
    images = sorted(i for row in cached_tree.list_json().values() for i in row["images"])
    assert sorted(complete(script, "bootwatch", *dirs, "pin", "--image", "", env=env)) == images
    assert complete(script, "bootwatch", *dirs, "pin", "--image", images[0][:8], env=env) == [images[0]]
    assert complete(script, "bootwatch", *dirs, "prove", "--all", "", env=env) == ["one.conf"]


def test_no_bootwatch_or_no_cache_offers_nothing(script: Path, boot_tree: BootTree, path_dir: Path) -> None:
    env = tree_env(boot_tree, path_dir)
    # No cache directory: list fails, and nothing is offered (no error on the terminal).
    assert complete(script, "bootwatch", "--cache-dir", str(boot_tree.root / "none"), "restore", "", env=env) == []
    # No such bootwatch: nothing either.
    assert complete(script, str(boot_tree.root / "bin" / "bootwatch"), "restore", "", env=env) == []


def test_the_script_is_this_trees(script: Path) -> None:
    assert script.read_text().startswith("# bash completion for bootwatch(8)")
    assert REPO_ROOT.joinpath("contrib", "generate-docs").is_file()
