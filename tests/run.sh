#!/bin/bash
# Install everything the test suite needs on a fresh Debian 12 machine, then run it.
#   sudo tests/run.sh [PYTEST ARGS...]
# As root: the loop-device, mount, chown and systemd-nspawn tests run for real (they skip without root).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    python3 python3-venv python3-dev build-essential      # the venv; a compiler for dbus-python
    libdbus-1-dev libglib2.0-dev pkg-config               # boom-boot's dbus-python build
    util-linux e2fsprogs dosfstools mtools squashfs-tools xorriso erofs-utils  # filesystem images
    cpio gzip xz-utils bzip2 zstd lz4                     # initramfs chains
    systemd systemd-container mmdebstrap                  # systemd-analyze, the real-systemd test
    prometheus-node-exporter                              # the metrics scrape test
    strace                                                # which flags bootwatch opens temp files with
    grub2-common grub-pc-bin                              # the real grub-mkconfig for the grub.cfg parser's tests
    systemd-boot-efi binutils                             # a real UKI: the systemd-boot stub and objcopy
    aide                                                  # the baseline of benchmark row 8 (bootwatch scan vs aide --check)
    qemu-system-x86 initramfs-tools busybox-static        # bootwatch prove: the VM, a real mkinitramfs image, a busybox one
    man-db groff-base bash                                # the generated man pages read with man, the completion run in bash
    dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian  # contrib/package deb, checked
    rpm python3-pip                                       # contrib/package rpm (rpmbuild; the spec installs with pip)
)

if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
    # Debian starts the exporter on :9100 after installing it; the test runs its own on a free port.
    systemctl disable --now prometheus-node-exporter >/dev/null 2>&1 || true
    # Without systemd as PID 1 nothing can stop it; a leftover would only occupy port 9100.
    export BOOTWATCH_REQUIRE_NSPAWN=${BOOTWATCH_REQUIRE_NSPAWN:-1}
else
    echo "tests/run.sh: not root: assuming the apt packages are installed; root-only tests will skip" >&2
fi

VENV=${BOOTWATCH_TEST_VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test,dev]'

# The static checks first: they take seconds where the suite takes minutes, and need neither root
# nor the apt packages, so a broken layer or type fails CI at once. Their rules live in
# pyproject.toml (ruff's rule set, mypy's settings, the import-linter contracts).
"$VENV/bin/ruff" check bootwatch tests bench contrib/docgen contrib/package
"$VENV/bin/mypy" --strict bootwatch
"$VENV/bin/mypy" --strict contrib/docgen              # the man page and completion generator (not installed)
"$VENV/bin/mypy" --strict contrib/package             # the package builder
"$VENV/bin/lint-imports"
"$VENV/bin/python" -m pytest tests -ra "$@"
# The daemon's tests again, with Debian 12's watchdog, APScheduler and sdnotify (what the .deb
# depends on) instead of pip's newest. BOOTWATCH_SKIP_DEBIAN_VERSIONS=1 skips it.
if [ "${BOOTWATCH_SKIP_DEBIAN_VERSIONS:-0}" != 1 ]; then
    tests/debian-versions.sh -q
fi
