"""The scan proof covers every entry source: a changed grub.cfg, grubenv or ESP entry is seen.

As in test_scanproof.py: real trees cached by a real ``scan``, left older than the racy margin,
proved by a ``scan --quiet``; then one entry source changes for real, and the next
``scan --quiet`` must run the full program (it imports the full command line) and do what a
scan does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BootTree

from bootwatch import scanproof

pytestmark = pytest.mark.slow

FULL_CLI = "bootwatch.cli.main"
ENTRY = "menuentry 'Debian {v}' {{\n\tlinux /vmlinuz-{v} root=/dev/vda1\n\tinitrd {initrd}\n}}\n"


def scan(tree: BootTree) -> tuple[int, str, str, bool]:
    """``scan --quiet`` under ``-X importtime``: (rc, stdout, stderr, whether the full program ran)."""
    argv = [sys.executable, "-X", "importtime", "-m", "bootwatch", "--boot-dir", str(tree.boot), "--cache-dir",
            str(tree.cache), "scan", "--quiet"]
    proc = subprocess.run(argv, env=tree.env(), cwd=tree.root, capture_output=True, text=True, timeout=120)
    full = any(line.rstrip().endswith(FULL_CLI) for line in proc.stderr.splitlines() if line.startswith("import time:"))
    err = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("import time:"))
    return proc.returncode, proc.stdout, err, full


def grub_tree(root: Path, name: str) -> BootTree:
    (root / name).mkdir()
    config = root / name / "bootwatch.toml"
    esp = root / name / "efi"
    config.write_text(f'[entries]\nesp = "{esp}"\n')
    tree = BootTree(root / name, config)
    (tree.boot / "loader").rename(tree.root / "no-bls")  # a GRUB host
    (tree.boot / "grub").mkdir()
    for v in ("6.1.0", "6.2.0"):
        tree.write_kernel(v, size=8192)
    (tree.boot / "grub" / "grub.cfg").write_text(
        "".join(ENTRY.format(v=v, initrd=f"/initramfs-{v}.img") for v in ("6.1.0", "6.2.0")))
    (esp / "loader" / "entries").mkdir(parents=True)
    # The files the changed sources will name are there before the proof: only the source changes.
    for path in ("/initramfs-6.2.0-extra.img", "/tuned.img", "/vmlinuz-snapshot"):
        tree.write_file(path, 4096)
    (esp / "arch").mkdir()
    (esp / "arch" / "linux").write_bytes(b"\x7fELF" + b"k" * 4096)
    assert tree.cli("scan")[0] == 0
    return tree


CASES = ("grub_cfg", "grubenv", "included", "esp_entry")


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BootTree]]:
    root = tmp_path_factory.mktemp("scanproof-sources")
    made = {name: grub_tree(root, name) for name in CASES}
    time.sleep(scanproof.RACY_MARGIN_NS / 1e9 + 0.3)
    for name, tree in made.items():
        rc, out, err, full = scan(tree)
        assert (rc, out, err) == (0, "", ""), (name, err)
        assert (tree.cache / scanproof.PROOF_NAME).is_file(), name
        assert scan(tree)[3] is False, f"{name}: the proof does not hold"
    yield made


def listed(tree: BootTree) -> dict[str, dict[str, object]]:
    rc, out, err = tree.cli("list", "--json")
    assert rc == 0, err
    return {row["path"]: row for row in json.loads(out)}


def changed_then_scanned(tree: BootTree) -> None:
    rc, out, err, full = scan(tree)
    assert full, "the fast path stood for a changed entry source"
    assert rc == 0, err


def test_a_rewritten_grub_cfg_is_read(trees: dict[str, BootTree]) -> None:
    tree = trees["grub_cfg"]
    sha1 = tree.sha1_of(tree.path("/initramfs-6.2.0-extra.img"))
    cfg = tree.boot / "grub" / "grub.cfg"
    new = cfg.with_name("grub.cfg.new")  # update-grub writes a new file and renames it over
    new.write_text(ENTRY.format(v="6.2.0", initrd="/initramfs-6.2.0.img /initramfs-6.2.0-extra.img"))
    new.rename(cfg)
    changed_then_scanned(tree)
    assert listed(tree)["/initramfs-6.2.0-extra.img"]["image_id"] == sha1


def test_a_changed_grubenv_is_read(trees: dict[str, BootTree]) -> None:
    """grub.cfg loads grubenv; a variable there names an initrd (as tuned's $tuned_initrd does)."""
    tree = trees["grubenv"]
    sha1 = tree.sha1_of(tree.path("/tuned.img"))
    env = tree.boot / "grub" / "grubenv"
    block = "# GRUB Environment Block\ntuned_initrd=/tuned.img\n"
    env.write_text(block + "#" * (1024 - len(block)))
    changed_then_scanned(tree)
    # Only what grub.cfg names is read: it names no variable yet, so nothing new is cached; then it does.
    cfg = tree.boot / "grub" / "grub.cfg"
    cfg.write_text("load_env\n" + ENTRY.format(v="6.2.0", initrd="/initramfs-6.2.0.img $tuned_initrd"))
    changed_then_scanned(tree)
    assert listed(tree)["/tuned.img"]["image_id"] == sha1


def test_an_included_file_is_read(trees: dict[str, BootTree]) -> None:
    """grub-btrfs's grub-btrfs.cfg, included by a configfile line: a new snapshot entry in it."""
    tree = trees["included"]
    cfg = tree.boot / "grub" / "grub.cfg"
    cfg.write_text(cfg.read_text() + "configfile ${prefix}/grub-btrfs.cfg\n")
    changed_then_scanned(tree)
    sha1 = tree.sha1_of(tree.path("/vmlinuz-snapshot"))
    (tree.boot / "grub" / "grub-btrfs.cfg").write_text(
        "submenu 'snapshots' {\n" + ENTRY.format(v="snapshot", initrd="/initramfs-6.1.0.img") + "}\n")
    changed_then_scanned(tree)
    assert listed(tree)["/vmlinuz-snapshot"]["image_id"] == sha1


def test_a_new_entry_on_the_esp_is_read(trees: dict[str, BootTree]) -> None:
    tree = trees["esp_entry"]
    esp = tree.root / "efi"
    (esp / "loader" / "entries" / "arch.conf").write_text("title arch\nlinux /arch/linux\n")
    changed_then_scanned(tree)
    assert "/../efi/arch/linux" in listed(tree)
