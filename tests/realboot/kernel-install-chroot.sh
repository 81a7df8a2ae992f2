#!/bin/sh
# Run the real kernel-install (Debian 12's systemd) with layout=bls for a boot layout on loop
# devices (see README.md beside this file).
#
# Must run as root inside a private mount namespace (unshare --mount --propagation private):
# every mount made here disappears with the namespace.
#
# Environment:
#   ROOT_LOOP   the loop device holding the root filesystem (ext4)
#   BOOT_LOOP   the loop device holding a separate /boot (ext4), or empty
#   ESP_LOOP    the loop device holding an ESP mounted at /efi, or empty (ext4, not vfat: the kernels
#               these tests run on may lack a vfat driver, and kernel-install never asks the type)
#   BOOT_ROOT   kernel-install's $BOOT: /boot or /efi
#   MNT         an empty directory to mount the root filesystem on
#   PAYLOAD     a directory whose contents go into /boot (vmlinuz-V, initrd.img-V as Debian's packages put them)
#   VERSIONS    the kernel versions to add, in order
#   MACHINE_ID  the machine id (written to /etc/machine-id)
#   TRIES       if set, written to /etc/kernel/tries (boot counting)
#   OUT         where the listings of each filesystem are written
#   STEPS       if set, a script sourced instead of adding VERSIONS one by one: it runs with this
#               environment once the filesystems are mounted, and may call "ki COMMAND ARGS...", which
#               runs kernel-install in the chroot (tests/integration/hooks-kernel-install-steps.sh)
set -eu

mount "$ROOT_LOOP" "$MNT"
mkdir -p "$MNT/boot"
[ -z "$BOOT_LOOP" ] || mount "$BOOT_LOOP" "$MNT/boot"
if [ -n "$ESP_LOOP" ]; then
    mkdir -p "$MNT/efi"
    mount "$ESP_LOOP" "$MNT/efi"
fi
mkdir -p "$MNT/usr" "$MNT/etc/kernel" "$MNT/dev" "$MNT/proc" "$MNT/sys" "$MNT/tmp" "$MNT/var/tmp"
for dir in bin sbin lib lib64; do ln -s "usr/$dir" "$MNT/$dir"; done
cp -R "$PAYLOAD/." "$MNT/boot/"
cp /usr/lib/os-release "$MNT/etc/os-release"
echo "$MACHINE_ID" > "$MNT/etc/machine-id"
echo "layout=bls" > "$MNT/etc/kernel/install.conf"
echo "root=UUID=$(blkid -c /dev/null -s UUID -o value "$ROOT_LOOP") ro quiet" > "$MNT/etc/kernel/cmdline"
[ -z "${TRIES:-}" ] || echo "$TRIES" > "$MNT/etc/kernel/tries"

# The host's programs (kernel-install and its plugins, sh, install), read-only.
mount --bind /usr "$MNT/usr"
mount -o remount,bind,ro "$MNT/usr"
mount -t proc proc "$MNT/proc"
mount --bind /sys "$MNT/sys"
mount --rbind /dev "$MNT/dev"

# BOOT_ROOT from the environment (kernel-install's "settable via environment"); the entry token
# is the machine id (no /etc/kernel/entry-token), kernel-install's default.
ki() {
    chroot "$MNT" env BOOT_ROOT="$BOOT_ROOT" kernel-install --verbose "$@"
}
mkdir -p "$MNT$BOOT_ROOT/$MACHINE_ID"
if [ -n "${STEPS:-}" ]; then
    . "$STEPS"
else
    for version in $VERSIONS; do
        ki add "$version" "/boot/vmlinuz-$version"
    done
fi

# What each filesystem holds, as paths from its own root.
(cd "$MNT" && find . -xdev -type f | sed 's|^\.||' | sort > "$OUT/files-root.txt")
[ -z "$BOOT_LOOP" ] || (cd "$MNT/boot" && find . -xdev -type f | sed 's|^\.||' | sort > "$OUT/files-boot.txt")
[ -z "$ESP_LOOP" ] || (cd "$MNT/efi" && find . -xdev -type f | sed 's|^\.||' | sort > "$OUT/files-esp.txt")
# The filesystems' contents as they are, for the reader to read after the namespace is gone.
mkdir -p "$OUT/root" && (cd "$MNT" && tar --one-file-system --exclude=./usr -cf - .) | (cd "$OUT/root" && tar -xf -)
[ -z "$BOOT_LOOP" ] || { mkdir -p "$OUT/boot" && (cd "$MNT/boot" && tar --one-file-system -cf - .) | (cd "$OUT/boot" && tar -xf -); }
[ -z "$ESP_LOOP" ] || { mkdir -p "$OUT/esp" && (cd "$MNT/efi" && tar -cf - .) | (cd "$OUT/esp" && tar -xf -); }
