"""What the real-systemd tests install in the container: boot tree, unit drop-in, config.

Shared by conftest.py (which installs it) and the tests (which check against it).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from nspawn_wheels import build_wheels

# Where the host's staging directory appears in the container (read-only).
STAGE = "/opt/bootwatch-test"
UNIT = "bootwatch.service"

# The test boot tree: one BLS entry naming a kernel and an initramfs. Contents are fixed so the
# tests know the image ids (SHA1 of the content, as in boom's cache).
KERNEL = b"bootwatch test kernel T\n" * 512
INITRAMFS = b"bootwatch test initramfs T\n" * 1024
ENTRY = "title bootwatch test\nversion T\nlinux /vmlinuz-T\ninitrd /initramfs-T.img\n"

TEST_DROPIN = """\
[Service]
# The shipped 30s would make the watchdog test wait half a minute.
WatchdogSec=5s
# The watchdog test makes systemd SIGABRT the daemon. The container's systemd lifts the core size
# limit, so without this the host's kernel.core_pattern would receive a core dump.
LimitCORE=0
"""

TEST_CONFIG = """\
[paths]
boot = "/boot"
cache = "/var/lib/bootwatch/cache"
"""

# Runs inside the container, as root, with the staging directory (stage_bootwatch) at $stage:
# bootwatch installed the way a user installs it, the unit not started.
INSTALL_BOOTWATCH = r"""
python3 -m venv /opt/bootwatch
PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/bootwatch/bin/pip install --quiet --no-index \
    --find-links "$stage/wheels" bootwatch
ln -s /opt/bootwatch/bin/bootwatch /usr/local/bin/bootwatch
install -m 0644 "$stage/bootwatch.service" /etc/systemd/system/bootwatch.service
install -D -m 0644 "$stage/bootwatch.catalog" /usr/lib/systemd/catalog/bootwatch.catalog
journalctl --update-catalog
install -D -m 0644 "$stage/bootwatch.toml" /etc/bootwatch/bootwatch.toml
"""

# Runs inside the container, as root, with the staging directory mounted at $STAGE.
INSTALL_SCRIPT = r"""
stage=$1
""" + INSTALL_BOOTWATCH + r"""
install -D -m 0644 "$stage/50-test.conf" /etc/systemd/system/bootwatch.service.d/50-test.conf

# /boot is a tmpfs of its own (nspawn --tmpfs), like a separate boot partition.
mkdir -p /boot/loader/entries
install -m 0644 "$stage/boot/vmlinuz-T" "$stage/boot/initramfs-T.img" /boot/
install -m 0644 "$stage/boot/x.conf" /boot/loader/entries/x.conf
systemctl daemon-reload
"""


def stage_bootwatch(repo: Path, stage: Path) -> None:
    """What INSTALL_BOOTWATCH installs: wheels of the tree in *repo*, the shipped unit and catalog,
    the test configuration."""
    build_wheels(repo, stage / "wheels")
    shutil.copy(repo / "contrib/systemd/bootwatch.service", stage / "bootwatch.service")
    shutil.copy(repo / "contrib/systemd/bootwatch.catalog", stage / "bootwatch.catalog")
    (stage / "bootwatch.toml").write_text(TEST_CONFIG)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()
