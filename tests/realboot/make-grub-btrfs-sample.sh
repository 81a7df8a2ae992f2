#!/bin/bash
# Regenerate samples/grub-btrfs/ with the real grub-mkconfig and grub-btrfs's real 41_snapshots-btrfs.
#
#   sudo tests/realboot/make-grub-btrfs-sample.sh /path/to/41_snapshots-btrfs OUTDIR [separate|on-root]
#
# grub-btrfs is not packaged in Debian 12 and its script is not part of this repository: take it
# from a grub-btrfs checkout (the sample was made with v4.13, commit 9a8a1b7d). Needs root,
# grub2-common, grub-pc-bin, btrfs-progs and an awk. The layout is an Arch host: a btrfs root
# (subvolume @ mounted at /, snapper's read-only snapshots @/.snapshots/N/snapshot with info.xml)
# and /boot with Arch's image names: a separate ext4 filesystem (default), or with "on-root" a
# directory of the root subvolume, whose snapshots then hold their own kernels. How grub-mkconfig is made to run on loop
# devices is in README.md (the same private /dev and chroot as mkconfig-chroot.sh).
set -euo pipefail
script=$(realpath "$1")
out=$(realpath "$2")
boot_layout=${3:-separate}
kernel=$(ls /var/cache/bootwatch-tests/kernels/*/vmlinuz-* | head -n 1)  # any real kernel image
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/payload" "$work/ucode/kernel/x86/microcode" "$work/initramfs" "$work/mnt"
cp "$kernel" "$work/payload/vmlinuz-linux"
printf '#!/bin/sh\n' > "$work/initramfs/init"
for name in initramfs-linux.img initramfs-linux-fallback.img; do
    (cd "$work/initramfs" && echo init | cpio --quiet -o -H newc | gzip -n > "$work/payload/$name")
done
: > "$work/ucode/kernel/x86/microcode/GenuineIntel.bin"
(cd "$work/ucode" && find . | cpio --quiet -o -H newc > "$work/payload/intel-ucode.img")
truncate -s 256M "$work/root.img"
truncate -s 64M "$work/boot.img"
mkfs.btrfs -q -f "$work/root.img" >/dev/null
mkfs.ext4 -q -F "$work/boot.img"
root_loop=$(losetup --find --show "$work/root.img")
boot_loop=$(losetup --find --show "$work/boot.img")
trap 'losetup -d "$root_loop" "$boot_loop"; rm -rf "$work"' EXIT

export ROOT_LOOP=$root_loop BOOT_LOOP=$boot_loop WORK=$work SCRIPT=$script OUT=$out BOOT_LAYOUT=$boot_layout
unshare --mount --propagation private bash -euo pipefail -c '
dev=$(mktemp -d)
mount -t tmpfs -o mode=0755 realboot-dev "$dev"
for name in null zero full random urandom tty; do cp -a "/dev/$name" "$dev/"; done
ln -s /proc/self/fd "$dev/fd"
mkdir -p "$dev/disk/by-uuid"
for pair in "realboot-root $ROOT_LOOP" "realboot-boot $BOOT_LOOP"; do
    set -- $pair
    cp -a "$2" "$dev/$1"
    ln -s "../../$1" "$dev/disk/by-uuid/$(blkid -s UUID -o value "$2")"
done
mount --move "$dev" /dev
root_uuid=$(blkid -s UUID -o value /dev/realboot-root)
boot_uuid=$(blkid -s UUID -o value /dev/realboot-boot)

top=$(mktemp -d)
mount /dev/realboot-root "$top"
btrfs -q subvolume create "$top/@"
mkdir -p "$top/@/boot" "$top/@/etc/default" "$top/@/etc/grub.d" "$top/@/etc/alternatives" "$top/@/usr" \
    "$top/@/dev" "$top/@/proc" "$top/@/sys" "$top/@/tmp"
for dir in bin sbin lib lib64; do ln -s "usr/$dir" "$top/@/$dir"; done
printf "NAME=\"Arch Linux\"\nID=arch\n" > "$top/@/etc/os-release"
printf "UUID=%s / btrfs rw,noatime,compress=zstd:3,space_cache=v2,subvol=/@ 0 0\n" "$root_uuid" > "$top/@/etc/fstab"
if [ "$BOOT_LAYOUT" = separate ]; then
    printf "UUID=%s /boot ext4 rw,relatime 0 2\n" "$boot_uuid" >> "$top/@/etc/fstab"
else
    cp -R "$WORK/payload/." "$top/@/boot/"  # before the snapshots: each holds these kernels
fi
cp /usr/share/grub/default/grub "$top/@/etc/default/grub"
printf "GRUB_DISTRIBUTOR=\"Arch\"\nGRUB_CMDLINE_LINUX_DEFAULT=\"loglevel=3 quiet\"\n" >> "$top/@/etc/default/grub"
btrfs -q subvolume create "$top/@/.snapshots"
snapshot() {  # NUMBER TYPE DESCRIPTION
    mkdir "$top/@/.snapshots/$1"
    btrfs -q subvolume snapshot -r "$top/@" "$top/@/.snapshots/$1/snapshot"
    printf "<?xml version=\"1.0\"?>\n<snapshot>\n  <type>%s</type>\n  <num>%s</num>\n  <description>%s</description>\n</snapshot>\n" \
        "$2" "$1" "$3" > "$top/@/.snapshots/$1/info.xml"
}
snapshot 12 single "before upgrade"
snapshot 13 pre "pacman -Syu linux"
umount "$top"

mnt=$WORK/mnt
mount -o subvol=@ /dev/realboot-root "$mnt"
if [ "$BOOT_LAYOUT" = separate ]; then
    mount /dev/realboot-boot "$mnt/boot"
    cp -R "$WORK/payload/." "$mnt/boot/"
fi
mkdir -p "$mnt/boot/grub"
printf "(hd0) /dev/realboot-boot\n(hd1) /dev/realboot-root\n" > "$mnt/boot/grub/device.map"
grubd=$(mktemp -d)
cp -a /etc/grub.d/. "$grubd/"
install -m 0755 "$SCRIPT" "$grubd/41_snapshots-btrfs"
mount --bind /usr "$mnt/usr"
mount -o remount,bind,ro "$mnt/usr"
mount --bind "$grubd" "$mnt/etc/grub.d"
mount --bind /etc/alternatives "$mnt/etc/alternatives"  # /usr/bin/awk is an alternative
mount --rbind /dev "$mnt/dev"
mount -t proc proc "$mnt/proc"
mount --bind /sys "$mnt/sys"
chroot "$mnt" grub-mkconfig -o /boot/grub/grub.cfg
cp "$mnt/boot/grub/grub.cfg" "$mnt/boot/grub/grub-btrfs.cfg" "$OUT/"
'
