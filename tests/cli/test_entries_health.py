"""``bootwatch entries`` shows each entry's health: its state and findings, in the table and in
``--json``, and ``--check`` exits 1 when an entry is BROKEN.

Real images: Debian's cloud kernel (tests/realboot caches the package) and the initramfs Debian's
own mkinitramfs builds for it; the broken variant is that initramfs truncated, as a full /boot
leaves it. The entries boot a real ext4 on a loop device that holds the kernel's modules
(tests/realboot/loop_root.py), so a good entry is BOOTABLE. Each run is a real ``python -m
bootwatch`` child.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realboot.grub_mkconfig import Kernel, Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image
from realboot.loop_root import loop_root

BootTree = Any  # conftest.BootTree

pytestmark = [pytest.mark.slow, pytest.mark.root]



@pytest.fixture(scope="module")
def real_pair() -> tuple[Kernel, Path]:
    """A real kernel and the real mkinitramfs image for it."""
    try:
        deb = kernel_debs(1)[0]
        return extracted_kernel(deb), mkinitramfs_image(deb)
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def root_device(real_pair: tuple[Kernel, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The device of a mounted root holding the kernel's modules: what the entries boot."""
    try:
        with loop_root(tmp_path_factory.mktemp("root"), (real_pair[0].version,)) as device:
            yield device
    except Unavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def add_entry(boot_tree: BootTree, real_pair: tuple[Kernel, Path], root_device: str) -> Any:
    def add(name: str, *, truncate_to: int | None = None) -> Path:
        return write_entry(boot_tree, name, *real_pair, f"root={root_device} ro quiet", truncate_to=truncate_to)
    return add


def write_entry(tree: BootTree, name: str, kernel: Kernel, initramfs: Path, options: str, *,
                truncate_to: int | None = None) -> Path:
    """A BLS entry ``name.conf`` with its own copy of the kernel and initramfs; the initramfs cut
    to ``truncate_to`` bytes if given. Returns the initramfs's path."""
    shutil.copyfile(kernel.boot / f"vmlinuz-{kernel.version}", tree.boot / f"vmlinuz-{name}")
    initrd = tree.boot / f"initrd-{name}.img"
    shutil.copyfile(initramfs, initrd)
    if truncate_to is not None:
        with open(initrd, "r+b") as f:
            f.truncate(truncate_to)
    tree.write_entry(name, [("options", options)], title=f"Debian {name}", linux=f"/vmlinuz-{name}",
                     initrd=[f"/initrd-{name}.img"])
    return initrd


def entry_block(out: str, header: str) -> list[str]:
    """The lines of one entry in the human output: its header to the blank line after it."""
    lines = out.splitlines()
    start = lines.index(header)
    end = lines.index("", start)
    return lines[start:end]


def test_json_gives_each_entry_its_state_and_findings_and_counts_the_states(
        boot_tree: BootTree, real_pair: tuple[Kernel, Path], add_entry: Any) -> None:
    tree = boot_tree
    add_entry("good")
    truncated = add_entry("cut", truncate_to=real_pair[1].stat().st_size // 2)
    rc, out, err = tree.cli("entries", "--json")
    assert rc == 0, out + err  # a listing: a BROKEN entry is the answer, not a failure
    assert err == ""
    data = json.loads(out)
    entries = {e["id"]: e for e in data["entries"]}
    good, cut = entries["good.conf"], entries["cut.conf"]
    # The good pair: its files are there and pass their format check, the initramfs and the root
    # hold the kernel's modules.
    assert good["state"] == "BOOTABLE" and good["findings"] == []
    assert cut["state"] == "BROKEN"
    [finding] = cut["findings"]
    assert set(finding) == {"state", "check", "message", "path"}
    assert finding["state"] == "BROKEN" and finding["check"] == "format"
    assert finding["path"] == str(truncated)
    assert finding["message"].startswith(f"{truncated}: ")
    assert data["states"] == {"BOOTABLE": 1, "AT_RISK": 0, "UNKNOWN": 0, "BROKEN": 1}


def test_human_output_has_a_state_line_per_entry_findings_below_and_the_counts(
        boot_tree: BootTree, add_entry: Any) -> None:
    tree = boot_tree
    add_entry("good")
    truncated = add_entry("cut", truncate_to=4096)
    rc, out, err = tree.cli("entries")
    assert rc == 0 and err == "", out + err
    cut = entry_block(out, "  [bls] Debian cut")
    state_line = cut.index("    state: BROKEN")
    assert cut[state_line + 1].startswith(f"      - BROKEN format: {truncated}: "), cut
    assert len(cut) == state_line + 2  # one finding: the truncated initramfs
    good = entry_block(out, "  [bls] Debian good")
    assert good[-1] == "    state: BOOTABLE"  # no finding below it
    assert "2 boot entries (bls 2): 1 bootable, 1 BROKEN" in out.splitlines()


def test_check_exits_1_when_an_entry_is_broken_naming_it(boot_tree: BootTree, real_pair: tuple[Kernel, Path],
                                                        add_entry: Any) -> None:
    tree = boot_tree
    add_entry("good")
    rc, out, err = tree.cli("entries", "--check")
    assert rc == 0 and err == "", out + err
    truncated = add_entry("cut", truncate_to=real_pair[1].stat().st_size - 1)
    rc, out, err = tree.cli("entries", "--check", "--json")
    assert rc == 1, out + err
    [line] = err.splitlines()
    assert line.startswith(f"bootwatch: bls:cut.conf is BROKEN: {truncated}: "), err
    assert json.loads(out)["states"]["BROKEN"] == 1  # the listing all the same
    rc, _, err = tree.cli("entries")
    assert rc == 0 and err == ""  # without --check a BROKEN entry is listed, not an error


def test_an_entry_that_states_no_version_shows_the_release_its_kernel_image_states(
        boot_tree: BootTree, real_pair: tuple[Kernel, Path], root_device: str) -> None:
    tree = boot_tree
    kernel, initramfs = real_pair
    shutil.copyfile(kernel.boot / f"vmlinuz-{kernel.version}", tree.boot / "vmlinuz")  # no version in its name
    shutil.copyfile(initramfs, tree.boot / "initrd.img")
    tree.write_entry("plain", [("options", f"root={root_device} ro")], title="Plain", linux="/vmlinuz",
                     initrd=["/initrd.img"])
    rc, out, err = tree.cli("entries")
    assert rc == 0, out + err
    assert entry_block(out, "  [bls] Plain")[1].startswith(
        f"    id plain.conf; version {kernel.version} (from the image); "), out
    rc, out, err = tree.cli("entries", "--json")
    [entry] = json.loads(out)["entries"]
    assert entry["version"] is None and entry["release"] == kernel.version, entry
