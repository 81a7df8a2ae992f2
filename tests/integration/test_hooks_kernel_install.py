"""contrib/kernel-install/95-bootwatch.install under the real ``kernel-install`` (Debian 12's
systemd), with no bootwatch daemon running: in unshare + chroot on loop filesystems with real
Debian kernel packages (tests/realboot/kernel_install.py), the plugin in the chroot's
/etc/kernel/install.d and bootwatch at /usr/local/bin with its embedded defaults. The steps are
tests/integration/hooks-kernel-install-steps.sh; what bootwatch lists after each is checked here.

- ``add``: the plugin runs after 90-loaderentry, so the entry exists when it scans and the new
  kernel is cached.
- ``remove``, the package having deleted the kernel it installed in /boot while a snapshot's entry
  still names it: the plugin restores nothing. The files kernel-install removed with the entry
  are not restored either; no entry references them (count 0) and ``clean`` forgets them. Only a
  later scan (the daemon's decision, after the transaction) restores what the snapshot needs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT
from realboot.grub_mkconfig import Unavailable, cached_kernels
from realboot.kernel_install import BlsLayout, missing_prerequisite, run_kernel_install

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(missing_prerequisite() is not None, reason=f"real kernel-install: {missing_prerequisite()}"),
]

PLUGIN = REPO_ROOT / "contrib" / "kernel-install" / "95-bootwatch.install"
STEPS = Path(__file__).with_name("hooks-kernel-install-steps.sh")
LAYOUTS = [
    pytest.param(BlsLayout.SEPARATE_BOOT, id="separate-boot"),
    pytest.param(BlsLayout.BOOT_ON_ROOT, id="boot-on-root"),
]


def host_dirs() -> list[str]:
    """What bootwatch needs from the host besides /usr (bound by the chroot script): the
    interpreter's installation, the virtual environment, this checkout; none inside another."""
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)} | {str(REPO_ROOT)}
    dirs = {d for d in dirs if d != "/" and not (d + "/").startswith("/usr/")}
    return sorted(d for d in dirs if not any(d != o and d.startswith(o + "/") for o in dirs))


@dataclass(frozen=True)
class Steps:
    out: Path
    machine_id: str
    old: str
    new: str
    prefix: str
    """What the entries' paths start with: "/boot" when /boot is a directory of the root filesystem."""

    def listed(self, step: str) -> dict[str, dict[str, Any]]:
        return {row["path"]: row for row in json.loads((self.out / f"{step}.json").read_text())}

    def entries(self, step: str) -> list[str]:
        return (self.out / f"{step}.entries").read_text().split()

    def named(self, step: str, entry: str) -> list[str]:
        """The linux and initrd paths of an entry, as keys of the cache (relative to /boot)."""
        paths = []
        for line in (self.out / f"{step}.entries.d" / entry).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("linux", "initrd"):
                path = value.strip()
                assert path.startswith(self.prefix + "/"), line
                paths.append(path[len(self.prefix):])
        assert len(paths) == 2, paths
        return paths


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[BlsLayout, Steps | Exception]]:
    try:
        kernels = cached_kernels(2)
    except Unavailable as e:
        pytest.skip(f"real kernel-install: {e}")
    base = tmp_path_factory.mktemp("kernel-install-hooks")
    results: dict[BlsLayout, Steps | Exception] = {}
    for layout in (BlsLayout.SEPARATE_BOOT, BlsLayout.BOOT_ON_ROOT):
        prefix = "/boot" if layout is BlsLayout.BOOT_ON_ROOT else ""
        environment = {"PLUGIN": str(PLUGIN), "PYTHON": sys.executable, "REPO_ROOT": str(REPO_ROOT),
                       "HOST_DIRS": " ".join(host_dirs()), "SNAPSHOT_PATHS": prefix}
        try:
            installed = run_kernel_install(layout, kernels, base / layout.value, steps=STEPS,
                                           environment=environment)
        except RuntimeError as e:  # the test of the layout fails with it
            results[layout] = e
            continue
        results[layout] = Steps(base / layout.value / "out", installed.machine_id, kernels[0].version,
                                kernels[1].version, prefix)
    yield results


def steps_of(ran: dict[BlsLayout, Steps | Exception], layout: BlsLayout) -> Steps:
    got = ran[layout]
    if isinstance(got, Exception):
        raise got
    return got


@pytest.mark.parametrize("layout", LAYOUTS)
def test_add_caches_the_kernel_its_entry_names(ran: dict[BlsLayout, Steps | Exception], layout: BlsLayout) -> None:
    steps = steps_of(ran, layout)
    log = (steps.out / "kernel-install.log").read_text()
    plugins = []  # kernel-install --verbose lists them in the order it runs them
    for line in log.split("Plugin files:\n", 1)[1].splitlines():
        if not (line.startswith("/") and line.endswith(".install")):
            break
        plugins.append(line.rsplit("/", 1)[-1])
    assert plugins.index("95-bootwatch.install") > plugins.index("90-loaderentry.install"), plugins
    said = [line for line in log.splitlines() if line.startswith("95-bootwatch.install: ")]
    assert said and all(": running /usr/local/bin/bootwatch scan --quiet" in line for line in said), said
    listed = steps.listed("add")
    for version in (steps.old, steps.new):
        entry = f"{steps.machine_id}-{version}.conf"
        assert entry in steps.entries("add")
        for path in steps.named("add", entry):
            assert (listed[path]["state"], listed[path]["count"]) == ("CACHED", 1), (path, listed.get(path))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_remove_restores_nothing_and_the_cache_forgets(ran: dict[BlsLayout, Steps | Exception],
                                                       layout: BlsLayout) -> None:
    steps = steps_of(ran, layout)
    old_entry = f"{steps.machine_id}-{steps.old}.conf"
    removed = steps.named("add", old_entry)  # kernel-install's copies, removed with the entry
    package = [f"/vmlinuz-{steps.old}", f"/initrd.img-{steps.old}"]  # the package's, the snapshot names them
    kept = steps.named("add", f"{steps.machine_id}-{steps.new}.conf")

    snapshot = steps.listed("snapshot")
    assert {p: (snapshot[p]["state"], snapshot[p]["count"]) for p in package} == dict.fromkeys(package, ("CACHED", 1))

    assert old_entry not in steps.entries("remove") and "snapshot.conf" in steps.entries("remove")
    after = steps.listed("remove")
    assert {p: (after[p]["state"], after[p]["count"]) for p in removed} == dict.fromkeys(removed, ("MISSING", 0))
    # Still named by the snapshot, but the plugin restores nothing on remove.
    assert {p: (after[p]["state"], after[p]["count"]) for p in package} == dict.fromkeys(package, ("MISSING", 1))
    assert {p: after[p]["state"] for p in kept} == dict.fromkeys(kept, "CACHED")

    # The decision after the transaction: what the snapshot needs comes back, with boom's marker;
    # what went with its entry does not.
    later = steps.listed("later-scan")
    assert {p: later[p]["state"] for p in package} == dict.fromkeys(package, "RESTORED")
    assert {p: later[p]["state"] for p in removed} == dict.fromkeys(removed, "MISSING")

    cleaned = steps.listed("clean")
    assert not set(removed) & cleaned.keys(), cleaned.keys()
    assert set(package) | set(kept) <= cleaned.keys()
