# Sourced by tests/realboot/kernel-install-chroot.sh (its STEPS) for test_hooks_kernel_install.py:
# the real kernel-install with contrib/kernel-install/95-bootwatch.install in the chroot's
# /etc/kernel/install.d, and no bootwatch daemon running.
#
# Environment, besides the chroot script's:
#   PLUGIN          the plugin to install
#   PYTHON          the interpreter that runs bootwatch, and REPO_ROOT the checkout it imports
#   HOST_DIRS       directories of the host bound read-only at the same place in the chroot (the
#                   interpreter's installation and the checkout)
#   SNAPSHOT_PATHS  the prefix of the snapshot entry's paths: "" (/boot its own filesystem) or "/boot"
#
# Steps (VERSIONS is "OLD NEW"); after each, what bootwatch lists goes to $OUT/<step>.json:
#   add          kernel-install add OLD, then NEW
#   snapshot     a snapshot's entry naming OLD's vmlinuz and initrd.img as the package installed
#                them, then 'bootwatch scan --quiet' (what the daemon would do)
#   remove       the package's files of OLD deleted (dpkg, then initramfs-tools' postrm hook), then
#                kernel-install remove OLD (as Debian's zz-systemd-boot hook runs it)
#   later-scan   'bootwatch scan --quiet': the daemon's decision once the transaction has ended
#   clean        'bootwatch clean'

# shellcheck shell=sh disable=SC2154
set -- $VERSIONS
old="$1"
new="$2"

# bootwatch installed as the README's quick start installs it: /usr/local/bin/bootwatch, with its
# embedded defaults (/boot, /var/lib/bootwatch/cache).
for dir in $HOST_DIRS; do
    mkdir -p "$MNT$dir"
    mount --bind "$dir" "$MNT$dir"
    mount -o remount,bind,ro "$MNT$dir"
done
mount -t tmpfs -o mode=0755 tmpfs "$MNT/usr/local"
mkdir -p "$MNT/usr/local/bin" "$MNT/run" "$MNT/var/lib" "$MNT/etc/kernel/install.d"
printf '#!/bin/sh\nPYTHONPATH=%s PYTHONDONTWRITEBYTECODE=1 exec %s -m bootwatch "$@"\n' "$REPO_ROOT" "$PYTHON" \
    > "$MNT/usr/local/bin/bootwatch"
chmod 0755 "$MNT/usr/local/bin/bootwatch"
install -m 0755 "$PLUGIN" "$MNT/etc/kernel/install.d/"

bw() {
    chroot "$MNT" env PATH=/usr/local/bin:/usr/bin:/bin bootwatch "$@"
}
record() {
    ls -1 "$MNT$BOOT_ROOT/loader/entries" > "$OUT/$1.entries"
    cp -R "$MNT$BOOT_ROOT/loader/entries" "$OUT/$1.entries.d"
    bw list --json > "$OUT/$1.json"
}

for version in "$old" "$new"; do
    ki add "$version" "/boot/vmlinuz-$version" >> "$OUT/kernel-install.log" 2>&1
done
record add

cat > "$MNT$BOOT_ROOT/loader/entries/snapshot.conf" <<EOF
title Snapshot of $old
version $old
linux $SNAPSHOT_PATHS/vmlinuz-$old
initrd $SNAPSHOT_PATHS/initrd.img-$old
EOF
bw scan --quiet 2> "$OUT/snapshot.err"
record snapshot

rm "$MNT/boot/vmlinuz-$old" "$MNT/boot/initrd.img-$old"
ki remove "$old" >> "$OUT/kernel-install.log" 2>&1
record remove

bw scan --quiet 2> "$OUT/later-scan.err"
record later-scan

bw clean > "$OUT/clean.out" 2>&1
record clean
