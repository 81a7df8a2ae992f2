"""Symlinks among an entry's files (bootwatch/health/judge.py HostCheck.on_partition): on a /boot
of its own (a real tmpfs mounted as the tree's boot directory), a link is resolved within that
filesystem, as GRUB and systemd-boot resolve it: an absolute target from the partition's root,
``..`` stopping there; on a /boot of the root filesystem, as the host resolves it. The image's
facts are those of the file the link resolves to. Real images: Debian's cloud kernel and its
mkinitramfs image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realboot.grub_mkconfig import Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image

from bootwatch.health.facts import FactsMemo
from bootwatch.health.judge import check_host
from bootwatch.health.model import Check, EntryHealth, EntryState

pytestmark = [pytest.mark.slow, pytest.mark.root]

BootTree = Any  # conftest.BootTree


@pytest.fixture(scope="module")
def pair() -> tuple[str, Path, Path]:
    try:
        deb = kernel_debs(1)[0]
        kernel = extracted_kernel(deb)
        return kernel.version, kernel.boot / f"vmlinuz-{kernel.version}", mkinitramfs_image(deb)
    except Unavailable as e:
        pytest.skip(str(e))


@contextlib.contextmanager
def separate_boot(tree: BootTree) -> Iterator[Path]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0755", "tmpfs", str(tree.boot)], check=True)
    try:
        tree.entries.mkdir(parents=True)
        yield tree.boot
    finally:
        subprocess.run(["umount", "-l", str(tree.boot)], check=True)


def install(tree: BootTree, pair: tuple[str, Path, Path], link: str) -> None:
    """The pair as vmlinuz-R and initrd.img-R; the entry names the kernel by the symlink ``vmlinuz`` -> ``link``."""
    release, vmlinuz, initrd = pair
    shutil.copyfile(vmlinuz, tree.boot / f"vmlinuz-{release}")
    shutil.copyfile(initrd, tree.boot / f"initrd.img-{release}")
    (tree.boot / "vmlinuz").symlink_to(link)
    tree.write_entry("e", linux="/vmlinuz", initrd=[f"/initrd.img-{release}"], lines=[("options", "ro")])


def health(tree: BootTree) -> EntryHealth:
    cache = tree.library()
    [verdict] = check_host(cache, cache.read_inventory(), FactsMemo(tree.root / "run")).all()
    return verdict


def file_findings(verdict: EntryHealth) -> list[tuple[EntryState, str]]:
    return [(f.state, f.message) for f in verdict.findings if f.check in (Check.FILE, Check.FORMAT)]


def test_an_absolute_link_on_a_separate_boot_names_a_file_of_that_partition(boot_tree: BootTree,
                                                                            pair: tuple[str, Path, Path]) -> None:
    release = pair[0]
    with separate_boot(boot_tree):
        install(boot_tree, pair, f"/vmlinuz-{release}")  # the partition's root: what GRUB reads
        assert not (boot_tree.boot / "vmlinuz").exists()  # on the host, /vmlinuz-R is not there
        verdict = health(boot_tree)
    assert file_findings(verdict) == [], verdict.findings  # the image read is the partition's vmlinuz-R
    assert not any(f.check is Check.KERNEL_VERSION and f.state is not EntryState.UNKNOWN for f in verdict.findings)


def test_a_link_that_resolves_only_on_the_host_is_broken_on_a_separate_boot(boot_tree: BootTree,
                                                                            pair: tuple[str, Path, Path]) -> None:
    release = pair[0]
    with separate_boot(boot_tree):
        install(boot_tree, pair, str(boot_tree.boot / f"vmlinuz-{release}"))  # the host's path
        verdict = health(boot_tree)
    [(state, message)] = file_findings(verdict)
    assert state is EntryState.BROKEN and verdict.state is EntryState.BROKEN
    assert message.startswith(f"{boot_tree.boot / 'vmlinuz'}: a symlink that does not resolve on its partition"), \
        message


def test_dot_dot_stops_at_the_partitions_root(boot_tree: BootTree, pair: tuple[str, Path, Path]) -> None:
    release = pair[0]
    with separate_boot(boot_tree):
        install(boot_tree, pair, f"../../../vmlinuz-{release}")  # nowhere on the host, vmlinuz-R on the partition
        assert not (boot_tree.boot / "vmlinuz").exists()
        verdict = health(boot_tree)
    assert file_findings(verdict) == [], verdict.findings


def test_on_a_boot_of_the_root_filesystem_the_host_resolves_the_link(boot_tree: BootTree,
                                                                     pair: tuple[str, Path, Path]) -> None:
    release = pair[0]
    install(boot_tree, pair, str(boot_tree.boot / f"vmlinuz-{release}"))
    assert not os.path.ismount(boot_tree.boot)
    assert file_findings(health(boot_tree)) == []
