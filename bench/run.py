#!/usr/bin/env python3
"""Measure bootwatch against its baselines, in one run, and print one table.

    python bench/run.py                    # the issue's sizes (about 10 minutes on 2 cores)
    python bench/run.py --quick            # tiny sizes: a smoke test, the figures mean nothing
    python bench/run.py --json out.json    # also write the table as JSON ("-" for stdout)
    python bench/run.py --only 1,2         # a subset of the targets

Each row: the target, bootwatch's figure, the baseline's figure from the same run, their ratio
and whether the target is met. A missed target is printed as FAIL with the figures measured.
Everything runs in temp directories under $TMPDIR; nothing needs root. The one thing written in
the repository is bootwatch's bytecode (bootwatch/__pycache__, ignored by git): it is compiled
first, as an install compiles it, so that no timed command compiles its own source.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

# Run as a script: make the repository (bootwatch and bench) importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cache_targets, daemon_targets, health_target, prove_target  # noqa: E402
from bench.common import Result, compile_bootwatch, format_table, machine  # noqa: E402
from bench.sizes import FULL, QUICK, Sizes  # noqa: E402

# Targets 5 and 6 share one daemon: the idle cost is measured with the storm's 10,000 files tracked.
TARGETS: list[tuple[tuple[str, ...], Callable[[Sizes], list[Result]]]] = [
    (("1",), cache_targets.target_hashing),
    (("2",), cache_targets.target_add),
    (("3",), daemon_targets.target_latency),
    (("4",), cache_targets.target_reconcile),
    (("5", "6"), daemon_targets.target_storm_and_idle),
    (("7",), cache_targets.target_boom),
    (("8",), cache_targets.target_scan_vs_aide),
    (("9",), prove_target.target_prove),
    (("10",), health_target.target_health_recheck),
]
ALL_IDS = [i for ids, _ in TARGETS for i in ids]


def figure(value: object, unit: str) -> str:
    if value is None:
        return "-"
    assert isinstance(value, (int, float))
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "MiB/s":
        return f"{value:.0f} MiB/s"
    return f"{value:.3g} {unit}"


def render(results: Sequence[Result], info: dict[str, str]) -> str:
    rows = [(r.target, r.what, figure(r.bootwatch, r.unit), figure(r.baseline, r.unit),
             "-" if r.ratio is None else f"{r.ratio:.3f}", r.rule, "pass" if r.passed else "FAIL")
            for r in results]
    table = format_table(("#", "what", "bootwatch", "baseline", "ratio", "target", "result"), rows)
    notes = [f"- {r.target}: {note}" for r in results for note in r.notes]
    line = ", ".join(f"{k} {v}" for k, v in info.items())
    return "\n".join([f"Machine: {line}", "", table, "", "Notes:", *notes])


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--json", metavar="FILE", help='also write the results as JSON to FILE ("-": stdout)')
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--only", metavar="LIST", help="comma-separated targets to run (default: all)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    selected = args.only.split(",") if args.only else ALL_IDS
    unknown = [t for t in selected if t not in ALL_IDS]
    if unknown:
        parser.error(f"unknown target(s): {', '.join(unknown)}")

    compile_bootwatch()
    info = machine()
    results: list[Result] = []
    started = time.monotonic()
    for ids, run in TARGETS:
        if not set(ids) & set(selected):
            continue
        target = "+".join(ids)
        t0 = time.monotonic()
        try:
            rows = run(sizes)
        except Exception as e:  # a target that cannot run is a FAIL row, not a lost table
            traceback.print_exc(file=sys.stderr)
            rows = [Result(target, f"did not run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                           0.0, None, "s", None, "-", False)]
        print(f"target {target}: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
        results.extend(rows)
    text = render(results, info)
    print(text)
    print(f"\n{sum(r.passed for r in results)} of {len(results)} rows pass; "
          f"the run took {time.monotonic() - started:.0f} s{' (--quick)' if args.quick else ''}.")
    if args.json:
        data = {"machine": info, "quick": args.quick, "results": [r.to_json() for r in results]}
        if args.json == "-":
            json.dump(data, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 1 if args.check and not all(r.passed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
