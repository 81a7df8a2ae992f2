"""Shared fixtures for the cache tests: a throw-away boot directory, its cache, and the CLI.

Everything here is generic and additive: other test modules may use these fixtures or ignore
them. Nothing is autouse, so a module that tests the configuration search order itself is not
disturbed by the ``BOOTWATCH_CONFIG`` that :func:`bootwatch_config` sets.

- ``bootwatch_config``: an empty TOML file, and ``$BOOTWATCH_CONFIG`` pointing at it for the test,
  so neither the library nor a subprocess ever reads ``/etc/bootwatch``. (A file named explicitly
  must exist, see ``bootwatch/config.py``: hence a real, empty file rather than a missing one.)
- ``boot_tree``: a :class:`BootTree` with ``<tmp>/boot/loader/entries`` and a cache directory
  path (not created: the first writer creates it with mode 0700, as in real use).
- ``run_cli``: ``run_cli("add", "/vmlinuz-1")`` runs ``python -m bootwatch --boot-dir ...
  --cache-dir ...`` as a real subprocess and returns ``(rc, stdout, stderr)``.
- ``cache``: the library object (:class:`bootwatch.cache.operations.BootCache`) for the same directories.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

CliResult = tuple[int, str, str]


def sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def sha1_of(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def subprocess_env(config: Path | None = None,
                   extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a bootwatch subprocess: the repository importable, the test's config."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if config is not None:
        env["BOOTWATCH_CONFIG"] = str(config)
    if extra:
        env.update(extra)
    return env


def run_bootwatch(boot: Path | None, cache: Path | None, *args: str, config: Path | None = None,
                  timeout: float = 60, cwd: Path | None = None,
                  env: Mapping[str, str] | None = None) -> CliResult:
    """Run ``python -m bootwatch [--boot-dir B] [--cache-dir C] ARGS`` and return (rc, stdout, stderr)."""
    argv: list[str] = [sys.executable, "-m", "bootwatch"]
    if boot is not None:
        argv += ["--boot-dir", str(boot)]
    if cache is not None:
        argv += ["--cache-dir", str(cache)]
    argv += [str(a) for a in args]
    proc = subprocess.run(argv, env=subprocess_env(config, env), capture_output=True, text=True,
                          timeout=timeout, cwd=str(cwd) if cwd is not None else None)
    return proc.returncode, proc.stdout, proc.stderr


def run_bootwatch_with_fstab(fstab: Path, boot: Path, cache: Path, *args: str, config: Path | None = None,
                             cwd: Path | None = None, timeout: float = 60) -> CliResult:
    """Run the CLI like :func:`run_bootwatch`, in a mount namespace of its own where ``fstab``
    is bind-mounted over ``/etc/fstab`` (the host's stays as it is). Needs root."""
    script = 'mount --bind "$1" /etc/fstab && shift && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(fstab),
            sys.executable, "-m", "bootwatch", "--boot-dir", str(boot), "--cache-dir", str(cache),
            *[str(a) for a in args]]
    proc = subprocess.run(argv, env=subprocess_env(config), capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd) if cwd is not None else None)
    return proc.returncode, proc.stdout, proc.stderr


class BootTree:
    """A boot directory with BLS entries, and where its cache lives."""

    def __init__(self, root: Path, config: Path) -> None:
        self.root = root
        self.boot = root / "boot"
        self.entries = self.boot / "loader" / "entries"
        self.cache = root / "cache"
        self.config = config
        self.entries.mkdir(parents=True)

    @staticmethod
    def assert_clean_error(rc: int, stderr: str, *, expected_rc: int = 1, names: Iterable[str] = ()) -> str:
        """An error the way users must see it: the exit code, no traceback, a first line naming the file.

        Returns the first line of stderr (the error itself; a second line may hold the hint).
        """
        assert rc == expected_rc, f"exit code {rc}, expected {expected_rc}; stderr:\n{stderr}"
        assert "Traceback" not in stderr, stderr
        lines = stderr.strip().splitlines()
        assert lines, "no error message on stderr"
        assert all(line.startswith("bootwatch: ") for line in lines), stderr
        assert len([line for line in lines if not line.startswith("bootwatch: hint:")]) == 1, \
            f"the error is not one line:\n{stderr}"
        for name in names:
            assert name in lines[0], f"{name!r} not named in the error: {lines[0]!r}"
        return lines[0]

    sha1_of = staticmethod(sha1_of)
    sha1_bytes = staticmethod(sha1_bytes)

    # -- boot files --------------------------------------------------------------------------

    def path(self, img_path: str) -> Path:
        """The file behind the boom-style path ``/vmlinuz-1``."""
        return self.boot / img_path.lstrip("/")

    def write_file(self, img_path: str, size: int = 4096, *, content: bytes | None = None,
                   mode: int = 0o644, mtime: int | None = None) -> str:
        """Write a boot file (random content unless given) and return its SHA1."""
        data = os.urandom(size) if content is None else content
        target = self.path(img_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.chmod(target, mode)
        if mtime is not None:
            os.utime(target, (mtime, mtime))
        return sha1_bytes(data)

    def write_kernel(self, version: str, size: int = 4096) -> dict[str, str]:
        """``/vmlinuz-V`` and ``/initramfs-V.img``: {path: sha1}."""
        return {f"/vmlinuz-{version}": self.write_file(f"/vmlinuz-{version}", size),
                f"/initramfs-{version}.img": self.write_file(f"/initramfs-{version}.img", size)}

    # -- BLS entries -------------------------------------------------------------------------

    def write_entry(self, name: str, lines: Sequence[tuple[str, str]] = (), *, title: str | None = None,
                    linux: str | None = None, initrd: Sequence[str] | None = None,
                    efi: str | None = None, devicetree: str | None = None) -> Path:
        """Write ``<entries>/<name>.conf``.

        ``lines`` are raw ``(key, value)`` pairs written as given (for repeated keys); the keyword
        arguments add the usual lines, ``initrd`` one line per item.
        """
        out = [f"title {title or name}"]
        if linux:
            out.append(f"linux {linux}")
        for item in initrd or ():
            out.append(f"initrd {item}")
        if efi:
            out.append(f"efi {efi}")
        if devicetree:
            out.append(f"devicetree {devicetree}")
        out += [f"{k} {v}" for k, v in lines]
        target = self.entries / (name if name.endswith(".conf") else f"{name}.conf")
        target.write_text("\n".join(out) + "\n")
        return target

    def remove_entry(self, name: str) -> None:
        (self.entries / (name if name.endswith(".conf") else f"{name}.conf")).unlink()

    # -- the cache ---------------------------------------------------------------------------

    @property
    def index_file(self) -> Path:
        return self.cache / "cacheindex.json"

    def index_bytes(self) -> bytes:
        return self.index_file.read_bytes()

    def read_index(self) -> dict[str, Any]:
        return json.loads(self.index_file.read_text())

    def image(self, image_id: str) -> Path:
        return self.cache / f"{image_id}.img"

    def images_on_disk(self) -> list[str]:
        if not self.cache.is_dir():
            return []
        return sorted(p.name[:-4] for p in self.cache.glob("*.img") if len(p.name) == 44)

    def temp_files(self) -> list[str]:
        """Temp files in the cache directory and in its temp subdirectory (``.tmp/``)."""
        found: list[str] = []
        for directory in (self.cache, self.cache / ".tmp"):
            if directory.is_dir():
                found += [p.name for p in directory.iterdir() if p.name.startswith(".bootwatch-tmp.")]
        return sorted(found)

    def cli(self, *args: str, timeout: float = 60, env: Mapping[str, str] | None = None,
            boot: Path | None = None, cache: Path | None = None) -> CliResult:
        """Run the CLI on this tree (or on another ``boot``/``cache`` directory)."""
        return run_bootwatch(boot or self.boot, cache or self.cache, *args, config=self.config,
                             timeout=timeout, cwd=self.root, env=env)

    def cli_with_fstab(self, fstab: Path, *args: str) -> CliResult:
        """Run the CLI on this tree with ``fstab`` as its ``/etc/fstab`` (see :func:`run_bootwatch_with_fstab`)."""
        return run_bootwatch_with_fstab(fstab, self.boot, self.cache, *args, config=self.config, cwd=self.root)

    def cli_bare(self, *args: str, timeout: float = 60) -> CliResult:
        """Run the CLI with only the test's config: no --boot-dir/--cache-dir before ARGS."""
        return run_bootwatch(None, None, *args, config=self.config, timeout=timeout, cwd=self.root)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for a Python child that imports bootwatch (crash and lock tests)."""
        return subprocess_env(self.config, extra)

    def cli_json(self, *args: str) -> Any:
        rc, out, err = self.cli(*args)
        assert rc == 0, f"bootwatch {' '.join(args)} failed ({rc}):\n{out}\n{err}"
        assert "Traceback" not in err, err
        return json.loads(out)

    def list_json(self) -> dict[str, dict[str, Any]]:
        """``list --json`` keyed by path."""
        return {row["path"]: row for row in self.cli_json("list", "--json")}

    def set_keep(self, keep: int) -> None:
        """Write ``[cache] keep`` into the test's config file (read by every later subprocess)."""
        self.config.write_text(f"[cache]\nkeep = {keep}\n")

    def library(self, keep: int = 2):
        """A :class:`bootwatch.cache.operations.BootCache` for this tree."""
        from bootwatch.cache.operations import BootCache
        return BootCache(self.boot, self.entries, self.cache, keep=keep)


@pytest.fixture
def bootwatch_config(tmp_path_factory: pytest.TempPathFactory,
                     monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty config file; ``$BOOTWATCH_CONFIG`` names it for this test (never /etc)."""
    config = tmp_path_factory.mktemp("bootwatch-config") / "bootwatch.toml"
    config.write_text("")
    monkeypatch.setenv("BOOTWATCH_CONFIG", str(config))
    return config


@pytest.fixture
def boot_tree(tmp_path: Path, bootwatch_config: Path) -> BootTree:
    return BootTree(tmp_path, bootwatch_config)


@pytest.fixture
def run_cli(boot_tree: BootTree):
    """``run_cli(*args) -> (rc, stdout, stderr)`` for the boot tree of this test."""
    return boot_tree.cli


@pytest.fixture
def cache(boot_tree: BootTree):
    """The library view of ``boot_tree`` (keep = 2)."""
    return boot_tree.library()


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chown, mounts)")


def is_root() -> bool:
    return os.geteuid() == 0


def iter_final_images(cache_dir: Path) -> Iterator[Path]:
    """Every ``<sha1>.img`` in the cache directory."""
    for p in sorted(cache_dir.glob("*.img")):
        if len(p.name) == 44:
            yield p
