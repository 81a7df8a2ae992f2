"""The grub.cfg parser: GRUB's quoting, menus, partitions, variables, includes, and what is unknown.

Inputs are short GRUB scripts in the forms grub-mkconfig, Ubuntu's 10_linux and grub-btrfs write
(tests/entries/test_grub_mkconfig.py runs the real generator), and the checked-in samples of
tests/realboot/samples (their provenance is in tests/realboot/README.md).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bootwatch.entries.grub import MAX_CONFIG_SIZE, MAX_INCLUDE_DEPTH, expand_words, parse_grub_config, read_grub_config
from bootwatch.entries.grubenv import GrubEnv
from bootwatch.entries.model import Entry, FileRole, Partition, PartitionKind

SAMPLES = Path(__file__).resolve().parents[1] / "realboot" / "samples"
UUID = "0b3c2f6e-1d2a-4c5b-9e8f-7a6b5c4d3e2f"


def write(directory: Path, text: str, name: str = "grub.cfg") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def only_entry(text: str, tmp_path: Path, env: GrubEnv | None = None) -> Entry:
    result = read_grub_config(write(tmp_path / "grub", text), grubenv=env)
    assert result.unknown is None, result.unknown
    assert len(result.entries) == 1, result.entries
    return result.entries[0]


# -- quoting ---------------------------------------------------------------------------------------


def test_single_quotes_with_an_escaped_quote_as_10_linux_writes_titles(tmp_path: Path) -> None:
    entry = only_entry("menuentry 'Bob'\\''s \"Debian\" GNU/Linux' --class debian { linux /vmlinuz-6.1.0 }", tmp_path)
    assert entry.title == "Bob's \"Debian\" GNU/Linux"


def test_double_quotes_keep_all_but_dollar_and_backslash_escapes(tmp_path: Path) -> None:
    entry = only_entry('menuentry "a \\"b\\" \\$x \\\\ \\q ;{}#" {\n linux /vmlinuz-1 "x y" c\\ d\n}', tmp_path)
    assert entry.title == 'a "b" $x \\ \\q ;{}#'
    assert entry.options == "x y c d"  # one argument each; GRUB passes them with the space inside


def test_comments_line_continuations_and_semicolons(tmp_path: Path) -> None:
    text = ("# menuentry 'commented' { linux /nope }\n"
            "menuentry 'x' { insmod ext2; linux /vmlinuz-2 ro \\\n  quiet # a comment\n initrd /a#b /c }\n")
    entry = only_entry(text, tmp_path)
    assert entry.options == "ro quiet"
    assert [f.path for f in entry.files] == ["/vmlinuz-2", "/a#b", "/c"]


@pytest.mark.parametrize("text", ["menuentry 'x { linux /v }", 'menuentry "x { linux /v }',
                                  "menuentry 'x' { linux /v", "menuentry 'x' { linux /v } }",
                                  "menuentry 'x' { linux ${v }"])
def test_unbalanced_quotes_or_braces_are_unknown_never_empty(tmp_path: Path, text: str) -> None:
    result = read_grub_config(write(tmp_path, text))
    assert result.unknown is not None and "GRUB would not read this file" in result.unknown
    assert str(tmp_path / "grub.cfg") in result.unknown


# -- entries and files -----------------------------------------------------------------------------


def test_kernel_and_initrd_command_families_and_several_images(tmp_path: Path) -> None:
    text = """
menuentry 'efi' { linuxefi /vmlinuz-5.14.0-1.el9.x86_64 ro; initrdefi /initramfs-5.14.0-1.el9.x86_64.img }
menuentry 'bios16' { linux16 /memtest86+.bin }
menuentry 'several' {
    linux /vmlinuz-6.1.0-9-amd64 root=/dev/sda1
    initrd /intel-ucode.img /amd-ucode.img /initrd.img-6.1.0-9-amd64
    devicetree /dtbs/board.dtb
}
menuentry 'chain' { chainloader /EFI/Microsoft/Boot/bootmgfw.efi }
menuentry 'bios chain' { chainloader +1 }
menuentry 'UEFI Firmware Settings' --id uefi-firmware { fwsetup }
"""
    result = read_grub_config(write(tmp_path, text))
    assert result.unknown is None
    got = {e.title: [(f.path, f.role) for f in e.files] for e in result.entries}
    assert got == {
        "efi": [("/vmlinuz-5.14.0-1.el9.x86_64", FileRole.KERNEL), ("/initramfs-5.14.0-1.el9.x86_64.img",
                                                                    FileRole.INITRD)],
        "bios16": [("/memtest86+.bin", FileRole.KERNEL)],
        "several": [("/vmlinuz-6.1.0-9-amd64", FileRole.KERNEL), ("/intel-ucode.img", FileRole.INITRD),
                    ("/amd-ucode.img", FileRole.INITRD), ("/initrd.img-6.1.0-9-amd64", FileRole.INITRD),
                    ("/dtbs/board.dtb", FileRole.DEVICETREE)],
        "chain": [("/EFI/Microsoft/Boot/bootmgfw.efi", FileRole.EFI)],
    }  # "bios chain" and fwsetup load no file: no boot entries
    versions = {e.title: e.version for e in result.entries}
    assert versions["efi"] == "5.14.0-1.el9.x86_64" and versions["bios16"] is None
    assert [f.partition.kind for f in result.entries[-1].files] == [PartitionKind.ESP]


def test_a_later_linux_drops_the_initrds_loaded_before_it(tmp_path: Path) -> None:
    entry = only_entry("menuentry x { initrd /old.img\n linux /vmlinuz-3 a\n initrd /new.img }", tmp_path)
    assert [f.path for f in entry.files] == ["/vmlinuz-3", "/new.img"]


def test_ids_follow_the_menu_path_and_stay_unique(tmp_path: Path) -> None:
    text = """
submenu 'Advanced' $menuentry_id_option 'adv' {
    menuentry 'A' $menuentry_id_option 'id-a' { linux /vmlinuz-1 }
    menuentry 'B' --id=id-b { linux /vmlinuz-2 }
    submenu 'Deeper' { menuentry 'C' { linux /vmlinuz-3 } }
    menuentry 'A again' $menuentry_id_option 'id-a' { linux /vmlinuz-4 }
}
"""
    result = read_grub_config(write(tmp_path, text))
    assert [e.id for e in result.entries] == ["adv>id-a", "adv>id-b", "adv>Deeper>C", "adv>id-a#2"]


# -- partitions ------------------------------------------------------------------------------------


def test_search_variants_name_the_partition(tmp_path: Path) -> None:
    text = f"""
menuentry uuid {{ search --no-floppy --fs-uuid --set=root --hint-bios=hd0,gpt2 --hint-efi=hd0,gpt2 \
--hint-baremetal=ahci0,gpt2 --hint-ieee1275='ieee1275//disk@0,gpt2' {UUID}
  linux /vmlinuz-a }}
menuentry short {{ search.fs_uuid {UUID} root; linux /vmlinuz-b }}
menuentry label {{ search --no-floppy --label --set=root BOOT; linux /vmlinuz-c }}
menuentry device {{ set root='hd0,msdos1'; linux /vmlinuz-d }}
menuentry inline {{ linux (hd1,gpt3)/vmlinuz-e; initrd ($root)/initrd-e }}
menuentry set-then-search {{ set root=hd0,gpt1; search --fs-uuid --set=root {UUID}; linux ($root)/vmlinuz-i }}
menuentry other-var {{ search --fs-uuid --set=elsewhere {UUID}; linux /vmlinuz-f }}
menuentry by-file {{ search --no-floppy --file --set=root /vmlinuz-h; linux /vmlinuz-h }}
menuentry nothing {{ linux /vmlinuz-g }}
"""
    result = read_grub_config(write(tmp_path, text))
    parts = {e.title: [f.partition for f in e.files] for e in result.entries}
    boot = PartitionKind.BOOT
    assert parts == {
        "uuid": [Partition(boot, fs_uuid=UUID)],
        "short": [Partition(boot, fs_uuid=UUID)],
        "label": [Partition(boot, label="BOOT")],
        "device": [Partition(boot, device="hd0,msdos1")],
        "inline": [Partition(boot, device="hd1,gpt3"), Partition(boot)],
        "set-then-search": [Partition(boot, fs_uuid=UUID)],
        "other-var": [Partition(boot)],  # $root is untouched: the partition GRUB read grub.cfg from
        # Whichever partition holds that file at boot: the inventory tells (test_inventory.py).
        "by-file": [Partition(PartitionKind.UNKNOWN, search_file="/vmlinuz-h")],
        "nothing": [Partition(boot)],
    }


def test_a_root_set_at_the_top_is_inherited_and_the_last_search_wins(tmp_path: Path) -> None:
    text = f"""
search --no-floppy --fs-uuid --set=root 11111111-2222-3333-4444-555555555555
menuentry a {{ linux /vmlinuz-1 }}
menuentry b {{
    if [ x$feature_platform_search_hint = xy ]; then
      search --no-floppy --fs-uuid --set=root --hint='hd1'  {UUID}
    else
      search --no-floppy --fs-uuid --set=root {UUID}
    fi
    linux /vmlinuz-2
}}
"""
    result = read_grub_config(write(tmp_path, text))
    assert [e.files[0].partition.fs_uuid for e in result.entries] == ["11111111-2222-3333-4444-555555555555", UUID]


def test_boot_prefix_subvolumes_and_doubled_slashes(tmp_path: Path) -> None:
    text = """
menuentry root { linux /boot/vmlinuz-6.1.0-1-amd64; initrd /boot/initrd.img-6.1.0-1-amd64 }
menuentry btrfs { linux /@/boot/vmlinuz-6.1.0-2-amd64 }
menuentry doubled { linux //vmlinuz-linux }
"""
    result = read_grub_config(write(tmp_path, text))
    files = {e.title: e.files for e in result.entries}
    assert [(f.partition.kind, f.boot_path()) for f in files["root"]] == [
        (PartitionKind.ROOT, "/vmlinuz-6.1.0-1-amd64"), (PartitionKind.ROOT, "/initrd.img-6.1.0-1-amd64")]
    # Which subvolume is mounted at / is the host's to say: the parser does not guess.
    assert (files["btrfs"][0].partition.kind, files["btrfs"][0].boot_path()) == (PartitionKind.UNKNOWN, None)
    assert files["doubled"][0].path == "/vmlinuz-linux"  # GRUB reads // as /


# -- variables -------------------------------------------------------------------------------------


def test_ubuntu_vt_handoff_is_kept_in_the_options_with_one_debug_line(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    text = """
menuentry 'Ubuntu' { recordfail; gfxmode $linux_gfx_mode
  linux /boot/vmlinuz-6.8.0-31-generic root=UUID=x ro quiet splash $vt_handoff
  initrd /boot/initrd.img-6.8.0-31-generic }
menuentry 'Ubuntu 2' { linux /boot/vmlinuz-6.8.0-30-generic ro $vt_handoff }
"""
    with caplog.at_level(logging.DEBUG, logger="bootwatch.entries.grub"):
        result = read_grub_config(write(tmp_path, text))
    assert result.unknown is None
    assert [e.options for e in result.entries] == ["root=UUID=x ro quiet splash $vt_handoff", "ro $vt_handoff"]
    lines = [r.getMessage() for r in caplog.records if "$vt_handoff" in r.getMessage()]
    assert len(lines) == 1 and "kept as written" in lines[0]
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_variables_set_in_the_file_and_from_grubenv_after_load_env(tmp_path: Path) -> None:
    text = """
set kdir=/kernels
if [ -s $prefix/grubenv ]; then load_env; fi
menuentry x {
  set extra="a b"
  linux ${kdir}/vmlinuz-1 $kernelopts $extra "$extra" $unset_opt
  initrd $kdir/initrd-1 $tuned_initrd $nothing
}
"""
    env = GrubEnv(tmp_path / "grubenv", {"kernelopts": "root=/dev/vda1 ro", "tuned_initrd": "/tuned.img"})
    write(tmp_path / "grub", "# GRUB Environment Block\n", "grubenv")  # what [ -s $prefix/grubenv ] tests
    entry = only_entry(text, tmp_path, env)
    assert [f.path for f in entry.files] == ["/kernels/vmlinuz-1", "/kernels/initrd-1", "/tuned.img"]
    assert entry.options == "root=/dev/vda1 ro a b a b $unset_opt"


def test_grubenv_is_not_seen_without_load_env(tmp_path: Path) -> None:
    env = GrubEnv(tmp_path / "grubenv", {"tuned_initrd": "/tuned.img"})
    entry = only_entry("menuentry x { linux /vmlinuz-1; initrd /i.img $tuned_initrd }", tmp_path, env)
    assert [f.path for f in entry.files] == ["/vmlinuz-1", "/i.img"]


def test_a_path_that_needs_an_unreadable_grubenv_is_unknown(tmp_path: Path) -> None:
    env = GrubEnv(tmp_path / "grubenv", unknown=f"{tmp_path}/grubenv: cannot be read (input/output error)")
    text = "load_env\nmenuentry x { linux /vmlinuz-1 $kernelopts; initrd /i.img $tuned_initrd }"
    result = read_grub_config(write(tmp_path, text), grubenv=env)
    assert result.unknown is not None and "$tuned_initrd" in result.unknown and "input/output error" in result.unknown
    # Options alone never make it unknown.
    result = read_grub_config(write(tmp_path, "load_env\nmenuentry x { linux /vmlinuz-1 $kernelopts }"), grubenv=env)
    assert result.unknown is None and result.entries[0].options == "$kernelopts"


def test_the_grubenv_next_to_grub_cfg_is_read_by_default(tmp_path: Path) -> None:
    if shutil.which("grub-editenv") is None:
        pytest.skip("grub-editenv not installed (grub2-common)")
    grub = tmp_path / "grub"
    grub.mkdir()
    subprocess.run(["grub-editenv", str(grub / "grubenv"), "set", "tuned_initrd=/tuned-initrd.img"], check=True)
    entry = only_entry("load_env\nmenuentry x { linux /vmlinuz-1; initrd /i.img $tuned_initrd }", tmp_path)
    assert [f.path for f in entry.files] == ["/vmlinuz-1", "/i.img", "/tuned-initrd.img"]


def test_expand_words_for_bls_values_from_the_fedora_sample() -> None:
    """RHEL 8's BLS entries name grubenv variables; blscfg hands the values to GRUB's script engine."""
    from bootwatch.entries.grubenv import read_grubenv
    env = read_grubenv(SAMPLES / "fedora" / "grub2" / "grubenv")
    assert env.unknown is None
    conf = next((SAMPLES / "fedora" / "loader" / "entries").glob("*-4.18.0-553.el8_10.x86_64.conf"))
    lines = dict(line.split(" ", 1) for line in conf.read_text().splitlines())
    assert expand_words(lines["initrd"], env.values, paths=True) == ["/initramfs-4.18.0-553.el8_10.x86_64.img"]
    assert expand_words(lines["options"], env.values, paths=False) == [
        "root=/dev/mapper/rhel-root", "ro", "crashkernel=auto", "resume=/dev/mapper/rhel-swap", "rd.lvm.lv=rhel/root",
        "rd.lvm.lv=rhel/swap", "rhgb", "quiet"]
    tuned = dict(env.values, tuned_initrd="/tuned-initrd.img", tuned_params="skew_tick=1")
    assert expand_words(lines["initrd"], tuned, paths=True)[-1] == "/tuned-initrd.img"
    assert expand_words(lines["options"], tuned, paths=False)[-1] == "skew_tick=1"
    assert expand_words("$kernelopts", {}, paths=False) == ["$kernelopts"]
    with pytest.raises(ValueError, match="unknown"):
        expand_words(lines["initrd"], {}, paths=True, env_unknown="grubenv cannot be read")


def test_the_fedora_grub_cfg_loads_its_grubenv_and_leaves_entries_to_blscfg(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="bootwatch.entries.grub"):
        result = read_grub_config(SAMPLES / "fedora" / "grub2" / "grub.cfg")
    assert result.unknown is None and result.entries == ()  # known: the entries are the BLS source's
    assert any("blscfg" in r.getMessage() for r in caplog.records)


# -- includes --------------------------------------------------------------------------------------


def test_grub_btrfs_snapshot_entries_are_seen_through_configfile(tmp_path: Path) -> None:
    """The real grub-mkconfig and grub-btrfs wrote the sample (tests/realboot/README.md): an Arch
    host with a btrfs root and a separate /boot, two snapper snapshots."""
    grub = tmp_path / "grub"
    shutil.copytree(SAMPLES / "grub-btrfs", grub)
    result = read_grub_config(grub / "grub.cfg")
    assert result.unknown is None
    main = [e for e in result.entries if e.origin == grub / "grub.cfg"]
    snapshots = [e for e in result.entries if e.origin == (grub / "grub-btrfs.cfg").resolve()]
    assert len(main) + len(snapshots) == len(result.entries)
    boot_uuid, root_uuid = "cf6a9deb-e989-48ad-9cad-9bc16b4a7da5", "7b376f0d-99f8-401c-bbd0-7f822c011815"
    assert [e.title for e in main] == ["Arch GNU/Linux", "Arch GNU/Linux, with Linux linux",
                                       "Arch GNU/Linux, with Linux linux (recovery mode)"]
    for entry in main:
        assert [f.path for f in entry.files] == ["/vmlinuz-linux", "/intel-ucode.img", "/initramfs-linux.img"]
        assert {f.partition.fs_uuid for f in entry.files} == {boot_uuid}  # search after set root='hd0'
        assert entry.version is None  # Arch names the package, not the version
    assert main[0].options == f"root=UUID={root_uuid} ro rootflags=subvol=@ loglevel=3 quiet"
    # Two snapshots, two initramfs each; the column header menuentry loads nothing.
    assert len(snapshots) == 4
    for entry in snapshots:
        assert [f.path for f in entry.files] == ["/vmlinuz-linux", "/intel-ucode.img", entry.files[2].path]
        assert entry.files[2].path in ("/initramfs-linux.img", "/initramfs-linux-fallback.img")
        assert {(f.partition.fs_uuid, f.partition.kind) for f in entry.files} == {(boot_uuid, PartitionKind.BOOT)}
        assert entry.id.startswith("Arch Linux snapshots>| 20")
        assert entry.options.startswith(f"root=UUID={root_uuid} loglevel=3 quiet rootflags=rw,noatime,")
    assert snapshots[1].id.endswith(f"gnulinux-snapshots-{boot_uuid}#2")
    assert [e.options.rsplit("subvol=", 1)[1] for e in snapshots] == [
        "@/.snapshots/13/snapshot", "@/.snapshots/13/snapshot", "@/.snapshots/12/snapshot", "@/.snapshots/12/snapshot"]


def test_without_grub_btrfs_cfg_the_stub_adds_nothing(tmp_path: Path) -> None:
    grub = tmp_path / "grub"
    grub.mkdir()
    shutil.copy(SAMPLES / "grub-btrfs" / "grub.cfg", grub / "grub.cfg")
    result = read_grub_config(grub / "grub.cfg")
    assert result.unknown is None and len(result.entries) == 3


@pytest.mark.parametrize("spelling", ["${prefix}/more.cfg", "$config_directory/more.cfg", "/grub/more.cfg",
                                      "/boot/grub/./more.cfg", "$prefix/sub/../more.cfg"])
def test_include_spellings_of_the_grub_directory(tmp_path: Path, spelling: str) -> None:
    write(tmp_path / "grub", "menuentry more { linux /vmlinuz-more }", "more.cfg")
    result = read_grub_config(write(tmp_path / "grub", f"source {spelling}\nmenuentry main {{ linux /vmlinuz-1 }}"))
    if ".." in spelling:
        assert result.unknown is not None and "not a file in" in result.unknown
    else:
        assert result.unknown is None and [e.title for e in result.entries] == ["more", "main"]


@pytest.mark.parametrize("spelling", ["/etc/more.cfg", "(hd1,gpt1)/EFI/debian/grub.cfg", "$somewhere/more.cfg",
                                      "${prefix}/../../etc/passwd"])
def test_an_include_that_names_no_file_here_is_unknown(tmp_path: Path, spelling: str) -> None:
    result = read_grub_config(write(tmp_path / "grub", f"menuentry a {{ linux /v-1 }}\nconfigfile {spelling}"))
    assert result.unknown is not None and "cannot be read" in result.unknown
    assert [e.title for e in result.entries] == ["a"]  # what was read, for display only


def test_a_symlink_out_of_the_grub_directory_is_not_followed(tmp_path: Path) -> None:
    write(tmp_path / "elsewhere", "menuentry evil { linux /evil }", "x.cfg")
    grub = tmp_path / "grub"
    grub.mkdir()
    (grub / "link.cfg").symlink_to(tmp_path / "elsewhere" / "x.cfg")
    result = read_grub_config(write(grub, "configfile $prefix/link.cfg"))
    assert result.unknown is not None and result.entries == ()


def test_includes_are_bounded_and_cycles_read_once(tmp_path: Path) -> None:
    grub = tmp_path / "grub"
    write(grub, "menuentry top { linux /v-0 }\nconfigfile $prefix/grub.cfg\nsource $prefix/grub.cfg")
    result = read_grub_config(grub / "grub.cfg")
    assert result.unknown is None and [e.title for e in result.entries] == ["top"]
    for i in range(MAX_INCLUDE_DEPTH + 2):
        write(grub, f"menuentry e{i} {{ linux /v-{i} }}\nconfigfile $prefix/f{i + 1}.cfg", f"f{i}.cfg")
    result = read_grub_config(grub / "f0.cfg")
    assert result.unknown is not None and f"deeper than {MAX_INCLUDE_DEPTH}" in result.unknown


# -- what cannot be read ---------------------------------------------------------------------------


def test_a_missing_grub_cfg_is_unknown(tmp_path: Path) -> None:
    result = read_grub_config(tmp_path / "grub.cfg")
    assert result.unknown == f"{tmp_path}/grub.cfg: the GRUB configuration does not exist"
    assert not result.known


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "grub.cfg")
    result = read_grub_config(tmp_path / "grub.cfg")
    assert result.unknown is not None and "FIFO" in result.unknown
    write(tmp_path / "g", "menuentry a { linux /v-1 }\nconfigfile $prefix/fifo.cfg")
    os.mkfifo(tmp_path / "g" / "fifo.cfg")
    result = read_grub_config(tmp_path / "g" / "grub.cfg")
    assert result.unknown is not None and "FIFO" in result.unknown


def test_a_huge_grub_cfg_is_unknown_and_not_read(tmp_path: Path) -> None:
    path = tmp_path / "grub.cfg"
    with path.open("wb") as f:
        f.truncate(MAX_CONFIG_SIZE + 1)
    result = read_grub_config(path)
    assert result.unknown is not None and "larger than" in result.unknown


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_an_unreadable_grub_cfg_is_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, "menuentry a { linux /v-1 }")
    path.chmod(0)
    result = read_grub_config(path)
    assert result.unknown is not None and "permission denied" in result.unknown


def test_parse_grub_config_reads_text_as_if_from_a_file(tmp_path: Path) -> None:
    result = parse_grub_config("menuentry a { linux /boot/vmlinuz-6.1.0-1-amd64 }", tmp_path / "grub.cfg")
    assert result.unknown is None and result.entries[0].files[0].boot_path() == "/vmlinuz-6.1.0-1-amd64"


def test_deep_nesting_is_unknown_and_never_exhausts_the_stack(tmp_path: Path) -> None:
    from bootwatch.entries.grub import MAX_NESTING
    grub = tmp_path / "grub"
    deep = "submenu s {\n" * (MAX_NESTING + 1) + "menuentry e { linux /v }\n" + "}\n" * (MAX_NESTING + 1)
    result = read_grub_config(write(grub, deep))
    assert result.unknown is not None and "nested deeper" in result.unknown
    # As deep as allowed in every file of an include chain as deep as allowed: read, then unknown.
    for i in range(MAX_INCLUDE_DEPTH + 2):
        body = f"menuentry e{i} {{ linux /v-{i} }}\nconfigfile $prefix/f{i + 1}.cfg\n"
        write(grub, "submenu s {\n" * (MAX_NESTING - 1) + body + "}\n" * (MAX_NESTING - 1), f"f{i}.cfg")
    result = read_grub_config(grub / "f0.cfg")
    assert result.unknown is not None and f"deeper than {MAX_INCLUDE_DEPTH}" in result.unknown
    assert len(result.entries) == MAX_INCLUDE_DEPTH + 1


def test_includes_together_are_bounded(tmp_path: Path) -> None:
    from bootwatch.entries.grub import MAX_TOTAL_SIZE
    grub = tmp_path / "grub"
    filler = "#" * (MAX_CONFIG_SIZE - 100) + "\n"
    count = MAX_TOTAL_SIZE // MAX_CONFIG_SIZE + 1
    for i in range(count):
        write(grub, filler + f"menuentry e{i} {{ linux /v-{i} }}\nsource $prefix/f{i + 1}.cfg\n", f"f{i}.cfg")
    result = read_grub_config(grub / "f0.cfg")
    assert result.unknown is not None and "together" in result.unknown


def test_grub_btrfs_with_boot_on_a_btrfs_root(tmp_path: Path) -> None:
    """Written by the real grub-mkconfig and grub-btrfs with /boot a directory of subvolume @:
    10_linux's paths carry the subvolume, and every snapshot entry loads the snapshot's own kernel."""
    grub = tmp_path / "grub"
    shutil.copytree(SAMPLES / "grub-btrfs-on-root", grub)
    result = read_grub_config(grub / "grub.cfg")
    assert result.unknown is None
    main = [e for e in result.entries if e.origin == grub / "grub.cfg"]
    snapshots = [e for e in result.entries if e not in main]
    assert len(main) == 3 and len(snapshots) == 4
    for entry in main:
        assert [f.path for f in entry.files] == ["/@/boot/vmlinuz-linux", "/@/boot/intel-ucode.img",
                                                 "/@/boot/initramfs-linux.img"]
        kernel = entry.files[0]
        # The parser cannot tell which subvolume is mounted at /; the host can (mountinfo).
        assert kernel.partition.kind is PartitionKind.UNKNOWN and kernel.boot_path() is None
        assert kernel.boot_path(root_subvolume="/@") == "/vmlinuz-linux"
    for entry in snapshots:
        snapshot = entry.options.rsplit("subvol=", 1)[1]
        assert entry.files[0].path == f"/{snapshot}/boot/vmlinuz-linux"
        # In a read-only snapshot, not in the host's /boot: nothing the cache keeps or restores.
        assert {f.boot_path(root_subvolume="/@") for f in entry.files} == {None}


def test_boot_path_rules() -> None:
    from bootwatch.entries.model import BootFile
    def path(p: str, kind: PartitionKind, subvolume: str = "") -> str | None:
        return BootFile(p, FileRole.KERNEL, Partition(kind)).boot_path(root_subvolume=subvolume)
    assert path("/vmlinuz-1", PartitionKind.BOOT) == "/vmlinuz-1"
    assert path("/boot/vmlinuz-1", PartitionKind.ROOT) == "/vmlinuz-1"
    assert path("/boot/vmlinuz-1", PartitionKind.UNKNOWN) is None
    assert path("/@/boot/vmlinuz-1", PartitionKind.UNKNOWN, "/@") == "/vmlinuz-1"
    assert path("/@root/boot/vmlinuz-1", PartitionKind.UNKNOWN, "/@") is None
    assert path("/EFI/Linux/x.efi", PartitionKind.ESP, "/@") is None


def test_multiboot_modules_as_20_linux_xen_writes_them(tmp_path: Path) -> None:
    text = """menuentry 'Xen' {
    multiboot2 /xen-4.17-amd64.gz placeholder dom0_mem=2G ${xen_rm_opts}
    module2 /vmlinuz-6.1.0-9-amd64 placeholder root=UUID=x ro quiet
    module2 --nounzip /amd-ucode.img /initrd.img-6.1.0-9-amd64
}"""
    entry = only_entry(text, tmp_path)
    assert [(f.path, f.role) for f in entry.files] == [
        ("/xen-4.17-amd64.gz", FileRole.KERNEL), ("/vmlinuz-6.1.0-9-amd64", FileRole.KERNEL),
        ("/amd-ucode.img", FileRole.INITRD), ("/initrd.img-6.1.0-9-amd64", FileRole.INITRD)]
    assert entry.version == "6.1.0-9-amd64" and entry.options == "root=UUID=x ro quiet"


def test_debians_41_custom_reads_custom_cfg_once_as_grub_does(tmp_path: Path) -> None:
    """grub-mkconfig's real output (the grub-btrfs sample holds Debian's 41_custom): GRUB's normal
    mode sets $config_directory, so the first branch reads custom.cfg and the elif is not taken."""
    grub = tmp_path / "grub"
    grub.mkdir()
    shutil.copy(SAMPLES / "grub-btrfs" / "grub.cfg", grub / "grub.cfg")
    without = read_grub_config(grub / "grub.cfg")
    assert without.unknown is None
    write(grub, "menuentry 'my kernel' {\n\tlinux /vmlinuz-custom ro\n}\n", "custom.cfg")
    result = read_grub_config(grub / "grub.cfg")
    assert result.unknown is None
    custom = [e for e in result.entries if e.title == "my kernel"]
    assert [e.id for e in custom] == ["my kernel"]
    assert len(result.entries) == len(without.entries) + 1


def test_conditions_grub_can_evaluate_choose_one_branch(tmp_path: Path) -> None:
    text = """
set v=2
if [ "$v" = 1 ]; then menuentry one { linux /vmlinuz-1 }
elif [ -z "$v" -o ! -f $prefix/there ]; then menuentry two { linux /vmlinuz-2 }
else menuentry three { linux /vmlinuz-3 }
fi
if test -e $prefix/missing; then menuentry four { linux /vmlinuz-4 }; fi
if ! [ -f $prefix/there ]; then menuentry five { linux /vmlinuz-5 }; fi
if ! test -d $prefix/there; then menuentry six { linux /vmlinuz-6 }; fi
"""
    write(tmp_path / "grub", "x", "there")
    result = read_grub_config(write(tmp_path / "grub", text))
    assert [e.title for e in result.entries] == ["three", "six"]


def test_a_condition_that_cannot_be_told_reads_every_branch_and_an_entry_once(tmp_path: Path) -> None:
    text = """
if [ x$feature_platform_search_hint = xy ]; then
  menuentry same { linux /vmlinuz-1 }
  set v=1
else
  menuentry same { linux /vmlinuz-1 }
  menuentry other { linux /vmlinuz-2 }
  set v=2
fi
if [ "$v" = 1 ]; then menuentry by-v { linux /vmlinuz-v }; fi
if [ "$saved_entry" = x ]; then menuentry by-env { linux /vmlinuz-e }; fi
if [ -f /etc/passwd ]; then menuentry elsewhere { linux /vmlinuz-p }; fi
if loadfont unicode; then menuentry by-command { linux /vmlinuz-c }; fi
"""
    write(tmp_path / "grub", "# GRUB Environment Block\n", "grubenv")
    env = GrubEnv(tmp_path / "grub" / "grubenv", {"saved_entry": "y"})
    result = read_grub_config(write(tmp_path / "grub", "load_env\n" + text), grubenv=env)
    assert result.unknown is None
    # v was set in a branch GRUB may not take; saved_entry is rewritten at boot; /etc is not
    # the grub directory's partition; a command's status is not known: all read, "same" once.
    assert [e.title for e in result.entries] == ["same", "other", "by-v", "by-env", "elsewhere", "by-command"]
