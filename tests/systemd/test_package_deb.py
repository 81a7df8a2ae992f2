"""The Debian package: built by ``contrib/package deb``, checked by lintian, installed with dpkg in a
fresh Debian 12 container with systemd 252 as PID 1, used, and purged.

The container is the cached minbase tree (nspawn_rootfs) without its documentation filter (a real
host installs man pages). The package's dependencies are Debian's own packages: which ones the
container lacks is asked of apt on the host against the container's dpkg database (``apt-get -s
install ./bootwatch_*.deb man-db``), they are fetched with ``apt-get download`` on the host and
installed in the container with one ``dpkg -i``; the container has no network. Then, in file
order, each on the state the previous one leaves:

1. the service is enabled and active after the install, the catalog is in the journal's;
2. a real Debian kernel copied to /boot with a Boot Loader Specification entry naming it is cached
   by the running daemon, configured by the package's own /etc/bootwatch/bootwatch.toml;
3. ``man bootwatch`` and ``man bootwatch.toml`` render without a warning, bash completes;
4. ``apt-get remove`` leaves the kernel hooks (conffiles), which then say nothing;
5. ``apt-get purge bootwatch`` stops the daemon and removes the unit, the program, the
   configuration and the hooks, keeps the cache and says how to remove it.

BOOTWATCH_TEST_DEB=FILE tests that package instead of building one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn_container import Container, booted_container, sigterm_raises, wait_until
from nspawn_rootfs import RootfsSpec, cached_rootfs
from realboot.grub_mkconfig import Unavailable, extracted_kernel, kernel_debs

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("BOOTWATCH_TEST_CACHE", "/var/cache/bootwatch-tests"))
UNIT = "bootwatch.service"
# Where the host's files appear in the container (read-only).
DEBS = "/opt/bootwatch-debs"
KERNEL_DIR = "/opt/bootwatch-kernel"
# What the host needs to build and check the package (contrib/debian/control's Build-Depends).
BUILD_TOOLS = ("dpkg-buildpackage", "dh", "dh_python3", "lintian")
BUILD_HINT = ("apt-get install -y --no-install-recommends dpkg-dev debhelper dh-python pybuild-plugin-pyproject "
              "python3-all python3-setuptools lintian")

# The lintian tags left on the package (none is an error), each with why.
ACCEPTED_LINTIAN: dict[str, str] = {}


def _required(reason: str) -> None:
    if os.environ.get("BOOTWATCH_REQUIRE_NSPAWN") == "1":
        pytest.fail(f"Debian package tests required (BOOTWATCH_REQUIRE_NSPAWN=1), but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb: BOOTWATCH_TEST_DEB, else built from this tree once per session."""
    given = os.environ.get("BOOTWATCH_TEST_DEB")
    if given:
        return Path(given)
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        _required(f"{', '.join(missing)} not installed ({BUILD_HINT})")
    work = tmp_path_factory.mktemp("deb")
    proc = subprocess.run([str(REPO / "contrib/package"), "deb", "--dist", str(work / "dist"),
                           "--build-dir", str(work / "build")], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    built = Path(proc.stdout.strip().splitlines()[-1])
    assert re.fullmatch(r"bootwatch_[0-9][^_]*_all\.deb", built.name), built
    return built


def lintian_tags(deb: Path) -> list[str]:
    """lintian's findings on *deb*, as "E: bootwatch: tag [where]" lines."""
    proc = subprocess.run(["lintian", "--allow-root", "--fail-on", "none", str(deb)], capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if re.match(r"[EWIPXO]: ", line)]


def test_lintian_finds_no_error_and_no_warning_left_unexplained(package: Path) -> None:
    findings = lintian_tags(package)
    errors = [line for line in findings if line.startswith("E: ")]
    assert errors == [], findings
    warnings = {line.split()[2] for line in findings if line.startswith("W: ")}
    assert warnings <= set(ACCEPTED_LINTIAN), findings


# What the package installs besides the Python package: "MODE PATH" as contrib/package files
# lists them (the RPM's list is compared with the same normalisation).
SYSTEM_FILES = [
    "0644 /etc/bootwatch/bootwatch.toml",
    "0755 /etc/kernel/postinst.d/zzz-bootwatch",
    "0755 /etc/kernel/postrm.d/zzz-bootwatch",
    "0755 /usr/bin/bootwatch",
    "0755 /usr/lib/kernel/install.d/95-bootwatch.install",
    "0644 /usr/lib/systemd/catalog/bootwatch.catalog",
    "0644 /usr/lib/systemd/system/bootwatch.service",
    "0644 /usr/share/bash-completion/completions/bootwatch",
    "0644 /usr/share/man/man5/bootwatch.toml.5",
    "0644 /usr/share/man/man8/bootwatch.8",
]


def test_the_package_installs_the_tree_and_the_system_files(package: Path) -> None:
    proc = subprocess.run([str(REPO / "contrib/package"), "files", str(package)], capture_output=True, text=True,
                          check=True)
    listed = proc.stdout.splitlines()
    modules = sorted(f"0644 {{python}}/{p.relative_to(REPO)}" for p in (REPO / "bootwatch").rglob("*")
                     if p.suffix in (".py", ".typed") and "__pycache__" not in p.parts)
    python = [line for line in listed if line.split(" ", 1)[1].startswith("{python}/bootwatch/")]
    assert python == modules
    others = [line for line in listed if not line.split(" ", 1)[1].startswith("{python}/")]
    assert sorted(others) == sorted(SYSTEM_FILES)


def dependencies(deb: Path, rootfs: Path, dest: Path) -> list[Path]:
    """The Debian packages that installing *deb* and man-db in *rootfs* needs, downloaded into *dest*:
    apt on the host answers against the container's own dpkg database."""
    simulate = subprocess.run(["apt-get", "-s", "-o", f"Dir::State::status={rootfs}/var/lib/dpkg/status",
                               "-o", "APT::Install-Recommends=false", "install", str(deb), "man-db"],
                              capture_output=True, text=True, timeout=300, check=False)
    assert simulate.returncode == 0, simulate.stdout + simulate.stderr
    # "Inst python3-watchdog (2.2.1-1 Debian:12.15/oldstable [all])"
    wanted = [f"{name}={version}" for name, version in
              re.findall(r"^Inst (\S+) \((\S+) ", simulate.stdout, re.MULTILINE) if name != "bootwatch"]
    dest.mkdir(parents=True, exist_ok=True)
    download = subprocess.run(["apt-get", "download", *wanted], cwd=dest, capture_output=True, text=True,
                              timeout=600, check=False)
    if download.returncode != 0:
        _required(f"apt-get download of the package's dependencies failed: {download.stderr.strip()}")
    return sorted(dest.glob("*.deb"))


@pytest.fixture(scope="module")
def installed(package: Path, nspawn_prerequisites: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[Container, str]]:
    """A booted container with the package and its dependencies installed by dpkg; dpkg's output."""
    rootfs = cached_rootfs(RootfsSpec(), CACHE_DIR)
    work = tmp_path_factory.mktemp("deb-install")
    debs = work / "debs"
    deps = dependencies(package, rootfs, debs)
    shutil.copy(package, debs / package.name)
    try:
        kernel = extracted_kernel(kernel_debs(1)[0])
    except Unavailable as e:
        _required(f"no cached Debian kernel package: {e}")
    with sigterm_raises(), booted_container(
            rootfs, machine=f"bwpkg{os.getpid()}", log=work / "nspawn.log",
            # /boot a filesystem of its own (a tmpfs), as a boot partition: on the overlay root a
            # file's st_dev is its upper layer's, which bootwatch rightly takes for another filesystem.
            nspawn_args=[f"--bind-ro={debs}:{DEBS}", f"--bind-ro={kernel.boot}:{KERNEL_DIR}",
                         "--tmpfs=/boot:mode=0755"]) as ct:
        try:
            # A real host keeps the man pages that the test tree's mmdebstrap options drop.
            ct.run(["rm", "-f", "/etc/dpkg/dpkg.cfg.d/99mmdebstrap"])
            names = [f"{DEBS}/{deb.name}" for deb in [*deps, package]]
            proc = ct.run(["env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "-i", *names], timeout=600)
            yield ct, proc.stdout + proc.stderr
        finally:
            (work / "journal.txt").write_text(ct.run(
                ["journalctl", "-b", "--no-pager", "-o", "short-monotonic"], check=False).stdout)


def test_the_service_is_enabled_and_active_after_install(installed: tuple[Container, str]) -> None:
    ct, _ = installed
    assert ct.run(["systemctl", "is-enabled", UNIT], check=False).stdout.strip() == "enabled"
    assert ct.run(["systemctl", "is-active", UNIT], check=False).stdout.strip() == "active"
    # The unit found the package's program by systemd's search path.
    assert ct.prop(UNIT, "ExecMainPID") != "0"
    pid = ct.prop(UNIT, "ExecMainPID")
    assert "/usr/bin/bootwatch" in ct.run(["cat", f"/proc/{pid}/cmdline"]).stdout.replace("\0", " ")
    # systemd's trigger on /usr/lib/systemd/catalog updated the journal's catalog.
    catalog = ct.run(["journalctl", "--list-catalog"]).stdout
    assert "bootwatch" in catalog.lower()
    # Debian's own python3 packages, not copies.
    versions = ct.run(["dpkg-query", "-W", "python3-watchdog", "python3-apscheduler", "python3-sdnotify"]).stdout
    assert len(versions.splitlines()) == 3, versions


def test_a_real_kernel_with_an_entry_is_cached(installed: tuple[Container, str]) -> None:
    ct, _ = installed
    release = next(name for name in ct.run(["ls", KERNEL_DIR]).stdout.split()
                   if name.startswith("vmlinuz-")).removeprefix("vmlinuz-")
    ct.sh(f"install -m 0644 {KERNEL_DIR}/vmlinuz-{release} /boot/vmlinuz-{release}\n"
          "mkdir -p /boot/loader/entries\n"
          f"printf 'title Debian {release}\\nversion {release}\\nlinux /vmlinuz-{release}\\n' "
          f"> /boot/loader/entries/debian-{release}.conf")

    def cached() -> str | None:
        out = ct.run(["bootwatch", "list", "--json"], check=False).stdout
        return out if f"/vmlinuz-{release}" in out else None
    wait_until(f"/vmlinuz-{release} in the cache", cached, timeout=60)
    index = ct.run(["cat", "/var/lib/bootwatch/cache/cacheindex.json"]).stdout
    assert f"/vmlinuz-{release}" in index


def test_man_pages_render_and_bash_completes(installed: tuple[Container, str]) -> None:
    ct, _ = installed
    for page, heading in (("bootwatch", "BOOTWATCH"), ("bootwatch.toml", "BOOTWATCH.TOML")):
        proc = ct.run(["env", "MANWIDTH=80", "man", "--warnings", page])
        assert heading in proc.stdout and "NAME" in proc.stdout, proc.stdout[:400]
        assert proc.stderr == "", proc.stderr
    assert ct.run(["test", "-f", "/usr/share/bash-completion/completions/bootwatch"], check=False).returncode == 0


def test_a_removed_package_leaves_kernel_hooks_that_say_nothing(installed: tuple[Container, str]) -> None:
    """apt-get remove keeps the conffiles, the kernel hooks among them: a kernel package operation
    then runs them without bootwatch, which was removed on purpose."""
    ct, _ = installed
    ct.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "remove", "-y", "bootwatch"], timeout=300)
    for hooks in ("postinst.d", "postrm.d"):
        proc = ct.run(["env", "DEB_MAINT_PARAMS=configure" if hooks == "postinst.d" else "DEB_MAINT_PARAMS=remove",
                       f"/etc/kernel/{hooks}/zzz-bootwatch", "6.1.0-0-amd64", "/boot/vmlinuz-6.1.0-0-amd64"])
        assert proc.stdout + proc.stderr == ""


def test_purge_removes_everything_but_the_cache(installed: tuple[Container, str]) -> None:
    ct, _ = installed
    proc = ct.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "purge", "-y", "bootwatch"], timeout=300)
    said = proc.stdout + proc.stderr
    assert "rm -rf /var/lib/bootwatch" in said, said
    gone = ["/usr/bin/bootwatch", "/lib/systemd/system/bootwatch.service", "/usr/lib/systemd/system/bootwatch.service",
            "/etc/systemd/system/multi-user.target.wants/bootwatch.service", "/etc/bootwatch",
            "/etc/kernel/postinst.d/zzz-bootwatch", "/etc/kernel/postrm.d/zzz-bootwatch",
            "/usr/lib/kernel/install.d/95-bootwatch.install", "/usr/lib/systemd/catalog/bootwatch.catalog",
            "/usr/lib/python3/dist-packages/bootwatch", "/run/bootwatch"]
    left = ct.run(["/bin/sh", "-c", 'for f in "$@"; do [ ! -e "$f" ] || echo "$f"; done', "sh", *gone]).stdout
    assert left == "", left
    assert ct.run(["systemctl", "is-active", UNIT], check=False).stdout.strip() in ("inactive", "unknown")
    assert ct.run(["pgrep", "-f", "[b]ootwatch"], check=False).stdout == ""
    assert ct.run(["test", "-f", "/var/lib/bootwatch/cache/cacheindex.json"], check=False).returncode == 0
    assert "bootwatch" not in ct.run(["journalctl", "--list-catalog"]).stdout.lower()
