"""``bootwatch entries`` shows each entry's health: its state and findings, in the table and in
``--json``, and ``--check`` exits 1 when an entry is BROKEN.

Real images: Debian's cloud kernel (tests/realboot caches the package) and the initramfs Debian's
own mkinitramfs builds for it; the broken variant is that initramfs truncated, as a full /boot
leaves it. Each run is a real ``python -m bootwatch`` child. The root check is not this test's
concern (it may say UNKNOWN for a test's ``root=``): the assertions are on the findings of the
files and their format, and on how states and findings are shown.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from realboot.grub_mkconfig import Kernel, Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image

BootTree = Any  # conftest.BootTree

pytestmark = [pytest.mark.slow, pytest.mark.root]

OPTIONS = "root=UUID=0b5c1d1e-7f1c-4c55-9d2f-1f0c9a7d3e11 ro quiet"
STATES = ("BOOTABLE", "AT_RISK", "UNKNOWN", "BROKEN")


@pytest.fixture(scope="module")
def real_pair() -> tuple[Kernel, Path]:
    """A real kernel and the real mkinitramfs image for it."""
    try:
        deb = kernel_debs(1)[0]
        return extracted_kernel(deb), mkinitramfs_image(deb)
    except Unavailable as e:
        pytest.skip(str(e))


def add_entry(tree: BootTree, name: str, kernel: Kernel, initramfs: Path, *, truncate_to: int | None = None) -> Path:
    """A BLS entry ``name.conf`` with its own copy of the kernel and initramfs; the initramfs cut
    to ``truncate_to`` bytes if given. Returns the initramfs's path."""
    shutil.copyfile(kernel.boot / f"vmlinuz-{kernel.version}", tree.boot / f"vmlinuz-{name}")
    initrd = tree.boot / f"initrd-{name}.img"
    shutil.copyfile(initramfs, initrd)
    if truncate_to is not None:
        with open(initrd, "r+b") as f:
            f.truncate(truncate_to)
    tree.write_entry(name, [("options", OPTIONS)], title=f"Debian {name}", linux=f"/vmlinuz-{name}",
                     initrd=[f"/initrd-{name}.img"])
    return initrd


def entry_block(out: str, header: str) -> list[str]:
    """The lines of one entry in the human output: its header to the blank line after it."""
    lines = out.splitlines()
    start = lines.index(header)
    end = lines.index("", start)
    return lines[start:end]


def not_root_findings(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in entry["findings"] if f["check"] != "root-modules"]


def test_json_gives_each_entry_its_state_and_findings_and_counts_the_states(
        boot_tree: BootTree, real_pair: tuple[Kernel, Path]) -> None:
    tree = boot_tree
    kernel, initramfs = real_pair
    add_entry(tree, "good", kernel, initramfs)
    truncated = add_entry(tree, "cut", kernel, initramfs, truncate_to=initramfs.stat().st_size // 2)
    rc, out, err = tree.cli("entries", "--json")
    assert rc == 0, out + err  # a listing: a BROKEN entry is the answer, not a failure
    assert err == ""
    data = json.loads(out)
    entries = {e["id"]: e for e in data["entries"]}
    good, cut = entries["good.conf"], entries["cut.conf"]
    # The good pair: its files are there and pass their format check, the initramfs holds the
    # kernel's modules. Whatever the root check says, nothing else is wrong with it.
    assert not_root_findings(good) == [], good["findings"]
    assert good["state"] != "BROKEN"
    assert cut["state"] == "BROKEN"
    [format_finding] = not_root_findings(cut)
    assert format_finding["state"] == "BROKEN" and format_finding["check"] == "format"
    assert format_finding["path"] == str(truncated)
    assert format_finding["message"].startswith(f"{truncated}: ")
    assert cut["findings"][0] == format_finding  # worst first
    for entry in data["entries"]:
        for finding in entry["findings"]:
            assert set(finding) == {"state", "check", "message", "path"}
            assert finding["state"] in STATES
    assert set(data["states"]) == set(STATES)
    assert sum(data["states"].values()) == 2 and data["states"]["BROKEN"] == 1
    assert data["states"][good["state"]] == 1


def test_human_output_has_a_state_line_per_entry_findings_below_and_the_counts(
        boot_tree: BootTree, real_pair: tuple[Kernel, Path]) -> None:
    tree = boot_tree
    kernel, initramfs = real_pair
    add_entry(tree, "good", kernel, initramfs)
    truncated = add_entry(tree, "cut", kernel, initramfs, truncate_to=4096)
    rc, out, err = tree.cli("entries")
    assert rc == 0 and err == "", out + err
    cut = entry_block(out, "  [bls] Debian cut")
    state_line = cut.index("    state: BROKEN")
    assert cut[state_line + 1].startswith(f"      - BROKEN format: {truncated}: "), cut
    good = entry_block(out, "  [bls] Debian good")
    [good_state] = [line for line in good if line.startswith("    state: ")]
    assert "BROKEN" not in good_state
    assert not [line for line in good if line.startswith("      - ") and "root-modules" not in line], good
    [summary] = [line for line in out.splitlines() if line.startswith("2 boot entries (bls 2): ")]
    assert summary.endswith(", 1 BROKEN"), summary


def test_check_exits_1_when_an_entry_is_broken_naming_it(boot_tree: BootTree,
                                                        real_pair: tuple[Kernel, Path]) -> None:
    tree = boot_tree
    kernel, initramfs = real_pair
    add_entry(tree, "good", kernel, initramfs)
    rc, out, err = tree.cli("entries", "--check")
    assert rc == 0 and err == "", out + err
    truncated = add_entry(tree, "cut", kernel, initramfs, truncate_to=initramfs.stat().st_size - 1)
    rc, out, err = tree.cli("entries", "--check", "--json")
    assert rc == 1, out + err
    [line] = err.splitlines()
    assert line.startswith(f"bootwatch: bls:cut.conf is BROKEN: {truncated}: "), err
    assert json.loads(out)["states"]["BROKEN"] == 1  # the listing all the same
    rc, _, err = tree.cli("entries")
    assert rc == 0 and err == ""  # without --check a BROKEN entry is listed, not an error
