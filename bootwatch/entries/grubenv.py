"""GRUB's environment block (``grubenv``): the variables ``load_env`` gives a ``grub.cfg`` and BLS entries.

The format is GRUB's ``grub-core/lib/envblk.c``, as ``grub-editenv`` writes it: the signature line
``# GRUB Environment Block``, then ``name=value`` lines, the rest of the block padded with ``#``
to 1024 bytes. Lines that start with ``#`` are comments (``grub-editenv`` writes a warning line
and the padding). In a value, a backslash escapes the next byte: ``\\\\`` is a backslash and a
backslash before a newline keeps the newline in the value.

RHEL 8 and Fedora keep ``kernelopts``, ``tuned_params`` and ``tuned_initrd`` here, which BLS
entries name as ``$kernelopts`` and ``$tuned_initrd``; Debian keeps ``saved_entry``,
``next_entry`` and ``recordfail``.

The file is untrusted: it is read through :func:`bootwatch.safety.read_regular` (``O_NONBLOCK``,
``S_ISREG`` on the descriptor, bounded). A block that is missing is known to be empty; one that
cannot be read, is larger than :data:`MAX_GRUBENV_SIZE` or lacks the signature is *unknown*:
GRUB's ``load_env`` ignores a block without the signature too, but a file bootwatch cannot
judge is not taken as one that defines nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bootwatch.errors import FileTooLargeError, NotRegularFileError
from bootwatch.safety import read_regular

SIGNATURE = b"# GRUB Environment Block\n"
BLOCK_SIZE = 1024
"""The size ``grub-editenv create`` gives the block (GRUB's ``DEFAULT_ENVBLK_SIZE``)."""
MAX_GRUBENV_SIZE = 64 * 1024
"""A real block is 1024 bytes; a larger file is refused as no environment block bootwatch should trust."""


@dataclass(frozen=True)
class GrubEnv:
    """The variables of one environment block, or unknown with the reason.

    ``unknown`` is None when ``values`` is the whole truth (an absent block defines nothing).
    """

    path: Path
    values: Mapping[str, str] = field(default_factory=dict)
    unknown: str | None = None

    def get(self, name: str) -> str | None:
        return self.values.get(name)


class GrubEnvFormatError(ValueError):
    """The bytes are not a GRUB environment block."""


def parse_grubenv(data: bytes) -> dict[str, str]:
    """The ``name=value`` pairs of an environment block; :class:`GrubEnvFormatError` if it has no signature.

    As GRUB's ``grub_envblk_iterate``: comment lines (``#``) and lines without ``=`` are skipped;
    the name is what precedes the first ``=``; a backslash keeps the byte after it, a newline
    among them. Later definitions of a name win, as ``load_env`` sets them in order. Bytes that
    are not UTF-8 are replaced (GRUB's variables are byte strings; bootwatch compares paths as text).
    """
    if not data.startswith(SIGNATURE):
        raise GrubEnvFormatError("it does not start with the signature '# GRUB Environment Block'")
    values: dict[str, str] = {}
    for raw in _logical_lines(data[len(SIGNATURE):]):
        if not raw or raw.startswith(b"#"):
            continue
        name, sep, value = raw.partition(b"=")
        if not sep or not name:
            continue
        values[name.decode("utf-8", errors="replace")] = value.decode("utf-8", errors="replace")
    return values


def _logical_lines(body: bytes) -> list[bytes]:
    """Split at newlines that no backslash escapes, removing the escapes."""
    lines: list[bytes] = []
    current = bytearray()
    i = 0
    while i < len(body):
        byte = body[i]
        if byte == 0x5C and i + 1 < len(body):  # backslash: the next byte as it is
            current.append(body[i + 1])
            i += 2
            continue
        if byte == 0x0A:
            lines.append(bytes(current))
            current.clear()
        else:
            current.append(byte)
        i += 1
    if current:
        lines.append(bytes(current))
    return lines


def read_grubenv(path: Path) -> GrubEnv:
    """Read the environment block at ``path`` (see the module docstring for what is unknown)."""
    try:
        data = read_regular(path, follow_symlinks=True, limit=MAX_GRUBENV_SIZE)
    except FileNotFoundError:
        if os.path.lexists(path):
            return GrubEnv(path, unknown=f"{path}: the GRUB environment block is a dangling symlink")
        return GrubEnv(path)
    except FileTooLargeError:
        return GrubEnv(path, unknown=f"{path}: larger than {MAX_GRUBENV_SIZE} bytes, not a GRUB environment "
                                     "block bootwatch reads")
    except NotRegularFileError as e:
        return GrubEnv(path, unknown=f"{path}: {e.strerror}; not a GRUB environment block")
    except OSError as e:
        return GrubEnv(path, unknown=f"{path}: the GRUB environment block cannot be read "
                                     f"({os.strerror(e.errno).lower() if e.errno else e})")
    try:
        return GrubEnv(path, parse_grubenv(data))
    except GrubEnvFormatError as e:
        return GrubEnv(path, unknown=f"{path}: not a GRUB environment block: {e}")
