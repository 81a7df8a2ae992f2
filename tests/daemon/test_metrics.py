"""The textfile metrics: parsed back with a strict reader of the Prometheus text format."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from bootwatch.cache.operations import BootCache, ImageVerification
from bootwatch.cache.pins import pin
from bootwatch.daemon.metrics import Metrics
from bootwatch.errors import BootwatchError
from bootwatch.health.model import EntryState

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")

Key = tuple[str, frozenset[tuple[str, str]]]


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse_exposition(text: str) -> tuple[dict[Key, float], dict[str, str]]:
    """A strict reader of the text exposition format (version 0.0.4), for the parts we write.

    Every sample's family must have had its HELP and TYPE first, a family's samples must be
    contiguous, no family may appear twice, and the file must end with a newline.
    """
    assert text.endswith("\n"), "the file must end with a newline"
    samples: dict[Key, float] = {}
    types: dict[str, str] = {}
    helps = set()
    current = None
    finished = set()
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert NAME.fullmatch(name) and name not in helps, where
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert NAME.fullmatch(name) and kind in TYPES and name not in types, where
            assert name in helps, f"{where}: TYPE before HELP"
            types[name] = kind
            if current is not None:
                finished.add(current)
            current = name
        else:
            match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
            assert match, where
            name, labels_text, value = match.groups()
            assert name == current and name not in finished, f"{where}: not in its family's block"
            labels = []
            if labels_text:
                rest = labels_text
                while rest:
                    m = LABEL.match(rest)
                    assert m, where
                    labels.append((m.group(1), unescape(m.group(2))))
                    rest = rest[m.end():]
                    if rest:
                        assert rest.startswith(","), where
                        rest = rest[1:]
            key = (name, frozenset(labels))
            assert key not in samples, f"{where}: duplicate sample"
            samples[key] = float(value)
    return samples, types


def sample(samples: dict[Key, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def cache(tmp_path: Path) -> BootCache:
    boot = tmp_path / "boot"
    entries = boot / "loader" / "entries"
    entries.mkdir(parents=True)
    (boot / "vmlinuz-a").write_bytes(b"a" * 1000)
    (boot / "vmlinuz-b").write_bytes(b"b" * 3000)
    (entries / "a.conf").write_text("title a\nlinux /vmlinuz-a\n")
    c = BootCache(boot, entries, tmp_path / "cache")
    c.add(["/vmlinuz-a", "/vmlinuz-b"])
    (boot / "vmlinuz-b").unlink()  # cached, but gone from /boot: MISSING
    return c


def test_render_parses_and_counts(cache: BootCache) -> None:
    metrics = Metrics(None)
    metrics.record_job("gc", 0.25, True)
    metrics.record_job("gc", 0.5, False)
    metrics.record_job("clean", 2, True)
    metrics.record_reconcile(1700000000.5)
    metrics.record_verification([ImageVerification("a" * 40, [], True, "ok"),
                                 ImageVerification("b" * 40, [], False, "bad")], when=1700000001)
    with pin(cache, paths=["/vmlinuz-a"]):
        samples, types = parse_exposition(metrics.render(cache))
    assert all(name.startswith("bootwatch_") for name in types)
    assert sample(samples, "bootwatch_images", state="CACHED") == 1
    assert sample(samples, "bootwatch_images", state="MISSING") == 1
    assert sample(samples, "bootwatch_images", state="BROKEN") == 0
    assert sample(samples, "bootwatch_images_referenced") == 1
    assert sample(samples, "bootwatch_cache_image_files") == 2
    assert sample(samples, "bootwatch_cache_bytes") == 4000
    assert sample(samples, "bootwatch_pins") == 1
    assert sample(samples, "bootwatch_index_readable") == 1
    assert sample(samples, "bootwatch_last_reconcile_timestamp_seconds") == 1700000000.5
    assert sample(samples, "bootwatch_last_verification_failures") == 1
    assert sample(samples, "bootwatch_last_verification_images") == 2
    assert sample(samples, "bootwatch_job_runs_total", job="gc") == 2
    assert sample(samples, "bootwatch_job_errors_total", job="gc") == 1
    assert sample(samples, "bootwatch_job_last_success", job="gc") == 0
    assert sample(samples, "bootwatch_job_last_duration_seconds", job="gc") == 0.5
    assert sample(samples, "bootwatch_job_runs_total", job="clean") == 1
    assert types["bootwatch_job_runs_total"] == "counter"
    assert types["bootwatch_cache_bytes"] == "gauge"
    samples, _ = parse_exposition(metrics.render(cache))
    assert sample(samples, "bootwatch_pins") == 0
    # No health pass recorded yet: no sample says "no entry is BROKEN". Then every state has one.
    assert not any(name == "bootwatch_entries_by_state" for name, _labels in samples)
    metrics.record_entry_states({EntryState.AT_RISK: 2})
    samples, types = parse_exposition(metrics.render(cache))
    assert {state: sample(samples, "bootwatch_entries_by_state", state=state.value) for state in EntryState} == \
        {EntryState.BOOTABLE: 0, EntryState.AT_RISK: 2, EntryState.UNKNOWN: 0, EntryState.BROKEN: 0}
    assert types["bootwatch_entries_by_state"] == "gauge"


def test_label_values_are_escaped(cache: BootCache) -> None:
    metrics = Metrics(None)
    odd = 'we"ird\\job\nname'
    metrics.record_job(odd, 1.0, True)
    samples, _ = parse_exposition(metrics.render(cache, pins_count=3))
    assert sample(samples, "bootwatch_job_runs_total", job=odd) == 1
    assert sample(samples, "bootwatch_pins") == 3


def test_corrupt_index_is_reported_not_raised(cache: BootCache) -> None:
    cache.store.index_path.write_text("{ not json")
    samples, _ = parse_exposition(Metrics(None).render(cache))
    assert sample(samples, "bootwatch_index_readable") == 0
    assert ("bootwatch_images", frozenset({("state", "CACHED")})) not in samples


def test_write_is_atomic_and_world_readable(cache: BootCache, tmp_path: Path) -> None:
    textdir = tmp_path / "node-exporter"
    textdir.mkdir(mode=0o755)
    target = textdir / "bootwatch.prom"
    target.write_text("old content\n")
    old_inode = target.stat().st_ino
    metrics = Metrics(target)
    old_umask = os.umask(0o077)
    try:
        assert metrics.write(cache) is True
    finally:
        os.umask(old_umask)
    assert target.stat().st_ino != old_inode, "the file was rewritten in place, not replaced"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(textdir) == ["bootwatch.prom"], "a temp file was left behind"
    samples, _ = parse_exposition(target.read_text())
    assert sample(samples, "bootwatch_images", state="CACHED") == 1


def test_write_without_textfile_and_to_a_missing_directory(cache: BootCache, tmp_path: Path) -> None:
    assert Metrics(None).write(cache) is False
    with pytest.raises(BootwatchError, match="cannot write the metrics file"):
        Metrics(tmp_path / "missing" / "bootwatch.prom").write(cache)


# -- the boot entries by source ---------------------------------------------------------------------

SAMPLES = Path(__file__).resolve().parents[1] / "realboot" / "samples"


def entry_samples(samples: dict[Key, float]) -> dict[str, float]:
    return {dict(labels)["source"]: value for (name, labels), value in samples.items() if name == "bootwatch_entries"}


def test_entries_by_source_found_zero_for_a_source_found_with_none(cache: BootCache) -> None:
    """The fixture's loader/entries holds one entry; the real grub-mkconfig's grub.cfg of the
    grub-btrfs sample (tests/realboot/README.md) adds 3 GRUB entries and, through its configfile
    include, 4 snapshot entries. No EFI/Linux: no uki sample."""
    import shutil
    samples, types = parse_exposition(Metrics(None).render(cache))
    assert entry_samples(samples) == {"bls": 1}
    assert types["bootwatch_entries"] == "gauge"
    assert sample(samples, "bootwatch_entry_sources_unknown") == 0
    assert sample(samples, "bootwatch_entries_none") == 0
    shutil.copytree(SAMPLES / "grub-btrfs", cache.boot_dir / "grub")
    samples, _ = parse_exposition(Metrics(None).render(cache))
    assert entry_samples(samples) == {"bls": 1, "grub": 7}
    (cache.entries_dir / "a.conf").unlink()
    (cache.boot_dir / "grub" / "grub-btrfs.cfg").unlink()
    os.mkfifo(cache.boot_dir / "grub" / "grub-btrfs.cfg")  # grub unknown: no sample, counted as unknown
    samples, _ = parse_exposition(Metrics(None).render(cache))
    assert entry_samples(samples) == {"bls": 0}
    assert sample(samples, "bootwatch_entry_sources_unknown") == 1
    assert sample(samples, "bootwatch_entries_none") == 0  # unknown is not none


def test_no_entry_source_no_entries_sample_and_entries_none(tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    (tmp_path / "c").mkdir(mode=0o700)
    samples, _ = parse_exposition(Metrics(None).render(BootCache(boot, boot / "loader" / "entries", tmp_path / "c")))
    assert entry_samples(samples) == {}
    assert sample(samples, "bootwatch_entries_none") == 1
    assert sample(samples, "bootwatch_entry_sources_unknown") == 0
