#!/bin/sh
# Run the real grub-mkconfig for a boot layout on loop devices (see README.md beside this file).
#
# Must run as root inside a private mount namespace (unshare --mount --propagation private):
# every mount made here, the /dev below included, disappears with the namespace.
#
# Environment:
#   ROOT_LOOP   the loop device holding the root filesystem (ext4)
#   BOOT_LOOP   the loop device holding a separate /boot (ext4), or empty: /boot is a directory of root
#   MNT         an empty directory to mount the root filesystem on
#   PAYLOAD     a directory whose contents go into /boot (kernels, initrds, microcode)
#   DEFAULT_GRUB  the /etc/default/grub to use
#   DEVICE_MAP  a device.map for /boot/grub, or empty
#   OUT         where grub.cfg and the file listings of each filesystem are written
set -eu

# 10_linux exits without an entry when / is on a device named /dev/loopN ("We can't cope with
# devices loop-mounted from files here", GRUB's util/grub.d/10_linux.in): the kernel would not
# find a loop root. So the loop devices get other names, in a /dev of our own, with the udev
# links /dev/disk/by-uuid that 10_linux checks before it writes root=UUID=.
dev=$(mktemp -d)
mount -t tmpfs -o mode=0755 realboot-dev "$dev"
for name in null zero full random urandom tty; do cp -a "/dev/$name" "$dev/"; done
ln -s /proc/self/fd "$dev/fd"
mkdir -p "$dev/disk/by-uuid"
node() {  # NAME LOOPDEV: a block node with the loop device's numbers, and its by-uuid link
    cp -a "$2" "$dev/$1"
    ln -s "../../$1" "$dev/disk/by-uuid/$(blkid -s UUID -o value "$2")"
}
node realboot-root "$ROOT_LOOP"
[ -z "$BOOT_LOOP" ] || node realboot-boot "$BOOT_LOOP"
mount --move "$dev" /dev

# Mounted from /dev/realboot-*: mountinfo names these devices, and grub-probe finds them there.
mount /dev/realboot-root "$MNT"
mkdir -p "$MNT/boot"
[ -z "$BOOT_LOOP" ] || mount /dev/realboot-boot "$MNT/boot"
mkdir -p "$MNT/boot/grub" "$MNT/usr" "$MNT/etc/grub.d" "$MNT/etc/default" "$MNT/dev" "$MNT/proc" \
    "$MNT/sys" "$MNT/tmp"
for dir in bin sbin lib lib64; do ln -s "usr/$dir" "$MNT/$dir"; done
cp -R "$PAYLOAD/." "$MNT/boot/"
cp "$DEFAULT_GRUB" "$MNT/etc/default/grub"
[ -z "$DEVICE_MAP" ] || cp "$DEVICE_MAP" "$MNT/boot/grub/device.map"

# The host's programs (grub-mkconfig, grub-probe, sh, sed), read-only; the layout's filesystems.
mount --bind /usr "$MNT/usr"
mount -o remount,bind,ro "$MNT/usr"
mount --bind /etc/grub.d "$MNT/etc/grub.d"
mount --rbind /dev "$MNT/dev"
mount -t proc proc "$MNT/proc"
mount --bind /sys "$MNT/sys"

chroot "$MNT" grub-mkconfig -o /boot/grub/grub.cfg

cp "$MNT/boot/grub/grub.cfg" "$OUT/grub.cfg"
# What each filesystem holds, as paths from its own root: what GRUB reads after search --set=root.
root_uuid=$(blkid -s UUID -o value /dev/realboot-root)
(cd "$MNT" && find . -xdev -type f | sed 's|^\.||' | sort > "$OUT/files-$root_uuid.txt")
if [ -n "$BOOT_LOOP" ]; then
    boot_uuid=$(blkid -s UUID -o value /dev/realboot-boot)
    (cd "$MNT/boot" && find . -xdev -type f | sed 's|^\.||' | sort > "$OUT/files-$boot_uuid.txt")
fi
