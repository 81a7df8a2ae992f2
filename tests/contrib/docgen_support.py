"""contrib/docgen imported from this tree (it is no installed package), and its output generated
the way a package build generates it: by running contrib/generate-docs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

GENERATOR = REPO_ROOT / "contrib" / "generate-docs"
if str(REPO_ROOT / "contrib") not in sys.path:
    sys.path.insert(0, str(REPO_ROOT / "contrib"))

import docgen  # noqa: E402
from docgen.commandline import CommandLine, read_command_line  # noqa: E402

__all__ = ["GENERATOR", "CommandLine", "docgen", "generate_into", "read_command_line", "require_tool"]


def generate_into(outdir: Path) -> dict[str, Path]:
    """Run contrib/generate-docs OUTDIR as a package build does; the files it wrote, by name.

    Without site-packages (-S, from Python 3.11 where tomllib is in the standard library): the
    build needs none of bootwatch's dependencies, only Python and the source tree."""
    isolation = ["-I", "-S"] if sys.version_info >= (3, 11) else ["-I"]
    proc = subprocess.run([sys.executable, *isolation, str(GENERATOR), str(outdir)], capture_output=True, text=True,
                          timeout=60, cwd=outdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    written = {Path(line).name: Path(line) for line in proc.stdout.splitlines()}
    assert set(written) == {"bootwatch.8", "bootwatch.toml.5", "bootwatch"}, proc.stdout
    return written


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is missing: tests/run.sh installs the apt package {package}")
    return path
