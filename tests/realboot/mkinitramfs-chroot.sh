#!/bin/bash
# Build an initramfs with Debian's own mkinitramfs (initramfs-tools) for a kernel package that is
# not installed: in a chroot whose /usr is an overlay of the host's /usr (read-only below a tmpfs)
# with the package's /lib/modules/<version> and /boot/config-<version> added.
# Must run as root inside a private mount namespace (unshare --mount --propagation private):
# every mount made here disappears with the namespace, and nothing of the host's is written.
#   mkinitramfs-chroot.sh DEB OUT WORK
#     DEB   the linux-image-*.deb
#     OUT   where the initramfs goes
#     WORK  an empty directory (a tmpfs is mounted on it)
# $MODULES (optional, space-separated): modules added to /etc/initramfs-tools/modules (a copy, given
# to mkinitramfs with -d), which the initramfs's /init loads with modprobe before it looks for root.
set -euo pipefail
DEB=$1; OUT=$2; W=$3
mount -t tmpfs -o size=2g,mode=0755 tmpfs "$W"
mkdir -p "$W"/upper "$W"/ovwork "$W"/stage "$W"/root/{usr,etc,proc,sys,dev,tmp,var/tmp,boot,out}
for l in bin sbin lib lib64; do ln -s "usr/$l" "$W/root/$l"; done
mount -t overlay overlay -o lowerdir=/usr,upperdir="$W"/upper,workdir="$W"/ovwork "$W"/root/usr
mount --bind /etc "$W"/root/etc
mount -o remount,bind,ro "$W"/root/etc
dpkg-deb -x "$DEB" "$W"/stage
mv "$W"/stage/lib/modules "$W"/root/usr/lib/modules
cp "$W"/stage/boot/config-* "$W"/root/boot/
mount -t proc proc "$W"/root/proc
mount --rbind /dev "$W"/root/dev
version=$(ls "$W"/root/usr/lib/modules)
conf=/etc/initramfs-tools
if [ -n "${MODULES:-}" ]; then
    cp -a /etc/initramfs-tools "$W"/root/tmp/conf
    printf '%s\n' $MODULES >> "$W"/root/tmp/conf/modules
    conf=/tmp/conf
fi
chroot "$W"/root mkinitramfs -d "$conf" -o /out/initrd.img "$version"
cp "$W"/root/out/initrd.img "$OUT"
