"""The grub.cfg parser on what the real grub-mkconfig writes for real Debian kernel packages.

Both Debian layouts run once per module (tests/realboot/README.md says how): a separate /boot
filesystem with a device.map (so the search lines carry --hint), and /boot as a directory of
the root filesystem with a distributor name that holds both quote characters, which 10_linux
writes as ``'Bob'\\''s "Debian" GNU/Linux'``. A third run adds Debian's Xen hypervisor package
and a dom0-capable kernel, for 20_linux_xen's multiboot2/module2 entries.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from realboot.grub_mkconfig import (
    XEN_DOM0,
    GeneratedGrub,
    Layout,
    Unavailable,
    cached_kernels,
    cached_xen,
    missing_prerequisite,
    run_grub_mkconfig,
)

from bootwatch.entries.grub import read_grub_config
from bootwatch.entries.model import EntrySource, FileRole, PartitionKind, SourceResult

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(missing_prerequisite() is not None, reason=f"real grub-mkconfig: {missing_prerequisite()}"),
]

DISTRIBUTOR = "Bob's \"Debian\""


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Layout, GeneratedGrub]]:
    try:
        kernels = cached_kernels(2)
    except Unavailable as e:
        pytest.skip(f"real grub-mkconfig: {e}")
    base = tmp_path_factory.mktemp("grub-mkconfig")
    result = {
        Layout.SEPARATE_BOOT: run_grub_mkconfig(Layout.SEPARATE_BOOT, kernels, base / "separate", device_map=True),
        Layout.BOOT_ON_ROOT: run_grub_mkconfig(
            Layout.BOOT_ON_ROOT, kernels, base / "on-root",
            extra_default="GRUB_DISTRIBUTOR=\"Bob's \\\"Debian\\\"\"\n"),
    }
    for g in result.values():  # the images are large; the grub.cfg and listings are what the tests read
        for image in g.grub_cfg.parent.parent.glob("*.img"):
            image.unlink()
    yield result


def _read(g: GeneratedGrub) -> SourceResult:
    result = read_grub_config(g.grub_cfg)
    assert result.unknown is None
    assert result.source is EntrySource.GRUB
    return result


@pytest.mark.parametrize("layout", list(Layout))
def test_every_kernel_has_its_entries(generated: dict[Layout, GeneratedGrub], layout: Layout) -> None:
    g = generated[layout]
    entries = _read(g).entries
    versions = [k.version for k in g.kernels]
    # 10_linux: one simple entry for the newest kernel, then per kernel a normal and a recovery
    # entry in the "Advanced options" submenu.
    assert len(entries) == 1 + 2 * len(versions)
    assert [e.version for e in entries] == [versions[0]] + [v for v in versions for _ in (0, 1)]
    uuid = g.root_uuid
    assert entries[0].id == f"gnulinux-simple-{uuid}"
    for entry, version in zip(entries[1::2], versions):
        assert entry.id == f"gnulinux-advanced-{uuid}>gnulinux-{version}-advanced-{uuid}"
        assert entry.options == f"root=UUID={uuid} ro quiet"
    for entry, version in zip(entries[2::2], versions):
        assert entry.id == f"gnulinux-advanced-{uuid}>gnulinux-{version}-recovery-{uuid}"
        assert entry.title.endswith(f"with Linux {version} (recovery mode)")
        assert entry.options == f"root=UUID={uuid} ro single"


def test_separate_boot_paths_start_at_the_boot_partition(generated: dict[Layout, GeneratedGrub]) -> None:
    g = generated[Layout.SEPARATE_BOOT]
    assert g.boot_uuid != g.root_uuid
    for entry in _read(g).entries:
        v = entry.version
        assert [(f.path, f.role) for f in entry.files] == [
            (f"/vmlinuz-{v}", FileRole.KERNEL), ("/amd-ucode.img", FileRole.INITRD),
            (f"/initrd.img-{v}", FileRole.INITRD)]
        for f in entry.files:
            assert f.partition.fs_uuid == g.boot_uuid  # from search --fs-uuid ... --hint='hd1' UUID
            assert f.partition.kind is PartitionKind.BOOT
            assert f.boot_path() == f.path
            assert f.path in g.files[g.boot_uuid]  # a file on that very filesystem
        assert entry.title.startswith("Debian GNU/Linux")


def test_boot_on_root_paths_carry_the_boot_prefix(generated: dict[Layout, GeneratedGrub]) -> None:
    g = generated[Layout.BOOT_ON_ROOT]
    assert g.boot_uuid == g.root_uuid
    for entry in _read(g).entries:
        v = entry.version
        assert [f.path for f in entry.files] == [f"/boot/vmlinuz-{v}", "/boot/amd-ucode.img",
                                                 f"/boot/initrd.img-{v}"]
        assert [f.boot_path() for f in entry.files] == [f"/vmlinuz-{v}", "/amd-ucode.img", f"/initrd.img-{v}"]
        for f in entry.files:
            assert f.partition.fs_uuid == g.root_uuid
            assert f.partition.kind is PartitionKind.ROOT
            assert f.path in g.files[g.root_uuid]


def test_titles_with_both_quotes_as_10_linux_writes_them(generated: dict[Layout, GeneratedGrub]) -> None:
    g = generated[Layout.BOOT_ON_ROOT]
    assert "menuentry 'Bob'\\''s \"Debian\" GNU/Linux'" in g.grub_cfg.read_text()  # what the generator wrote
    entries = _read(g).entries
    assert entries[0].title == f"{DISTRIBUTOR} GNU/Linux"
    assert entries[1].title == f"{DISTRIBUTOR} GNU/Linux, with Linux {g.kernels[0].version}"


def test_the_parser_finds_the_kernels_grub_mkconfig_found(generated: dict[Layout, GeneratedGrub]) -> None:
    """grub-mkconfig's own output says which images it found: the parser finds the same."""
    g = generated[Layout.SEPARATE_BOOT]
    found = {line.split(": ", 1)[1] for line in g.output.splitlines() if line.startswith("Found linux image")}
    parsed = {"/boot" + f.path for e in _read(g).entries for f in e.files_with_role(FileRole.KERNEL)}
    assert parsed == found


@pytest.fixture(scope="module")
def xen(tmp_path_factory: pytest.TempPathFactory) -> GeneratedGrub:
    try:
        kernels, hypervisor = cached_kernels(1, XEN_DOM0), cached_xen()
    except Unavailable as e:
        pytest.skip(f"real grub-mkconfig with Xen: {e}")
    g = run_grub_mkconfig(Layout.SEPARATE_BOOT, kernels, tmp_path_factory.mktemp("grub-mkconfig-xen"),
                          xen=hypervisor)
    for image in g.grub_cfg.parent.parent.glob("*.img"):
        image.unlink()
    return g


def test_xen_entries_name_the_hypervisor_the_dom0_kernel_and_its_initrd(xen: GeneratedGrub) -> None:
    text = xen.grub_cfg.read_text()
    assert "multiboot2\t/xen-" in text and "module2\t--nounzip" in text  # what 20_linux_xen wrote
    entries = [e for e in _read(xen).entries if "xen" in e.id]
    v = xen.kernels[0].version
    # The simple entry, then for each hypervisor file the package installs (xen-*.gz and
    # xen-*.efi, both in /boot) a normal and a recovery entry.
    assert len(entries) == 5
    for entry in entries:
        assert entry.version == v
        hypervisor = entry.files[0].path
        assert hypervisor.startswith("/xen-") and hypervisor.endswith((".gz", ".efi"))
        assert [(f.path, f.role) for f in entry.files[1:]] == [
            (f"/vmlinuz-{v}", FileRole.KERNEL), ("/amd-ucode.img", FileRole.INITRD),
            (f"/initrd.img-{v}", FileRole.INITRD)]
        for f in entry.files:
            assert f.partition.fs_uuid == xen.boot_uuid and f.path in xen.files[xen.boot_uuid]
        assert entry.options.startswith(f"root=UUID={xen.root_uuid} ro ")  # dom0's, without "placeholder"
