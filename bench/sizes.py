"""The sizes of each target: the issue's figures, and tiny ones for ``--quick`` (a smoke test only)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.common import MiB


@dataclass(frozen=True)
class Sizes:
    hash_file: int          # target 1
    add_image: int          # target 2
    latency_image: int      # target 3
    latency_runs: int
    tree_files: int         # targets 4, 5, 6
    tree_file_size: int     # target 4: bytes per file of the unchanged tree
    storm_file_size: int    # target 5
    storm_seconds: float
    idle_seconds: float     # target 6
    boom_images: int        # target 7
    boom_image_size: int
    scan_kernels: int       # target 8: kernels, each with an initramfs image and a BLS entry
    scan_kernel_size: int
    scan_initramfs_size: int
    repeat: int             # interleaved repetitions; the best of each side is kept


FULL = Sizes(hash_file=512 * MiB, add_image=256 * MiB, latency_image=64 * MiB, latency_runs=30,
             tree_files=10_000, tree_file_size=256 << 10, storm_file_size=4096, storm_seconds=1.0,
             idle_seconds=60.0, boom_images=200, boom_image_size=1 * MiB, scan_kernels=6,
             scan_kernel_size=11 * MiB, scan_initramfs_size=57 * MiB, repeat=3)

QUICK = Sizes(hash_file=4 * MiB, add_image=2 * MiB, latency_image=1 * MiB, latency_runs=3,
              tree_files=50, tree_file_size=4096, storm_file_size=1024, storm_seconds=0.2,
              idle_seconds=2.0, boom_images=6, boom_image_size=16 << 10, scan_kernels=6,
              scan_kernel_size=64 << 10, scan_initramfs_size=256 << 10, repeat=1)
