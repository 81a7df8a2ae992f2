"""The base of bootwatch's enums whose members are written as text.

A member of a :class:`TextEnum` is a ``str`` equal to its value: ``json.dumps``, ``%s``, f-strings
and ``str()`` all write the value, so the ``--json`` output, the status file, the journal fields
and boom's state names stay the very text that string literals gave, and a value read back
compares equal to its member.
"""

from __future__ import annotations

import enum


class TextEnum(str, enum.Enum):
    """A ``str``-valued enum that is written as its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)
