"""Review of issue 14 (entry health, headroom, restore --image), as an attacker: each test is a
defect found on main, marked xfail(strict=True) until it is fixed. Real files, real kernels and
mkinitramfs images where the verdict depends on them, a real small tmpfs /boot, the real command
line as a child process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

BootTree = Any  # conftest.BootTree
MIB = 1 << 20


def _entries(tree: BootTree, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    rc, out, err = tree.cli("entries", "--json", *args, env=env)
    assert "Traceback" not in err, err
    return rc, {e["id"]: e for e in json.loads(out)["entries"]} if out.strip() else {}, err


def _runtime_config(tree: BootTree) -> Path:
    runtime = tree.root / "run"
    runtime.mkdir(mode=0o755, exist_ok=True)
    tree.config.write_text(f'[paths]\nruntime = "{runtime}"\n')
    return runtime


# ------------------------------------------------------------------------------ verdicts


@pytest.mark.xfail(strict=True, reason="an empty or zero-filled kernel file (what a crash after a kernel "
                   "install leaves on ext4) is UNKNOWN ('not checked: not a kernel ... bootwatch knows'), not "
                   "BROKEN, so 'entries --check' passes a host whose default entry cannot boot on any "
                   "architecture: judge._format_findings treats no magic at all like an unknown architecture")
@pytest.mark.parametrize("content", ["empty", "zeros"])
def test_an_empty_or_zeroed_kernel_is_broken(boot_tree: BootTree, content: str) -> None:
    tree = boot_tree
    size = 0 if content == "empty" else 8 * MIB
    tree.write_file("/vmlinuz-6.1.0-9-amd64", content=b"\0" * size)
    tree.write_entry("zeroed", linux="/vmlinuz-6.1.0-9-amd64", lines=[("options", "root=/dev/vda1 ro")])
    rc, shown, err = _entries(tree, "--check")
    states = [f["state"] for f in shown["zeroed.conf"]["findings"] if f["check"] == "format"]
    assert states == ["BROKEN"], shown["zeroed.conf"]
    assert rc == 1, err


def _failed_proof(tree: BootTree) -> tuple[Path, Any]:
    """A FAILED proof of the tree's one entry, of its files as they are, stored as 'bootwatch prove' stores it."""
    from bootwatch.cache.operations import BootCache
    from bootwatch.prove.proof import Proof, ProofStore, Verdict, entry_files

    runtime = _runtime_config(tree)
    tree.write_kernel("6.1")
    tree.write_entry("one", linux="/vmlinuz-6.1", initrd=["/initramfs-6.1.img"])
    cache = BootCache(tree.boot, tree.entries, tree.cache, runtime_dir=runtime)
    inventory = cache.read_inventory()
    (entry,) = inventory.entries
    proof = Proof(entry.id, entry.source.value, Verdict.FAILED, "the kernel panicked", ("Kernel panic",),
                  files=entry_files(inventory, entry) or ())
    ProofStore(runtime).save(entry, proof, b"Kernel panic - not syncing\n")
    return ProofStore(runtime).result_path(entry), cache


@pytest.mark.xfail(strict=True, reason="'bootwatch entries' builds its HostCheck without the proof store "
                   "(cli/entries.entry_reports: HostCheck(inventory, facts, view), proofs=None), so an entry whose "
                   "last boot proof failed is BROKEN in the daemon's STATUS=/status/metric and not in 'bootwatch "
                   "entries' (nor --check), which bootwatch.toml's [prove] text says shows it")
def test_bootwatch_entries_shows_a_failed_proof(boot_tree: BootTree) -> None:
    from bootwatch.health.facts import FactsMemo
    from bootwatch.health.judge import check_host

    tree = boot_tree
    _, cache = _failed_proof(tree)
    (daemon_view,) = check_host(cache, cache.read_inventory(), FactsMemo(tree.root / "run")).all()
    assert [f.check.value for f in daemon_view.findings if f.state.value == "BROKEN"].count("proof") == 1
    _, shown, _ = _entries(tree)
    assert [f["check"] for f in shown["one.conf"]["findings"]].count("proof") == 1, shown["one.conf"]


@pytest.mark.xfail(strict=True, reason="a stored proof whose 'started' is out of time_t's range (1e999 reads "
                   "as inf) makes judge.HostCheck._proof's time.localtime raise OverflowError, out of check_host: "
                   "the daemon's health pass (daemon/health.py) gets an exception, not a finding")
def test_a_corrupted_stored_proof_is_no_exception(boot_tree: BootTree) -> None:
    from bootwatch.health.facts import FactsMemo
    from bootwatch.health.judge import check_host

    tree = boot_tree
    result, cache = _failed_proof(tree)
    data = json.loads(result.read_text())
    result.write_text(json.dumps(data).replace(json.dumps(data["started"]), "1e999", 1))
    (health,) = check_host(cache, cache.read_inventory(), FactsMemo(tree.root / "run")).all()
    assert health.state.value in ("BROKEN", "BOOTABLE")
