"""GRUB's environment block, read from files the real grub-editenv writes and from hostile ones."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bootwatch.entries.grubenv import BLOCK_SIZE, MAX_GRUBENV_SIZE, SIGNATURE, parse_grubenv, read_grubenv

SAMPLES = Path(__file__).resolve().parents[1] / "realboot" / "samples"
needs_grub_editenv = pytest.mark.skipif(shutil.which("grub-editenv") is None,
                                        reason="grub-editenv not installed (grub2-common)")


@needs_grub_editenv
def test_what_grub_editenv_writes_including_escaped_newlines_and_backslashes(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", str(path), "create"], check=True)
    values = {"kernelopts": "root=UUID=abc ro crashkernel=auto", "tuned_initrd": "", "odd": "a\\b\nc=d",
              "saved_entry": "gnulinux-advanced-x>gnulinux-6.1.0-advanced-x"}
    subprocess.run(["grub-editenv", str(path), "set", *(f"{k}={v}" for k, v in values.items())], check=True)
    assert path.stat().st_size == BLOCK_SIZE
    env = read_grubenv(path)
    assert env.unknown is None
    assert dict(env.values) == values
    listed = subprocess.run(["grub-editenv", str(path), "list"], check=True, capture_output=True, text=True).stdout
    assert listed == "".join(f"{k}={v}\n" for k, v in values.items())  # GRUB's own reading agrees


def test_the_fedora_sample_written_by_grub_editenv() -> None:
    env = read_grubenv(SAMPLES / "fedora" / "grub2" / "grubenv")
    assert env.unknown is None
    assert env.get("tuned_initrd") == "" and env.get("tuned_params") == ""
    assert (env.get("kernelopts") or "").startswith("root=/dev/mapper/rhel-root ro ")
    assert env.get("absent") is None


def test_comments_padding_and_later_definitions() -> None:
    data = SIGNATURE + b"# a comment=not a value\na=1\nnoequals\n=nameless\na=2\nb=x=y\n"
    data += b"#" * (BLOCK_SIZE - len(data))
    assert parse_grubenv(data) == {"a": "2", "b": "x=y"}


def test_a_missing_block_is_known_to_define_nothing(tmp_path: Path) -> None:
    env = read_grubenv(tmp_path / "grubenv")
    assert env.unknown is None and dict(env.values) == {}


@pytest.mark.parametrize("content", [b"", b"kernelopts=ro\n", b"# GRUB Environment Blok\nkernelopts=ro\n"])
def test_no_signature_is_unknown(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "grubenv").write_bytes(content)
    env = read_grubenv(tmp_path / "grubenv")
    assert env.unknown is not None and "not a GRUB environment block" in env.unknown
    assert str(tmp_path / "grubenv") in env.unknown


def test_a_huge_block_is_unknown_and_not_read(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    with path.open("wb") as f:
        f.write(SIGNATURE)
        f.truncate(MAX_GRUBENV_SIZE + 1)
    env = read_grubenv(path)
    assert env.unknown is not None and "larger than" in env.unknown


def test_a_fifo_or_a_dangling_symlink_is_unknown_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "grubenv")
    env = read_grubenv(tmp_path / "grubenv")
    assert env.unknown is not None and "FIFO" in env.unknown
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    env = read_grubenv(tmp_path / "dangling")
    assert env.unknown is not None and "dangling symlink" in env.unknown
