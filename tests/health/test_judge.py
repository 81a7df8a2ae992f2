"""Entry health from real images: Debian's cloud kernels and the initramfs images Debian's own
mkinitramfs makes for them, each entry a real BLS type #1 file, and the broken variants made from
those images (a truncated initramfs, a corrupted kernel, an initramfs of the other kernel)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import BootTree
from realboot.grub_mkconfig import Kernel, Unavailable, extracted_kernel, kernel_debs
from realboot.initramfs_build import mkinitramfs_image

from bootwatch.entries.inventory import InventorySettings, read_inventory
from bootwatch.health.facts import FactsMemo
from bootwatch.health.judge import check_host
from bootwatch.health.model import Check, EntryHealth, EntryState

pytestmark = pytest.mark.slow  # the first run builds the initramfs images (cached afterwards)


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[Path, Path]]:
    """Kernel release -> (kernel image, its mkinitramfs image), for two releases."""
    try:
        debs = kernel_debs(2)
        found: dict[str, tuple[Path, Path]] = {}
        for deb in debs:
            kernel: Kernel = extracted_kernel(deb)
            found[kernel.version] = (kernel.boot / f"vmlinuz-{kernel.version}", mkinitramfs_image(deb))
    except Unavailable as e:
        pytest.skip(str(e))
    return found


def _entry(tree: BootTree, name: str, kernel: Path, initrd: Path | None, options: str = "ro quiet") -> None:
    lines = [f"title {name}", f"linux /{kernel.name}"]
    if initrd is not None:
        lines.append(f"initrd /{initrd.name}")
    lines.append(f"options {options}")
    tree.entries.mkdir(parents=True, exist_ok=True)
    (tree.entries / f"{name}.conf").write_text("\n".join(lines) + "\n")


def _health(tree: BootTree) -> dict[str, EntryHealth]:
    inventory = read_inventory(InventorySettings(boot=tree.boot))
    memo = FactsMemo(tree.root / "run")
    return {h.entry.id: h for h in check_host(tree.library(), inventory, memo).all()}


def _checks(health: EntryHealth, *checks: Check) -> list[str]:
    return [f.message for f in health.findings if f.check in checks]


def _place(tree: BootTree, source: Path, name: str) -> Path:
    tree.boot.mkdir(parents=True, exist_ok=True)
    target = tree.boot / name
    shutil.copyfile(source, target)
    return target


def test_a_sound_pair_has_no_file_format_or_version_finding(boot_tree: BootTree,
                                                            pairs: dict[str, tuple[Path, Path]]) -> None:
    release, (kernel, initrd) = sorted(pairs.items())[-1]
    _entry(boot_tree, "good", _place(boot_tree, kernel, f"vmlinuz-{release}"),
           _place(boot_tree, initrd, f"initrd.img-{release}"))
    good = _health(boot_tree)["good.conf"]
    assert _checks(good, Check.FILE, Check.FORMAT, Check.KERNEL_VERSION) == []
    assert good.state is not EntryState.BROKEN


def test_a_truncated_initramfs_is_broken(boot_tree: BootTree, pairs: dict[str, tuple[Path, Path]]) -> None:
    release, (kernel, initrd) = sorted(pairs.items())[-1]
    k = _place(boot_tree, kernel, f"vmlinuz-{release}")
    i = _place(boot_tree, initrd, f"initrd.img-{release}")
    os.truncate(i, i.stat().st_size // 2)  # what a full /boot leaves while the package manager exits 0
    _entry(boot_tree, "cut", k, i)
    cut = _health(boot_tree)["cut.conf"]
    assert cut.state is EntryState.BROKEN
    [message] = _checks(cut, Check.FORMAT)
    assert str(i) in message


def test_a_corrupted_kernel_is_broken(boot_tree: BootTree, pairs: dict[str, tuple[Path, Path]]) -> None:
    release, (kernel, initrd) = sorted(pairs.items())[-1]
    k = _place(boot_tree, kernel, f"vmlinuz-{release}")
    with open(k, "r+b") as f:  # 4 KiB in the middle of the compressed kernel inverted, the size kept
        middle = k.stat().st_size // 2
        data = f.read()[middle:middle + 4096]
        f.seek(middle)
        f.write(bytes(b ^ 0xFF for b in data))
    _entry(boot_tree, "bad", k, _place(boot_tree, initrd, f"initrd.img-{release}"))
    bad = _health(boot_tree)["bad.conf"]
    assert bad.state is EntryState.BROKEN
    [message] = _checks(bad, Check.FORMAT)
    assert str(k) in message and "corrupt kernel" in message


def test_a_truncated_kernel_is_broken(boot_tree: BootTree, pairs: dict[str, tuple[Path, Path]]) -> None:
    release, (kernel, initrd) = sorted(pairs.items())[-1]
    k = _place(boot_tree, kernel, f"vmlinuz-{release}")
    os.truncate(k, k.stat().st_size - 4096)
    _entry(boot_tree, "short", k, _place(boot_tree, initrd, f"initrd.img-{release}"))
    short = _health(boot_tree)["short.conf"]
    assert short.state is EntryState.BROKEN
    assert any("truncated bzImage" in m for m in _checks(short, Check.FORMAT))


def test_an_initramfs_of_the_other_kernel_is_broken(boot_tree: BootTree,
                                                    pairs: dict[str, tuple[Path, Path]]) -> None:
    (old, (_, old_initrd)), (new, (new_kernel, _)) = sorted(pairs.items())
    _entry(boot_tree, "mixed", _place(boot_tree, new_kernel, f"vmlinuz-{new}"),
           _place(boot_tree, old_initrd, f"initrd.img-{old}"))
    mixed = _health(boot_tree)["mixed.conf"]
    assert mixed.state is EntryState.BROKEN
    [message] = _checks(mixed, Check.KERNEL_VERSION)
    assert old in message and new in message


def test_a_missing_file_the_cache_holds_is_at_risk_and_one_it_does_not_is_broken(
        boot_tree: BootTree, pairs: dict[str, tuple[Path, Path]]) -> None:
    release, (kernel, initrd) = sorted(pairs.items())[-1]
    k = _place(boot_tree, kernel, f"vmlinuz-{release}")
    i = _place(boot_tree, initrd, f"initrd.img-{release}")
    _entry(boot_tree, "kept", k, i)
    boot_tree.library().add([f"/{i.name}"])
    i.unlink()
    kept = _health(boot_tree)["kept.conf"]
    [message] = _checks(kept, Check.FILE)
    assert kept.state is not EntryState.BOOTABLE
    assert [f.state for f in kept.findings if f.check is Check.FILE] == [EntryState.AT_RISK]
    assert f"bootwatch restore /{i.name}" in message

    shutil.rmtree(boot_tree.cache)
    gone = _health(boot_tree)["kept.conf"]
    assert gone.state is EntryState.BROKEN
    assert any("not in the cache" in m for m in _checks(gone, Check.FILE))


def test_an_entry_without_an_initramfs_is_judged_by_its_kernel(boot_tree: BootTree,
                                                               pairs: dict[str, tuple[Path, Path]]) -> None:
    release, (kernel, _) = sorted(pairs.items())[-1]
    _entry(boot_tree, "bare", _place(boot_tree, kernel, f"vmlinuz-{release}"), None)
    bare = _health(boot_tree)["bare.conf"]
    assert _checks(bare, Check.FILE, Check.FORMAT, Check.KERNEL_VERSION) == []
