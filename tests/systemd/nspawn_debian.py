"""A Debian 12 host with GRUB in a container, for real kernel packages: what is installed and how.

The container's tree is the cached mmdebstrap rootfs (nspawn_rootfs) with the packages a Debian
host that boots with GRUB has for its kernels, all from Debian's archive:

- ``grub2-common``: ``update-grub``, ``grub-mkconfig`` and the kernel hooks
  ``/etc/kernel/postinst.d/zz-update-grub`` and ``/etc/kernel/postrm.d/zz-update-grub``, which
  run update-grub after a kernel package is installed or removed;
- ``grub-pc-bin``: GRUB's i386-pc modules and ``grub-probe``'s platform (what grub-pc would bring,
  without ``grub-install`` writing a boot sector: the container has no disk of its own);
- ``initramfs-tools`` (with its Recommends ``zstd`` and ``busybox``, as apt installs it): the
  initramfs ``initrd.img-<version>`` that the kernel's postinst hook makes and its postrm hook
  deletes, which 10_linux puts on the ``initrd`` line;
- ``linux-base`` and ``kmod``: the rest of the kernel package's dependencies
  (``linux-update-symlinks``, ``depmod``).

The kernel packages themselves (``linux-image-*-cloud-amd64``) are the ones tests/realboot caches
with ``apt-get download`` on the host, bound read-only into the container and installed with
``dpkg -i``: nothing is downloaded inside the container.
"""

from __future__ import annotations

from nspawn_rootfs import RootfsSpec
from nspawn_testbed import INSTALL_BOOTWATCH

DEBIAN_KERNEL_PACKAGES = ("grub2-common", "grub-pc-bin", "initramfs-tools", "zstd", "busybox",
                          "linux-base", "kmod")
ROOTFS = RootfsSpec(packages=RootfsSpec().packages + DEBIAN_KERNEL_PACKAGES)

# Where things appear in the container (bound read-only).
STAGE = "/opt/bootwatch-test"
DEBS = "/opt/bootwatch-test-debs"
GRUB_BTRFS_CFG = "/boot/grub/grub-btrfs.cfg"

# grub-btrfs's /etc/grub.d/41_snapshots-btrfs ends by printing the snapshot submenu for grub.cfg:
# an include of grub-btrfs.cfg, guarded so that GRUB skips it when the file is missing. These are
# the lines of grub-btrfs v4.13 (Antynea/grub-btrfs, commit 9a8a1b7d, the heredoc after "Make a
# submenu in GRUB (grub.cfg)"), with its defaults: submenu name "${distro} snapshots" (NAME= of
# /etc/os-release), search directory "${prefix}", no --users or --unrestricted. What the real
# script also does, write grub-btrfs.cfg from the btrfs snapshots it lists, is left to the test:
# the container's root is ext4 without snapshots, and grub-btrfs is not packaged in Debian 12.
GRUB_BTRFS_SCRIPT = r"""#! /bin/sh
# Stands for grub-btrfs's 41_snapshots-btrfs (v4.13): prints the same include lines.
set -e
distro=$(awk -F "=" '/^NAME=/ {gsub(/"/, "", $2); print $2}' /etc/os-release)
submenuname="${distro:-Linux} snapshots"
cat << EOF
if [ ! -e "\${prefix}/grub-btrfs.cfg" ]; then
echo ""
else
submenu '${submenuname}' {
    configfile "\${prefix}/grub-btrfs.cfg"
}
fi
EOF
"""


def grub_btrfs_cfg(version: str, *, boot_uuid: str, root_uuid: str, boot_prefix: str) -> str:
    """grub-btrfs.cfg with one snapshot whose entry boots kernel *version* from the live /boot.

    The shape is what 41_snapshots-btrfs's ``header_menu`` and ``make_menu_entries`` write (see
    tests/realboot/samples/grub-btrfs/grub-btrfs.cfg, made by the real script): a column-header
    menuentry, a submenu per snapshot, a menuentry per kernel and initramfs with
    ``search --fs-uuid --set=root`` of the /boot filesystem and the paths relative to it
    (*boot_prefix* is "" when /boot is its own filesystem, "/boot" when it is a directory of
    root). The snapshot was taken while *version* was installed; it still names its files.
    """
    kernel = f"vmlinuz-{version}"
    initrd = f"initrd.img-{version}"
    snapshot = "@/.snapshots/1/snapshot"
    when = "2026-12-05 09:00:00"
    return f"""\
menuentry '|         Date        |         Snapshot        |  Type  |       Description      |' {{ echo }}
submenu '| {when} | {snapshot} | pre    | apt-get upgrade        |' {{
    submenu '| {when} | {snapshot} | pre | apt-get upgrade |' {{ echo }}

    menuentry '  "{kernel}" & "{initrd}"' --class snapshots --class gnu-linux --class gnu --class os \
$menuentry_id_option 'gnulinux-snapshots-{boot_uuid}' {{
        if [ x$feature_all_video_module = xy ]; then
        insmod all_video
        fi
        set gfxpayload=keep
        insmod ext2
        if [ x$feature_platform_search_hint = xy ]; then
            search --no-floppy --fs-uuid  --set=root  {boot_uuid}
        else
            search --no-floppy --fs-uuid  --set=root {boot_uuid}
        fi
        echo 'Loading Snapshot: "{when}" "{snapshot}"'
        echo 'Loading Kernel: "{kernel}" ...'
        linux "{boot_prefix}/{kernel}" root=UUID={root_uuid}  quiet rootflags=subvol="{snapshot}"
        echo 'Loading Initramfs: "{initrd}" ...'
        initrd "{boot_prefix}/{initrd}"
    }}
}}
"""


# Runs inside the container, as root, with the staging directory at $1: bootwatch as
# nspawn_testbed.INSTALL_BOOTWATCH installs it (wheels into a venv, the shipped unit without a
# drop-in, the catalog), its Debian hook, grub-btrfs's stand-in; then what grub-pc's postinst
# would have done on a real host: /etc/default/grub from GRUB's default, and a first update-grub
# (zz-update-grub runs update-grub only when /boot/grub/grub.cfg exists).
INSTALL_SCRIPT = r"""
stage=$1
""" + INSTALL_BOOTWATCH + r"""
# bootwatch's Debian kernel hook, as the README installs it: the same file in both directories.
for dir in postinst.d postrm.d; do
    install -D -m 0755 "$stage/zzz-bootwatch" "/etc/kernel/$dir/zzz-bootwatch"
done

install -m 0755 "$stage/41_snapshots-btrfs" /etc/grub.d/41_snapshots-btrfs
cp /usr/share/grub/default/grub /etc/default/grub
mkdir -p /boot/grub
update-grub
systemctl daemon-reload
"""
