"""ESP keys (``/../efi/...``) between bootwatch and the real boom (boom-boot 1.6.8).

The ESP is a directory beside boom's boot directory, named to bootwatch by ``[entries] esp``;
a BLS entry on it names the files. boom counts a cached path only for a boom entry of its own
that names it (and uncaches it otherwise at every command), so a boom entry names the same
``/../efi/...`` path; bootwatch, for its part, takes that path from the ESP's entry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from boomenv import BoomEnv, boom_command, boom_environment, sha1_file

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    boom_command() is None,
    reason="boom-boot is not installed: apt-get install libdbus-1-dev libglib2.0-dev "
           "pkg-config, then pip install boom-boot==1.6.8")]

VERSION = "6.1.0-1.bwtest"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[BoomEnv]:
    with boom_environment(tmp_path) as e:
        yield e


def esp_of(env: BoomEnv) -> Path:
    esp = env.boot.parent / "efi"
    esp.mkdir(exist_ok=True)
    config = env.bootwatch_config
    config.write_text(config.read_text() + f'\n[entries]\nesp = "{esp}"\n')
    return esp


def esp_kernel(env: BoomEnv, esp: Path) -> tuple[str, Path]:
    """A kernel on the ESP, an ESP entry naming it and a boom entry naming its key: (key, file)."""
    kernel = esp / "bw" / VERSION / "linux"
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(os.urandom(3000))
    (esp / "loader" / "entries").mkdir(parents=True, exist_ok=True)
    (esp / "loader" / "entries" / "bw.conf").write_text(f"title bw\nversion {VERSION}\nlinux /bw/{VERSION}/linux\n")
    key = "/" + os.path.relpath(kernel, env.boot)
    assert key == f"/../efi/bw/{VERSION}/linux"
    env.write_entry(VERSION, key)
    return key, kernel


def boom_api(env: BoomEnv, code: str, *args: str) -> None:
    """Run ``code`` with boom's cache API loaded for this boot directory (a fresh interpreter)."""
    script = ("import sys\nimport boom\nfrom boom.config import load_boom_config\n"
              "from boom.cache import load_cache, cache_path, find_cache_paths\nfrom boom import Selection\n"
              "boot = sys.argv[1]\nboom.set_boot_path(boot)\nboom.set_boom_path(boot + '/boom')\n"
              "load_boom_config()\nload_cache()\n" + code)
    proc = subprocess.run([sys.executable, "-c", script, str(env.boot), *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def row_of(rows: list[dict], key: str) -> dict:
    return next(r for r in rows if r["path"] == key)


def test_boom_lists_and_restores_an_esp_key_bootwatch_cached(env: BoomEnv) -> None:
    esp = esp_of(env)
    key, kernel = esp_kernel(env, esp)
    image_id = sha1_file(kernel)
    env.bootwatch("scan")
    assert row_of(env.bootwatch_list(), key)["image_id"] == image_id
    before = env.index_file.read_bytes()
    theirs = row_of(env.boom_cache_list(), key)
    assert env.index_file.read_bytes() == before, "boom uncached the ESP key"
    assert (theirs["image_id"], theirs["state"], theirs["count"]) == (image_id, "CACHED", 1)

    kernel.unlink()
    assert row_of(env.boom_cache_list(), key)["state"] == "MISSING"
    boom_api(env, "find_cache_paths(Selection(path=sys.argv[2]))[0].restore()\n", key)
    assert sha1_file(kernel) == image_id, "boom restored it elsewhere"
    assert (kernel.parent / ".linux.boomrestored").is_file(), "boom's marker is not beside the file on the ESP"
    assert row_of(env.boom_cache_list(), key)["state"] == "RESTORED"
    env.bootwatch("scan")  # reads the file boom wrote (its signature is not the one bootwatch recorded)
    ours = row_of(env.bootwatch_list(), key)
    assert (ours["image_id"], ours["state"], ours["count"]) == (image_id, "RESTORED", 1)


def test_bootwatch_reads_and_restores_an_esp_key_boom_cached(env: BoomEnv) -> None:
    esp = esp_of(env)
    key, kernel = esp_kernel(env, esp)
    image_id = sha1_file(kernel)
    boom_api(env, "cache_path(sys.argv[2])\n", key)
    assert env.read_index()["index"][key] == [image_id]
    ours = row_of(env.bootwatch_list(), key)
    assert (ours["image_id"], ours["state"], ours["count"]) == (image_id, "CACHED", 1)

    kernel.unlink()
    env.bootwatch("restore", key)
    assert sha1_file(kernel) == image_id and (kernel.parent / ".linux.boomrestored").is_file()
    theirs = row_of(env.boom_cache_list(), key)
    assert (theirs["state"], theirs["count"]) == ("RESTORED", 1)
