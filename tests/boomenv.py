"""A throw-away boot directory that the real ``boom`` tool (boom-boot 1.6.8) accepts.

boom refuses to run unless the boot directory holds ``boom/boom.conf``, ``boom/profiles/``,
``boom/hosts/`` and ``loader/entries/``. ``boom.conf`` must name the boot directory, the boom
directory and the cache directory explicitly: boom's ``load_boom_config()`` replaces whatever
``--boot-dir`` set with the values from the file, and falls back to ``/boot`` for a missing key.
So a test that forgot one of them would quietly read (and, through boom's automatic cache clean,
modify) the host's real ``/boot``.

The cache directory is ``<boot>/boom/cache``, boom's default, and bootwatch is pointed at the
same directory with ``--cache-dir``: the two tools share one cache, as they do on a real host.

boom counts a BLS entry towards a cache path only if the entry matches one of its OS profiles,
and every boom command (even ``boom cache list``) uncaches the paths whose count is 0. The OS
profile written here matches every entry whose ``version`` contains :data:`UNAME_TAG`, so the
entries written by :meth:`BoomEnv.write_entry` keep their paths alive in boom's eyes.

Both tools run as subprocesses, never in this process: boom keeps its configuration and its
cache index in module-level globals, and bootwatch is tested through its real command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The root of the bootwatch source tree; put on PYTHONPATH so ``python -m bootwatch`` works
#: without installing the package.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Every kernel version used in these tests contains this tag; the OS profile's uname pattern
#: is this tag, so boom matches each entry to the profile.
UNAME_TAG = "bwtest"

#: boom's BLS entry names start with a machine id; any 32 hex digits do.
MACHINE_ID = "0123456789abcdef0123456789abcdef"

#: The fields ``boom cache list -o`` prints, in boom's names.
BOOM_CACHE_FIELDS = "path,imgid,ts,state,count"

#: The OS profile boom reads from ``boom/profiles/``. The file name and BOOM_OS_ID are boom's
#: own: ``boom profile create`` derives the id as the SHA1 of short name + version + version
#: id, so the file could equally be written by that command; writing it directly saves a
#: subprocess.
_PROFILE_SHORT_NAME = "bwtest"
_PROFILE_VERSION_ID = "1"


def _profile_text(os_id: str) -> str:
    return "\n".join([
        f'BOOM_OS_ID="{os_id}"',
        'BOOM_OS_NAME="Bootwatch Test OS"',
        f'BOOM_OS_SHORT_NAME="{_PROFILE_SHORT_NAME}"',
        f'BOOM_OS_VERSION="{_PROFILE_VERSION_ID}"',
        f'BOOM_OS_VERSION_ID="{_PROFILE_VERSION_ID}"',
        'BOOM_OS_KERNEL_PATTERN="/vmlinuz-%{version}"',
        'BOOM_OS_INITRAMFS_PATTERN="/initramfs-%{version}.img"',
        'BOOM_OS_ROOT_OPTS_LVM2="rd.lvm.lv=%{lvm_root_lv}"',
        'BOOM_OS_ROOT_OPTS_BTRFS="rootflags=%{btrfs_subvolume}"',
        'BOOM_OS_OPTIONS="root=%{root_device} ro"',
        'BOOM_OS_TITLE="%{os_name} %{os_version_id} (%{version})"',
        'BOOM_OS_OPTIONAL_KEYS=""',
        f'BOOM_OS_UNAME_PATTERN="{UNAME_TAG}"',
        "",
    ])


def boom_command() -> list[str] | None:
    """The argv prefix that runs the real boom, or None when boom-boot is not installed.

    The console script is looked for beside the running interpreter first (the venv's ``bin``),
    so the boom that is run is the one this interpreter can import.
    """
    try:
        # boom.command is what the console script runs; it pulls in dbus-python (through
        # boom.stratis), so a boom-boot installed without its built dependency counts as absent.
        import boom.command  # noqa: F401
    except ImportError:
        return None
    beside = Path(sys.executable).parent / "boom"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("boom")
    return [found] if found else None


def sha1_file(path: Path) -> str:
    """The image id boom gives ``path``: the lowercase SHA1 hex of its whole content."""
    digest = hashlib.sha1()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class BoomEnv:
    """One boot directory shared by boom and bootwatch, and the commands that run on it."""

    boot: Path
    boom_cmd: Sequence[str]
    #: A TOML config for bootwatch naming the same directories, so no test reads /etc.
    bootwatch_config: Path

    @property
    def boom_dir(self) -> Path:
        return self.boot / "boom"

    @property
    def cache(self) -> Path:
        return self.boom_dir / "cache"

    @property
    def entries(self) -> Path:
        return self.boot / "loader" / "entries"

    @property
    def index_file(self) -> Path:
        return self.cache / "cacheindex.json"

    # -- boot files and entries -------------------------------------------------------------

    def write_image(self, img_path: str, size: int = 4096, mode: int = 0o644) -> str:
        """Create the boot file ``img_path`` (boom style, ``/vmlinuz-...``) with random content.

        Random content keeps every image id distinct: two paths with equal content would share
        one ``.img`` and deleting it for one test case would break the other.
        Returns the image id.
        """
        target = self.boot_file(img_path)
        data = os.urandom(size)
        target.write_bytes(data)
        target.chmod(mode)
        return hashlib.sha1(data).hexdigest()

    def boot_file(self, img_path: str) -> Path:
        """The file in the boot directory that the boom-style ``img_path`` names."""
        if not img_path.startswith("/") or ".." in img_path.split("/"):
            raise ValueError(f"not a boom image path: {img_path!r}")
        return self.boot / img_path.lstrip("/")

    def restored_marker(self, img_path: str) -> Path:
        """The empty dot file that marks ``img_path`` as restored from the cache."""
        f = self.boot_file(img_path)
        return f.parent / f".{f.name}.boomrestored"

    def write_entry(self, version: str, linux: str, initrd: str | None = None,
                    title: str | None = None) -> Path:
        """Write a BLS entry that boom matches to the test OS profile (through ``version``).

        This is what ``boom create`` writes, minus the ``#OsIdentifier`` comment: boom matches
        the entry by the uname pattern instead. ``title`` makes several entries for one kernel
        distinct files.
        """
        if UNAME_TAG not in version:
            raise ValueError(f"version {version!r} must contain {UNAME_TAG!r} to match the profile")
        title = title or f"Test {version}"
        lines = [f"title {title}", f"machine-id {MACHINE_ID}", f"version {version}",
                 f"linux {linux}"]
        if initrd is not None:
            lines.append(f"initrd {initrd}")
        lines.append("options root=/dev/sda1 ro")
        name = f"{MACHINE_ID}-{hashlib.sha1(title.encode()).hexdigest()[:7]}-{version}.conf"
        entry = self.entries / name
        entry.write_text("\n".join(lines) + "\n")
        return entry

    def write_kernel(self, version: str, title: str | None = None) -> dict[str, str]:
        """A kernel and initramfs for ``version`` plus an entry using both.

        Returns ``{image path: image id}``.
        """
        linux, initrd = f"/vmlinuz-{version}", f"/initramfs-{version}.img"
        ids = {linux: self.write_image(linux, 3000), initrd: self.write_image(initrd, 5000)}
        self.write_entry(version, linux, initrd, title=title)
        return ids

    # -- boom ------------------------------------------------------------------------------

    def boom(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run the real boom on this boot directory.

        ``BOOM_BOOT_PATH`` is set as well as ``--boot-dir``: boom reads either, and setting
        both makes sure no code path in boom falls back to ``/boot``.
        """
        env = dict(os.environ, BOOM_BOOT_PATH=str(self.boot))
        argv = [*self.boom_cmd, *args, "--boot-dir", str(self.boot)]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(_describe(argv, proc))
        return proc

    def boom_cache_list(self) -> list[dict[str, Any]]:
        """``boom cache list --json``, as ``[{"path", "image_id", "ts", "state", "count"}]``.

        boom prints ``{"Cache": [{"cache_path", "cache_imgid", ...}]}``; 1.6.8 prints the full
        image id in JSON output (the abbreviated id is only used in its tables).
        Careful: like every boom command this also uncaches paths with a count of 0.
        """
        proc = self.boom("cache", "list", "--json", "-o", BOOM_CACHE_FIELDS)
        try:
            rows = json.loads(proc.stdout)["Cache"]
        except (ValueError, KeyError) as err:
            raise AssertionError(f"boom cache list printed no Cache report ({err}):\n"
                                 f"{proc.stdout}\n{proc.stderr}") from err
        # boom's report prints a number 0 as the string "0" (and other numbers as numbers).
        return [{"path": r["cache_path"], "image_id": r["cache_imgid"], "ts": int(r["cache_ts"]),
                 "state": r["cache_state"], "count": int(r["cache_count"])} for r in rows]

    def boom_create(self, version: str, backup: bool = True, title: str | None = None
                    ) -> subprocess.CompletedProcess:
        """``boom create`` an entry for ``version`` using the test profile.

        With ``backup``, boom copies the kernel and initramfs into its cache under the backup
        names ``/vmlinuz-V.boom0`` and ``/initramfs-V.img.boom0``, restores those copies into
        the boot directory (with ``.boomrestored`` dot files) and makes the entry use them.
        """
        args = ["create", "--profile", self.profile_id, "--version", version,
                "--title", title or f"Boom {version}", "--root-device", "/dev/sda1", "--no-dev",
                "--machine-id", MACHINE_ID]
        if backup:
            args.append("--backup")
        return self.boom(*args)

    def boom_api_cache(self, *img_paths: str) -> subprocess.CompletedProcess:
        """Cache ``img_paths`` through boom's Python API, ``boom.cache.cache_path()``.

        This is the only way to make boom cache a path under its own name (``boom create
        --backup`` caches the ``.boomN`` backup names). Runs in a fresh interpreter because
        boom keeps its configuration in module globals.
        """
        script = (
            "import sys\n"
            "import boom\n"
            "from boom.config import load_boom_config\n"
            "from boom.cache import load_cache, cache_path\n"
            "boot = sys.argv[1]\n"
            "boom.set_boot_path(boot)\n"
            "boom.set_boom_path(boot + '/boom')\n"
            "load_boom_config()\n"
            "assert boom.get_cache_path() == boot + '/boom/cache', boom.get_cache_path()\n"
            # Without load_cache() boom would write an index holding only the new paths.
            "load_cache()\n"
            "for p in sys.argv[2:]:\n"
            "    cache_path(p)\n"
        )
        argv = [sys.executable, "-c", script, str(self.boot), *img_paths]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(_describe(argv, proc))
        return proc

    @property
    def profile_id(self) -> str:
        return profile_os_id()

    # -- bootwatch -------------------------------------------------------------------------

    def bootwatch(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``python -m bootwatch`` with this boot and cache directory."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        argv = [sys.executable, "-m", "bootwatch", "--config", str(self.bootwatch_config),
                "--boot-dir", str(self.boot), "--cache-dir", str(self.cache), *args]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                              cwd=str(self.boot.parent))
        if check and proc.returncode != 0:
            raise AssertionError(_describe(argv, proc))
        return proc

    def bootwatch_list(self) -> list[dict[str, Any]]:
        """``bootwatch list --json``: a JSON array of objects."""
        proc = self.bootwatch("list", "--json")
        try:
            rows = json.loads(proc.stdout)
        except ValueError as err:
            raise AssertionError(f"bootwatch list --json printed no JSON ({err}):\n"
                                 f"{proc.stdout}\n{proc.stderr}") from err
        if not isinstance(rows, list):
            raise AssertionError(f"bootwatch list --json printed no array:\n{proc.stdout}")
        return rows

    # -- the index -------------------------------------------------------------------------

    def read_index(self) -> dict[str, Any]:
        return json.loads(self.index_file.read_text())


def profile_os_id() -> str:
    """boom's OS id for the test profile: SHA1 of short name + version + version id.

    This is how ``OsProfile._generate_id`` computes it; boom recomputes the id when it loads a
    profile, so a wrong id here would make ``--profile`` select nothing.
    """
    data = _PROFILE_SHORT_NAME + _PROFILE_VERSION_ID + _PROFILE_VERSION_ID
    return hashlib.sha1(data.encode()).hexdigest()


def _describe(argv: Sequence[str], proc: subprocess.CompletedProcess) -> str:
    return (f"command failed with exit {proc.returncode}: {' '.join(argv)}\n"
            f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}")


def layout(boot: Path, boom_cmd: Sequence[str]) -> BoomEnv:
    """Lay out a boom boot directory in the existing empty directory ``boot``."""
    boom_dir = boot / "boom"
    for d in (boom_dir / "profiles", boom_dir / "hosts", boom_dir / "cache",
              boot / "loader" / "entries"):
        # 0700 as 'boom config create' makes them; bootwatch refuses a cache directory
        # that group or other can write to.
        d.mkdir(mode=0o700, parents=True)
    (boom_dir / "boom.conf").write_text(
        "[global]\n"
        f"boot_root = {boot}\n"
        f"boom_root = {boom_dir}\n"
        "\n"
        "[legacy]\n"
        "enable = no\n"
        "\n"
        "[cache]\n"
        "enable = yes\n"
        f"cache_path = {boom_dir / 'cache'}\n")
    os_id = profile_os_id()
    (boom_dir / "profiles" / f"{os_id}-{_PROFILE_SHORT_NAME}{_PROFILE_VERSION_ID}.profile"
     ).write_text(_profile_text(os_id))
    config = boot.parent / "bootwatch.toml"
    config.write_text(
        "[paths]\n"
        f'boot = "{boot}"\n'
        f'entries = "{boot / "loader" / "entries"}"\n'
        f'cache = "{boom_dir / "cache"}"\n')
    return BoomEnv(boot=boot, boom_cmd=tuple(boom_cmd), bootwatch_config=config)


@contextlib.contextmanager
def boom_environment(parent: Path | None = None) -> Iterator[BoomEnv]:
    """A fresh boom boot directory in a temp dir, removed on every exit path.

    Raises RuntimeError when boom-boot is not installed; tests skip before calling this.
    """
    cmd = boom_command()
    if cmd is None:
        raise RuntimeError("boom-boot is not installed")
    with tempfile.TemporaryDirectory(prefix="bootwatch-boom-", dir=parent) as tmp:
        # mkdtemp makes the directory 0700, which bootwatch's ownership/permission checks
        # on the cache directory's parents (if any) accept.
        boot = Path(tmp) / "boot"
        boot.mkdir(mode=0o755)
        yield layout(boot, cmd)
