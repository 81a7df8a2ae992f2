"""The boot proof metrics: read from the proof store for the entries of the inventory, so a proof
made by hand shows up as one made by the daemon's job; parsed back with test_metrics' strict reader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from test_metrics import parse_exposition

from bootwatch.daemon.metrics import Metrics, proof_samples
from bootwatch.prove.proof import Proof, ProofStore, Verdict, entry_files

BootTree = Any  # the boot_tree fixture of conftest

ODD = 'we"ird\\name.conf'  # a BLS entry's id is its file name: quotes and backslashes are allowed


def _prove(cache: Any, runtime: Path, name: str, verdict: Verdict, started: float) -> None:
    """Store a proof as 'bootwatch prove' does, of the entry's files as they are now."""
    inventory = cache.read_inventory()
    entry = next(e for e in inventory.entries if e.id == name)
    ProofStore(runtime).save(entry, Proof(entry.id, entry.source.value, verdict, "why", started=started,
                                          files=entry_files(inventory, entry) or ()), b"console\n")


def test_the_time_and_verdict_of_each_entrys_proof(boot_tree: BootTree) -> None:
    tree = boot_tree
    for version in ("1", "2", "3", "4"):
        tree.write_kernel(version)
    tree.write_entry("passed", linux="/vmlinuz-1", initrd=["/initramfs-1.img"])
    tree.write_entry("failed", linux="/vmlinuz-2", initrd=["/initramfs-2.img"])
    tree.write_entry("replaced", linux="/vmlinuz-3", initrd=["/initramfs-3.img"])
    tree.write_entry(ODD, linux="/vmlinuz-4")
    tree.write_entry("never", linux="/vmlinuz-4")
    tree.write_entry("latin", linux="/vmlinuz-4")
    os.rename(tree.entries / "latin.conf", os.fsencode(tree.entries) + b"/latin1-\xe9.conf")  # not UTF-8
    runtime = tree.root / "run"
    from bootwatch.cache.operations import BootCache
    cache = BootCache(tree.boot, tree.entries, tree.cache, runtime_dir=runtime)
    cache.add(["/vmlinuz-1"])  # a cache for the rest of the metrics to read
    _prove(cache, runtime, "passed.conf", Verdict.PASSED, 1000.5)
    _prove(cache, runtime, "failed.conf", Verdict.FAILED, 2000.0)
    _prove(cache, runtime, "replaced.conf", Verdict.FAILED, 3000.0)
    _prove(cache, runtime, ODD, Verdict.NOT_RUN, 4000.0)
    _prove(cache, runtime, "latin1-\udce9.conf", Verdict.PASSED, 5000.0)
    tree.write_file("/initramfs-3.img")  # rebuilt since its proof: that proof says nothing of it now

    text = Metrics(tree.root / "m.prom").render(cache, proofs=proof_samples(ProofStore(runtime),
                                                                            cache.read_inventory()))
    samples, types = parse_exposition(text)

    def value(name: str, entry: str) -> float | None:
        return samples.get((f"bootwatch_{name}", frozenset({("entry", entry)})))

    assert types["bootwatch_entry_last_proof_timestamp_seconds"] == types["bootwatch_entry_proof_passed"] == "gauge"
    assert value("entry_last_proof_timestamp_seconds", "bls:passed.conf") == 1000.5
    assert value("entry_last_proof_timestamp_seconds", "bls:replaced.conf") == 3000.0
    assert value("entry_last_proof_timestamp_seconds", f"bls:{ODD}") == 4000.0
    assert 'entry="bls:we\\"ird\\\\name.conf"' in text
    # An undecodable byte of a file name is written as \xNN (the label value must be UTF-8).
    assert value("entry_last_proof_timestamp_seconds", "bls:latin1-\\xe9.conf") == 5000.0
    assert value("entry_last_proof_timestamp_seconds", "bls:never.conf") is None
    assert value("entry_proof_passed", "bls:passed.conf") == 1
    assert value("entry_proof_passed", "bls:failed.conf") == 0
    # Not run, or of files since replaced: no verdict to show.
    assert value("entry_proof_passed", "bls:replaced.conf") is None
    assert value("entry_proof_passed", f"bls:{ODD}") is None
    # An entry removed since has no sample, though its proof stays in the store.
    tree.remove_entry("failed")
    text = Metrics(tree.root / "m.prom").render(cache, proofs=proof_samples(ProofStore(runtime),
                                                                            cache.read_inventory()))
    assert "bls:failed.conf" not in text
