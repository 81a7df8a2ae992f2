"""The type #1 and type #2 readers agree with the real ``bootctl list`` (systemd-boot 252).

On an ESP holding a real UKI (tests/realboot/uki_build.py, boot-counted name) and on what the real
kernel-install wrote to an XBOOTLDR-like $BOOT with boot counting: same ids (counter removed,
suffix kept), titles, options and file paths. The one deliberate difference is a UKI's version:
bootctl shows ``.osrel``'s ``VERSION``, bootwatch the kernel's (``.uname``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from realboot.bootctl import bootctl_list, cached_bootctl
from realboot.grub_mkconfig import Unavailable, cached_kernels
from realboot.kernel_install import BlsLayout, missing_prerequisite, run_kernel_install
from realboot.uki_build import build_uki, initramfs_for, missing_tool

from bootwatch.entries.bls_type1 import read_type1_entries
from bootwatch.entries.model import Entry, FileRole, Partition, PartitionKind
from bootwatch.entries.uki import UKI_DIR, read_uki_source

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(missing_prerequisite() is not None, reason=f"real kernel-install: {missing_prerequisite()}"),
    pytest.mark.skipif(missing_tool() is not None, reason=f"real UKI: {missing_tool()}"),
]


KEYS = ("id", "title", "options", "linux", "initrd")


def _as_bootctl(entry: Entry) -> dict[str, object]:
    """The fields ``bootctl list --json`` shows for ``entry`` (a UKI's ``linux`` without the leading /)."""
    first = entry.files[0]
    shown: dict[str, object] = {"id": entry.id, "title": entry.title,
                                "linux": first.path.lstrip("/") if first.role is FileRole.UKI else first.path}
    if entry.options:
        shown["options"] = entry.options
    initrds = [f.path for f in entry.files_with_role(FileRole.INITRD)]
    if initrds:
        shown["initrd"] = initrds
    return shown


def test_bootctl_lists_what_the_readers_yield(tmp_path: Path) -> None:
    try:
        bootctl = cached_bootctl()
        kernels = cached_kernels(2)
    except Unavailable as e:
        pytest.skip(str(e))
    installed = run_kernel_install(BlsLayout.SEPARATE_BOOT, kernels, tmp_path / "ki", tries=3)
    boot = tmp_path / "xbootldr"
    shutil.copytree(installed.trees["boot"], boot, symlinks=True)
    esp = tmp_path / "esp"
    (esp / UKI_DIR).mkdir(parents=True)
    kernel = kernels[0]
    build_uki(esp / UKI_DIR / f"debian-{kernel.version}+3-1.efi", kernel=kernel.boot / f"vmlinuz-{kernel.version}",
              initrd=initramfs_for(kernel, tmp_path), osrel=Path("/usr/lib/os-release").read_bytes(),
              cmdline=b"root=UUID=0b3c2f6e-1d2a-4c5b-9e8f-7a6b5c4d3e2f ro quiet\n", uname=kernel.version.encode())

    listed = bootctl_list(bootctl, tmp_path, esp, boot)
    ours = [*read_type1_entries(boot / "loader" / "entries", Partition(PartitionKind.BOOT)).result.entries,
            *read_uki_source(esp, Partition(PartitionKind.ESP)).result.entries]
    theirs = sorted(({k: e[k] for k in KEYS if k in e} for e in listed), key=lambda e: str(e["id"]))
    mine = sorted((_as_bootctl(e) for e in ours), key=lambda e: str(e["id"]))
    assert mine == theirs
    assert len(theirs) == 3
    uki = next(e for e in listed if str(e["id"]).endswith(".efi"))
    assert uki["version"] != kernel.version  # bootctl: .osrel's VERSION; bootwatch: .uname
