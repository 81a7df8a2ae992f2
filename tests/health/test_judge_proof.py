"""The proof finding of entry health: a stored boot proof that failed for the files an entry
names now makes it BROKEN; a passed proof, or one of files since replaced, adds nothing.

The proofs are stored as ``bootwatch prove`` stores them (:class:`ProofStore`), with the stat
signatures of the files they booted; no VM is needed to judge them."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from bootwatch.health.facts import FactsMemo
from bootwatch.health.judge import check_host
from bootwatch.health.model import Check, EntryHealth, EntryState
from bootwatch.prove.proof import Proof, ProofStore, Verdict, entry_files

BootTree = Any  # the boot_tree fixture of conftest


def _setup(tree: BootTree) -> tuple[Any, Path]:
    from bootwatch.cache.operations import BootCache
    tree.write_kernel("6.1")
    tree.write_entry("one", linux="/vmlinuz-6.1", initrd=["/initramfs-6.1.img"])
    runtime = tree.root / "run"
    return BootCache(tree.boot, tree.entries, tree.cache, runtime_dir=runtime), runtime


def _store(cache: Any, runtime: Path, verdict: Verdict) -> Proof:
    inventory = cache.read_inventory()
    (entry,) = inventory.entries
    proof = Proof(entry.id, entry.source.value, verdict, "the initramfs could not be unpacked",
                  ("Initramfs unpacking failed: read error",), files=entry_files(inventory, entry) or ())
    return ProofStore(runtime).save(entry, proof, b"Initramfs unpacking failed: read error\n")


def _health(cache: Any, runtime: Path) -> EntryHealth:
    inventory = cache.read_inventory()
    (health,) = check_host(cache, inventory, FactsMemo(runtime)).all()
    return health


def _proof_findings(health: EntryHealth) -> list[Any]:
    return [f for f in health.findings if f.check is Check.PROOF]


def test_a_failed_proof_of_the_current_files_is_broken(boot_tree: BootTree) -> None:
    cache, runtime = _setup(boot_tree)
    stored = _store(cache, runtime, Verdict.FAILED)
    health = _health(cache, runtime)
    (finding,) = _proof_findings(health)
    assert health.state is EntryState.BROKEN and finding.state is EntryState.BROKEN
    assert "boot proof of" in finding.message and "failed: the initramfs could not be unpacked" in finding.message
    assert finding.path == stored.log and stored.log is not None and Path(stored.log).is_file()


def test_a_passed_proof_adds_nothing(boot_tree: BootTree) -> None:
    cache, runtime = _setup(boot_tree)
    _store(cache, runtime, Verdict.PASSED)
    assert _proof_findings(_health(cache, runtime)) == []


def test_a_new_initramfs_does_not_inherit_the_old_failure(boot_tree: BootTree) -> None:
    cache, runtime = _setup(boot_tree)
    _store(cache, runtime, Verdict.FAILED)
    boot_tree.write_file("/initramfs-6.1.img")  # update-initramfs: the same path, a new file
    assert _proof_findings(_health(cache, runtime)) == []


def test_a_proof_without_file_signatures_or_unreadable_says_nothing(boot_tree: BootTree) -> None:
    cache, runtime = _setup(boot_tree)
    stored = _store(cache, runtime, Verdict.FAILED)
    (entry,) = cache.read_inventory().entries
    result = ProofStore(runtime).result_path(entry)
    data = json.loads(result.read_text())
    assert data["files"] and [f["path"] for f in data["files"]] == [
        str(boot_tree.boot / "vmlinuz-6.1"), str(boot_tree.boot / "initramfs-6.1.img")]
    # A result stored before proofs named their files: not known to be about these files.
    del data["files"]
    result.write_text(json.dumps(data))
    assert ProofStore(runtime).load(entry) == dataclasses.replace(stored, files=())
    assert _proof_findings(_health(cache, runtime)) == []
    result.write_text("{ not json")
    assert ProofStore(runtime).load(entry) is None
    os.unlink(result)
    os.mkfifo(result)  # never opened for long: nothing blocks
    assert ProofStore(runtime).load(entry) is None
    assert _proof_findings(_health(cache, runtime)) == []
