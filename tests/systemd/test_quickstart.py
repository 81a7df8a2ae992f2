"""The README's quick start, run as written in a fresh Debian 12 container with systemd as PID 1.

The commands are the README's own: the fenced ``sh`` blocks of its "Quick start" section, in
order. The block under the source step comes first, then those of one route (2a, the Debian
package; 2b, pip), then the check; each route runs as one ``sh -e`` script as root, in a fresh
container, so that a step which needs an earlier one, a package the README forgot or a command that
fails breaks the test. The README cannot drift from what works.

The container has no network; what it would fetch is provided on the host, and only as
configuration, never by editing a command:
- ``REPOSITORY``, the placeholder the README names, is a git repository of this working tree's
  files (a throw-away commit of them), bound read-only into the container;
- apt's sources are one local archive of the Debian packages the routes install: which ones the
  container lacks is asked of apt on the host against the container's dpkg database, with the
  ``apt-get install`` lines of the README (and, for the .deb route, the package's own
  dependencies); they are fetched with ``apt-get download`` on the host (cached), indexed with
  ``dpkg-scanpackages``;
- pip reads /etc/pip.conf: no index, and a wheelhouse of bootwatch's dependencies and its build
  backend built on the host.

The container is a Debian minbase tree with systemd and dbus and nothing else installed (no
python3, no git): a minimal Debian 12.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn_container import Container, booted_container, sigterm_raises
from nspawn_rootfs import RootfsSpec, cached_rootfs
from nspawn_wheels import build_wheels

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
CACHE_DIR = Path(os.environ.get("BOOTWATCH_TEST_CACHE", "/var/cache/bootwatch-tests"))
# A minimal Debian 12: systemd as PID 1 (and dbus, which systemctl uses), nothing of the README's.
MINIMAL = RootfsSpec(packages=("systemd", "dbus", "procps"))
PLACEHOLDER = "REPOSITORY"
# Where the host's files appear in the container (read-only).
SOURCE = "/opt/quickstart-source"
ARCHIVE = "/opt/quickstart-debs"
WHEELS = "/opt/quickstart-wheels"
# The headings (bold step titles) under which the README's sh blocks stand, per route.
SOURCE_STEP = "**1. Get the source.**"
ROUTES = {"deb": "**2a. Install the Debian package**", "pip": "**2b. Or install with pip**"}
CHECK_STEP = "**Check**"
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".mypy_cache", ".ruff_cache")


def _required(reason: str) -> None:
    if os.environ.get("BOOTWATCH_REQUIRE_NSPAWN") == "1":
        pytest.fail(f"quick-start tests required (BOOTWATCH_REQUIRE_NSPAWN=1), but {reason}")
    pytest.skip(reason)


def quickstart_blocks(readme: str) -> dict[str, str]:
    """The sh blocks of the README's quick start, by the step they stand under."""
    start = readme.index("## Quick start")
    section = readme[start:readme.index("\n## ", start + 1)]
    steps = {"source": SOURCE_STEP, **ROUTES, "check": CHECK_STEP}
    found: dict[str, str] = {}
    for name, title in steps.items():
        at = section.index(title)
        following = [section.find(t, at + 1) for t in steps.values() if section.find(t, at + 1) > at]
        body = section[at:min(following, default=len(section))]
        blocks = re.findall(r"^```sh\n(.*?)^```$", body, re.MULTILINE | re.DOTALL)
        assert len(blocks) == 1, f"README: {title} has {len(blocks)} sh blocks"
        found[name] = blocks[0]
    return found


def route_script(blocks: dict[str, str], route: str, repository: str) -> str:
    source = blocks["source"]
    assert source.count(PLACEHOLDER) == 1, source
    return source.replace(PLACEHOLDER, repository) + blocks[route] + blocks["check"]


def test_the_quick_start_has_a_block_per_step_and_no_sudo() -> None:
    blocks = quickstart_blocks(README.read_text())
    assert set(blocks) == {"source", "deb", "pip", "check"}
    assert all("sudo" not in block for block in blocks.values()), blocks
    assert "systemctl is-active bootwatch" in blocks["check"] and "bootwatch status" in blocks["check"]


def test_no_command_in_the_readme_says_sudo() -> None:
    """The README is read by root on a host without sudo: no section (the service, the hooks,
    development) shows a command with it, nor installs by hand what the quick start installs."""
    readme = README.read_text()
    assert re.findall(r"^(?:    |\t)?(?:\$ |# )?sudo .*$", readme, re.MULTILINE) == []
    service = readme[readme.index("## Running it as a service"):readme.index("\n## ", readme.index("## Running it"))]
    assert "install -" not in service and "daemon-reload" not in service, service


def apt_names(script: str) -> list[str]:
    """The package names of the script's apt-get install lines (local .deb files left out)."""
    names: list[str] = []
    for line in script.splitlines():
        words = shlex.split(line)
        if words[:2] == ["apt-get", "install"]:
            names += [w for w in words[2:] if not w.startswith(("-", "./", "/"))]
    return names


def local_archive(rootfs: Path, wanted: list[str], deb: Path, dest: Path) -> None:
    """A flat apt archive in *dest* of what installing *wanted* and *deb* needs in *rootfs*."""
    simulate = subprocess.run(["apt-get", "-s", "-o", f"Dir::State::status={rootfs}/var/lib/dpkg/status",
                               "-o", "APT::Install-Recommends=false", "install", *wanted, str(deb)],
                              capture_output=True, text=True, timeout=300, check=False)
    assert simulate.returncode == 0, simulate.stdout + simulate.stderr
    # "Inst python3-watchdog (2.2.1-1 Debian:12.15/oldstable [all])"
    packages = [(name, version, arch) for name, version, arch in
                re.findall(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)", simulate.stdout, re.MULTILINE)
                if name != "bootwatch"]
    pool = CACHE_DIR / "quickstart-debs"
    pool.mkdir(parents=True, exist_ok=True)
    missing = [f"{name}={version}" for name, version, arch in packages
               if not (pool / f"{name}_{version.replace(':', '%3a')}_{arch}.deb").is_file()]
    if missing:
        download = subprocess.run(["apt-get", "download", *missing], cwd=pool, capture_output=True, text=True,
                                  timeout=1800, check=False)
        if download.returncode != 0:
            _required(f"apt-get download of the quick start's packages failed: {download.stderr.strip()}")
    dest.mkdir(parents=True)
    for name, version, arch in packages:
        shutil.copy(pool / f"{name}_{version.replace(':', '%3a')}_{arch}.deb", dest)
    index = subprocess.run(["dpkg-scanpackages", "-m", "."], cwd=dest, capture_output=True, text=True,
                           check=True).stdout
    (dest / "Packages").write_text(index)


def source_repository(dest: Path) -> None:
    """A git repository of the working tree's files (what the README's clone gets)."""
    shutil.copytree(REPO, dest, ignore=_NOT_SOURCE, symlinks=True)
    git = ["git", "-C", str(dest), "-c", "user.name=quickstart", "-c", "user.email=quickstart@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the tree under test"]):
        subprocess.run([*git, *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def host_side(nspawn_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The minimal tree and a directory of what the container gets: source, archive, wheels."""
    for tool in ("dpkg-buildpackage", "dpkg-scanpackages", "git"):
        if shutil.which(tool) is None:
            _required(f"{tool} not installed (tests/run.sh installs it)")
    rootfs = cached_rootfs(MINIMAL, CACHE_DIR)
    work = tmp_path_factory.mktemp("quickstart")
    blocks = quickstart_blocks(README.read_text())
    # The .deb route installs the package it builds: its dependencies come from the archive too.
    proc = subprocess.run([str(REPO / "contrib/package"), "deb", "--dist", str(work / "dist"),
                           "--build-dir", str(work / "build")], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    deb = Path(proc.stdout.strip().splitlines()[-1])
    names = apt_names(blocks["source"] + blocks["deb"] + blocks["pip"])
    local_archive(rootfs, names, deb, work / "debs")
    source_repository(work / "source")
    build_wheels(REPO, work / "wheels")
    # pip's build backend for the source tree (pip builds it in an isolated environment).
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(work / "wheels"),
                    "setuptools>=61", "wheel"], check=True, capture_output=True)
    return rootfs, work


@pytest.fixture(params=sorted(ROUTES))
def route_container(request: pytest.FixtureRequest, host_side: tuple[Path, Path]) -> Iterator[
        tuple[Container, str]]:
    rootfs, work = host_side
    route: str = request.param
    script = route_script(quickstart_blocks(README.read_text()), route, SOURCE)
    with sigterm_raises(), booted_container(
            rootfs, machine=f"bwqs{route}{os.getpid()}", log=work / f"nspawn-{route}.log",
            nspawn_args=[f"--bind-ro={work / 'source'}:{SOURCE}", f"--bind-ro={work / 'debs'}:{ARCHIVE}",
                         f"--bind-ro={work / 'wheels'}:{WHEELS}",
                         # /boot a filesystem of its own, as a boot partition.
                         "--tmpfs=/boot:mode=0755"]) as ct:
        try:
            # Configuration only: apt's one source is the local archive, pip's index the wheelhouse.
            ct.sh("rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*\n"
                  f"echo 'deb [trusted=yes] file:{ARCHIVE} ./' > /etc/apt/sources.list\n"
                  f"printf '[global]\\nno-index = true\\nfind-links = {WHEELS}\\n' > /etc/pip.conf")
            yield ct, script
        finally:
            (work / f"journal-{route}.txt").write_text(ct.run(
                ["journalctl", "-b", "--no-pager", "-o", "short-monotonic"], check=False).stdout)


def test_the_quick_start_works_as_written(route_container: tuple[Container, str]) -> None:
    ct, script = route_container
    # As root logged in: a login shell (-l) reads /etc/profile, whose PATH for root starts with
    # /usr/local/sbin:/usr/local/bin (where the pip route links the program), in root's home.
    proc = ct.run(["env", "DEBIAN_FRONTEND=noninteractive", "HOME=/root", "/bin/sh", "-l", "-exc",
                   f"cd /root\n{script}"], timeout=1800, check=False)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-6000:]
    assert ct.run(["systemctl", "is-active", "bootwatch"], check=False).stdout.strip() == "active"
    status = ct.run(["/bin/sh", "-lc", "bootwatch status"], check=False)
    assert status.returncode == 0 and "bootwatch is running" in status.stdout, status.stdout + status.stderr
    # Enabled, so it comes back after a reboot.
    assert ct.run(["systemctl", "is-enabled", "bootwatch"], check=False).stdout.strip() == "enabled"
