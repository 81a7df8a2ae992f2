"""The RPM package: built by ``contrib/package rpm`` (Debian's rpmbuild, contrib/rpm/bootwatch.spec)
and compared with the Debian package built by ``contrib/package deb`` from the same tree.

Both file lists come from ``contrib/package files``, which normalises only what each packaging
system decides on its own (the Python directory, /lib as /usr/lib, compressed man pages, its own
metadata and documentation): the lists must be equal, line for line, mode for mode. The spec's
conffiles, dependencies and scriptlets are read back from the built .rpm.

BOOTWATCH_TEST_DEB=FILE compares with that .deb instead of building one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DEB_TOOLS = ("dpkg-buildpackage", "dh", "dh_python3")
HINT = ("apt-get install -y --no-install-recommends rpm python3-pip dpkg-dev debhelper dh-python "
        "pybuild-plugin-pyproject python3-all python3-setuptools")


def _required(reason: str) -> None:
    if os.environ.get("BOOTWATCH_REQUIRE_NSPAWN") == "1":
        pytest.fail(f"package tests required (BOOTWATCH_REQUIRE_NSPAWN=1), but {reason}")
    pytest.skip(reason)


def _build(kind: str, work: Path) -> Path:
    proc = subprocess.run([str(REPO / "contrib/package"), kind, "--dist", str(work / "dist"),
                           "--build-dir", str(work / "build")], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def rpm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("rpmbuild", path=SYSTEM_PATH) is None:
        _required(f"rpmbuild not installed ({HINT})")
    built = _build("rpm", tmp_path_factory.mktemp("rpm"))
    assert re.fullmatch(r"bootwatch-[0-9][^-]*-1\.noarch\.rpm", built.name), built
    return built


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("BOOTWATCH_TEST_DEB")
    if given:
        return Path(given)
    missing = [tool for tool in DEB_TOOLS if shutil.which(tool, path=SYSTEM_PATH) is None]
    if missing:
        _required(f"{', '.join(missing)} not installed ({HINT})")
    return _build("deb", tmp_path_factory.mktemp("deb"))


def files(package: Path) -> list[str]:
    proc = subprocess.run([str(REPO / "contrib/package"), "files", str(package)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def query(rpm: Path, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, str(rpm)], capture_output=True, text=True, check=True).stdout


def test_the_rpm_installs_exactly_the_files_of_the_deb(rpm: Path, deb: Path) -> None:
    from_rpm, from_deb = files(rpm), files(deb)
    assert any(line.endswith(" /usr/bin/bootwatch") for line in from_rpm), from_rpm
    assert any(line.endswith(" {python}/bootwatch/__init__.py") for line in from_rpm), from_rpm
    assert from_rpm == from_deb


def test_the_configuration_and_the_kernel_hooks_are_kept_conffiles(rpm: Path) -> None:
    # %config(noreplace): flags "cn" (config, noreplace), as dpkg keeps a changed conffile.
    flags = dict(line.rsplit(" ", 1) for line in
                 query(rpm, "--qf", r"[%{FILENAMES} %{FILEFLAGS:fflags}\n]").splitlines())
    conffiles = {path for path, flag in flags.items() if "c" in flag}
    assert conffiles == {"/etc/bootwatch/bootwatch.toml", "/etc/kernel/postinst.d/zzz-bootwatch",
                         "/etc/kernel/postrm.d/zzz-bootwatch"}
    assert all("n" in flags[path] for path in conffiles), flags
    assert flags["/usr/lib/systemd/system/bootwatch.service"] == ""


def test_the_rpm_requires_fedoras_packages_of_the_three_dependencies(rpm: Path) -> None:
    requires = query(rpm, "--requires").splitlines()
    for name in ("python3-watchdog", "python3-APScheduler", "python3-sdnotify"):
        assert any(line.split()[0] == name for line in requires), requires
    assert "python3-APScheduler < 4" in requires


def test_the_scriptlets_manage_the_unit_and_the_catalog(rpm: Path) -> None:
    scripts = query(rpm, "--qf", "%{POSTIN}\n--\n%{PREUN}\n--\n%{POSTUN}\n").split("\n--\n")
    post, preun, postun = scripts
    assert "install-system-units bootwatch.service" in post and "journalctl --update-catalog" in post
    assert "remove-system-units bootwatch.service" in preun
    assert "mark-restart-system-units bootwatch.service" in postun and "journalctl --update-catalog" in postun
    for script in scripts:
        proc = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (script, proc.stderr)
