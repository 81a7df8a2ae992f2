"""Targets that need the running daemon: 3 (latency), 5 (event storm), 6 (idle cost)."""

from __future__ import annotations

from typing import List

from bench.common import Result
from bench.sizes import Sizes


def target_latency(sizes: Sizes) -> List[Result]:
    raise NotImplementedError("not yet")


def target_storm(sizes: Sizes) -> List[Result]:
    raise NotImplementedError("not yet")


def target_idle(sizes: Sizes) -> List[Result]:
    raise NotImplementedError("not yet")
