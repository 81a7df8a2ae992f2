"""Wheels of bootwatch and its dependencies, built on the host for the container's Python.

pip inside the container cannot reach PyPI (no network there, and the TLS interception CA of
these machines is not in the container's trust store), so everything is built on the host and
installed offline in the container. The container's python3 is Debian bookworm's 3.11. Some
dependencies exist only as sdists (sdnotify), so ``pip download --python-version`` cannot fetch
for a foreign interpreter; the wheels are built by the host's pip instead, and every wheel's tag
is checked: a compiled wheel for another CPython would only fail later, inside the container,
with a much less clear message.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CONTAINER_PYTHON_TAGS = ("py3", "py2.py3", "cp311")


# Not part of the package; copying them would only slow the build down.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", "tests", "bench")


def build_wheels(source: Path, dest: Path) -> list[Path]:
    """Build wheels of the project in *source* and of all its dependencies into *dest*."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bootwatch-src-") as tmp:
        # setuptools leaves build/ and *.egg-info in the tree it builds, and reuses a stale
        # build/lib; building a private copy keeps the shared working tree clean and the wheel
        # exactly what the tree holds now.
        copy = Path(tmp) / "src"
        shutil.copytree(source, copy, ignore=_NOT_SOURCE, symlinks=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                               "wheel", "--quiet", "--wheel-dir", str(dest), str(copy)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip wheel {source} failed with {proc.returncode}:\n"
                           f"{proc.stdout}{proc.stderr}")
    wheels = sorted(dest.glob("*.whl"))
    # Wheel file names are name-version(-build)?-python-abi-platform.whl (PEP 427).
    foreign = [w.name for w in wheels if w.stem.split("-")[-3] not in CONTAINER_PYTHON_TAGS]
    if foreign:
        raise RuntimeError(f"wheels not installable by the container's CPython 3.11: "
                           f"{', '.join(foreign)} (run the tests with a Python 3.11 venv)")
    return wheels
