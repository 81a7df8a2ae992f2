"""``bootwatch prove ENTRY...``: boot entries' own kernel and initramfs in a throwaway QEMU VM.

ENTRY is an id as ``bootwatch entries`` shows it; when two sources hold the same id,
``SOURCE:ID`` (``bls:...``, ``grub:...``, ``uki:...``) names one. ``--all`` proves every entry.
Each result and console log is kept in ``<runtime>/proofs`` (see :mod:`bootwatch.prove.proof`).

Exit codes: 0 when no proof failed (passed, or not run: qemu missing, another architecture), 1
when one failed (each is named with its reason and the console lines that show it) or, with
``--all``, when an entry source could not be read (its readable entries are proved all the same),
2 for an unknown entry. Progress (the count and the entry being proved) is one line on stderr, written
over in place and cleared, and only when stderr is a terminal. SIGTERM ends the run
like Ctrl-C: the running VM is killed and reaped first.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

from bootwatch.cache.operations import BootCache
from bootwatch.cli.output import Progress, print_json
from bootwatch.config import Config
from bootwatch.entries.inventory import Inventory
from bootwatch.entries.model import Entry
from bootwatch.errors import EXIT_FAILURE, EXIT_OK, UsageError, printable
from bootwatch.prove.proof import Proof, ProofStore, Verdict, prove_entry
from bootwatch.prove.vm import AccelChoice, VmLimits, qemu_path


def select_entries(inventory: Inventory, names: Sequence[str], everything: bool) -> list[Entry]:
    entries = list(inventory.entries)
    if everything:
        return entries
    if not names:
        raise UsageError("name the entries to prove (ids as 'bootwatch entries' shows them), or --all")
    chosen: list[Entry] = []
    for name in names:
        matches = [e for e in entries if e.id == name]
        if not matches and ":" in name:
            source, _, ident = name.partition(":")
            matches = [e for e in entries if e.source.value == source and e.id == ident]
        if not matches:
            hint = "'bootwatch entries' lists the ids"
            if inventory.unknown is not None:
                hint += f"; not every source could be read: {inventory.unknown}"
            raise UsageError(f"no boot entry {name!r}", hint=hint)
        if len(matches) > 1:
            raise UsageError(f"{len(matches)} boot entries have the id {name!r}",
                             hint=" or ".join(f"{e.source.value}:{e.id}" for e in matches))
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """SIGTERM raises SystemExit(143), so that the VM's cleanup runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print(proof: Proof) -> None:
    where = f" [{proof.accel}, {proof.seconds:.1f} s]" if proof.accel else ""
    print(f"{proof.verdict.value.upper()}: {printable(proof.entry_id)} ({proof.source}){where}: "
          f"{printable(proof.reason)}")
    if proof.verdict is Verdict.FAILED:
        for line in proof.evidence:
            print(f"    {printable(line)}")
    if proof.log:
        print(f"    console log: {proof.log}")


def command_prove(args: argparse.Namespace, config: Config) -> int:
    cache = BootCache.from_config(config)
    inventory = cache.read_inventory()
    entries = select_entries(inventory, args.entries, args.all)
    qemu = qemu_path(os.environ.get("PATH"))
    # The command line's bounds, else the configuration's ([prove]): one set of defaults.
    limits = VmLimits(timeout=args.timeout or config.prove.timeout, memory_mib=args.memory or config.prove.memory)
    accel = AccelChoice(args.accel) if args.accel else config.prove.accel
    store = ProofStore(config.paths.runtime)
    store.check()
    proofs: list[Proof] = []
    with sigterm_exits(), Progress() as progress:
        for n, entry in enumerate(entries, 1):
            progress.show(f"proving {n}/{len(entries)}: {entry.id} ({entry.source.value}) ...")
            proof, console = prove_entry(inventory, entry, qemu=qemu, accel=accel, limits=limits)
            proof = store.save(entry, proof, console)
            proofs.append(proof)
            if not args.json:
                progress.clear()  # stdout and stderr may be the same terminal
                _print(proof)
                sys.stdout.flush()
    if args.json:
        print_json([p.to_json() for p in proofs])
    if args.all and not entries and inventory.unknown is None:
        print("bootwatch: no boot entries to prove", file=sys.stderr)
    failed = [p for p in proofs if p.verdict is Verdict.FAILED]
    if failed:
        print(f"bootwatch: {len(failed)} of {len(proofs)} proofs failed: "
              + ", ".join(printable(p.entry_id) for p in failed), file=sys.stderr)
    if args.all and inventory.unknown is not None:
        # Unknown is not none: the entries of a source that could not be read were not proved.
        print(f"bootwatch: not every entry could be proved: {printable(inventory.unknown)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_FAILURE if failed else EXIT_OK
