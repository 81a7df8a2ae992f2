"""The proof's command line and its reading of a console, on lines real kernels printed."""

from __future__ import annotations

from bootwatch.prove.cmdline import ADDED, proof_cmdline
from bootwatch.prove.console import ConsoleWatch, Problem

# Printed by Debian's 6.1.0-57-cloud-amd64 under qemu (see tests/prove/test_prove_qemu.py).
GOOD = """\
[    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) \
12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-16)
[    3.254778] Freeing initrd memory: 14484K
[    4.721472] Run /init as init process
Loading, please wait...
Starting systemd-udevd version 252.39-1~deb12u2
Begin: Loading essential drivers ... done.
Spawning shell within the initramfs
"""
TRUNCATED = """\
[    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org)
[    2.712377] Initramfs unpacking failed: ZSTD-compressed data is truncated
[    3.575951] Run /init as init process
[    3.583685] Failed to execute /init (error -2)
[    3.585274] Kernel panic - not syncing: No working init found.  Try passing init= option to kernel.
"""


def watch(text: str) -> ConsoleWatch:
    w = ConsoleWatch()
    for line in text.splitlines():
        w.feed(line)
    return w


def test_init_ran_and_break_point_passes() -> None:
    w = watch(GOOD)
    assert w.passed and w.finished and w.kernel_started
    assert w.evidence() == ("[    4.721472] Run /init as init process",)


def test_truncated_initramfs_fails_although_the_kernel_tried_init() -> None:
    w = watch(TRUNCATED)
    assert not w.passed and w.failed and w.fatal
    assert [f.problem for f in w.findings] == [Problem.UNPACK, Problem.INIT, Problem.PANIC]


def test_module_failures_of_kernel_and_userspace() -> None:
    for line in ("[    2.5] stp: Unknown symbol llc_sap_open (err -2)",
                 "[    2.5] crc7: disagrees about version of symbol module_layout",
                 "modprobe: FATAL: Module crc7 not found in directory /lib/modules/6.1.0-57-cloud-amd64",
                 "insmod: can't insert '/x.ko': invalid module format"):
        w = watch(GOOD + line + "\n")
        assert [f.problem for f in w.findings] == [Problem.MODULE], line
        assert not w.passed


def test_a_module_signature_taint_is_no_failure() -> None:
    w = watch(GOOD + "[    2.5] crc7: module verification failed: signature and/or required key missing - "
                     "tainting kernel\n")
    assert w.passed


def test_halted_decompressor_is_seen_before_its_line_ends() -> None:
    w = ConsoleWatch()
    w.feed("Decoding failed")
    assert w.failed and w.kernel_started  # the image is at fault: no retry under another accelerator
    w2 = ConsoleWatch()
    assert w2.feed_partial(" -- System halted")
    assert w2.fatal and not w2.feed_partial(" -- System halted")


def test_no_kernel_line_means_not_started() -> None:
    w = watch("SeaBIOS (version 1.16.2-debian-1.16.2-1)\nBooting from ROM...\nProbing EDD (edd=off to disable)... ok\n")
    assert not w.kernel_started and not w.failed and not w.passed
    assert w.reason() == "the kernel never started"


def test_cmdline_drops_disks_consoles_and_breaks_keeps_the_rest() -> None:
    options = ('BOOT_IMAGE=/vmlinuz-6.1 root=UUID=0b5c ro rootflags=subvol=@ resume=/dev/sda2 quiet splash '
               'rd.lvm.lv=vg/root rd.luks.uuid=abcd console=tty0 console=ttyS1,115200 init=/bin/bash fips=1 '
               'acpi_osi="Windows 2020" crashkernel=512M panic=10 -- single')
    cmdline = proof_cmdline(options)
    words = cmdline.split(" ")
    assert cmdline.startswith('BOOT_IMAGE=/vmlinuz-6.1 ro fips=1 acpi_osi="Windows 2020" console=ttyS0 ')
    assert words[-len(ADDED):] == list(ADDED)
    for gone in ("root=UUID=0b5c", "rootflags=subvol=@", "resume=/dev/sda2", "quiet", "splash", "rd.lvm.lv=vg/root",
                 "rd.luks.uuid=abcd", "console=tty0", "init=/bin/bash", "crashkernel=512M", "panic=10", "single"):
        assert gone not in words


def test_modules_release_of_archive_names() -> None:
    from bootwatch.verify.initramfs import modules_release
    assert modules_release(b"usr/lib/modules/6.1.0-57-cloud-amd64/kernel/lib/crc7.ko") == "6.1.0-57-cloud-amd64"
    assert modules_release(b"./lib/modules/6.1.0-56-cloud-amd64/modules.dep") == "6.1.0-56-cloud-amd64"
    assert modules_release(b"lib/modules") is None
    assert modules_release(b"usr/lib/firmware/x") is None
