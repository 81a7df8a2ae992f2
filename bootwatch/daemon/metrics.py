"""Metrics for node_exporter's textfile collector: one ``.prom`` file, replaced atomically.

node_exporter (``--collector.textfile.directory=DIR``) reads every ``DIR/*.prom`` file at each
scrape and serves its samples beside its own. The file is in the Prometheus text exposition
format: ``# HELP`` and ``# TYPE`` lines, then ``name{label="value"} number`` samples, every
name with the ``bootwatch_`` prefix.

A scrape may come at any time, so the file is never written in place: a temp file in the same
directory (named so that it does not end in ``.prom``, so it is never read) is written, fsynced,
made world-readable (node_exporter runs as its own user) and renamed over the old file. The
directory belongs to the prometheus package, not to bootwatch, so it gets no private-directory
check.

Counters (``_total``) count from the daemon's start, as Prometheus expects of a process's
counters; ``rate()`` handles the reset at a restart.

Boot proofs (:func:`proof_samples`), read from the proof store at every write, so a ``bootwatch
prove`` run by hand shows up too: per entry of the inventory (label ``entry="SOURCE:ID"``, as
the journal and ``bootwatch prove`` name it, escaped as every label value is),
``bootwatch_entry_last_proof_timestamp_seconds`` is when its stored proof started, whatever
its verdict and whatever files it booted; ``bootwatch_entry_proof_passed`` is 1 (passed) or 0
(failed) only while that proof is of the files the entry names now and was run: an entry whose
kernel was replaced since, or whose proof was not run (no qemu, another architecture), has no
sample, so ``bootwatch_entry_proof_passed == 0`` is a proof that fails for the entry as it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bootwatch import __version__
from bootwatch.atomic import write_atomically
from bootwatch.cache.operations import BootCache, ImageVerification, PathState, PathStatus
from bootwatch.cache.pins import count_pins
from bootwatch.entries.inventory import Inventory
from bootwatch.entries.summary import Census
from bootwatch.errors import BootwatchError, describe_oserror
from bootwatch.health.model import EntryState
from bootwatch.health.summary import STATES as HEALTH_STATES
from bootwatch.prove.proof import ProofStore, Verdict, entry_files

PREFIX = "bootwatch_"
STATES = tuple(PathState)

Labels = tuple[tuple[str, str], ...]


@dataclass
class _JobStats:
    runs: int = 0
    errors: int = 0
    last_duration: float = 0.0
    last_run: float = 0.0
    last_ok: bool = True


@dataclass(frozen=True)
class CacheListing:
    """The cache's paths with their states, as ``bootwatch list`` shows them, or why the index
    cannot be read. Read once and shared by whoever needs it at the same moment (the daemon's
    counts and its metrics): each read parses the whole index."""

    statuses: list[PathStatus]
    error: BootwatchError | None = None

    @classmethod
    def read(cls, cache: BootCache) -> CacheListing:
        try:
            return cls(cache.list())
        except BootwatchError as e:
            return cls([], e)


@dataclass(frozen=True)
class ProofSample:
    """The stored boot proof of one entry, as the metrics show it."""

    entry: str
    """``SOURCE:ID``"""
    started: float
    passed: bool | None
    """None: not run, or of files the entry no longer names."""


def proof_samples(store: ProofStore, inventory: Inventory | None) -> list[ProofSample]:
    """The stored proofs of the entries of ``inventory`` (none without one)."""
    samples: list[ProofSample] = []
    if inventory is None:
        return samples
    for entry in inventory.entries:
        proof = store.load(entry)
        if proof is None:
            continue
        current = proof.verdict is not Verdict.NOT_RUN and proof.is_of(entry_files(inventory, entry))
        samples.append(ProofSample(f"{entry.source.value}:{entry.id}", proof.started,
                                   proof.verdict is Verdict.PASSED if current else None))
    return samples


def escape_label_value(value: str) -> str:
    """The text format's escapes (backslash, double quote, newline) of a value made UTF-8: an
    undecodable byte of a file name (a lone surrogate) is written as ``\\xNN``."""
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = value.encode("utf-8", "backslashreplace")
    value = data.decode("utf-8", "backslashreplace")
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Exposition:
    """Builds the text format, one metric family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[Labels, float]]) -> None:
        samples = list(samples)
        if not samples:
            return  # a family without samples says nothing; leave it out
        full = PREFIX + name
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
            self.lines.append(f"{full}{{{label_text}}} {format_value(value)}" if labels
                              else f"{full} {format_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class Metrics:
    """What the daemon records between writes, and the rendering of the whole file.

    ``record_job`` has the signature of ``MaintenanceScheduler``'s ``on_job_done`` and
    ``record_verification`` that of its ``on_verified``; both are called from job threads,
    hence the lock.
    """

    def __init__(self, textfile: Path | None) -> None:
        self.textfile = Path(textfile) if textfile is not None else None
        self._lock = threading.Lock()
        self._jobs: dict[str, _JobStats] = {}
        self._last_reconcile: float | None = None
        self._last_verification: tuple[float, int, int] | None = None  # time, images, failures
        self._entries_by_state: dict[EntryState, int] | None = None  # the last health pass's
        self._written_broken = 0

    # ---------------------------------------------------------------- recording

    def record_job(self, name: str, duration: float, ok: bool) -> None:
        with self._lock:
            stats = self._jobs.setdefault(name, _JobStats())
            stats.runs += 1
            stats.errors += 0 if ok else 1
            stats.last_duration = duration
            stats.last_run = time.time()
            stats.last_ok = ok

    def record_reconcile(self, when: float | None = None) -> None:
        with self._lock:
            self._last_reconcile = time.time() if when is None else when

    def record_written_broken(self, paths: int) -> None:
        """How many paths' newest image failed its check when it was cached (cache.writecheck)."""
        with self._lock:
            self._written_broken = paths

    def record_verification(self, results: Sequence[ImageVerification], when: float | None = None) -> None:
        with self._lock:
            self._last_verification = (time.time() if when is None else when, len(results),
                                       sum(1 for r in results if r.failed))

    def record_entry_states(self, counts: Mapping[EntryState, int]) -> None:
        """The boot entries by health state, as the last health pass found them."""
        with self._lock:
            self._entries_by_state = {state: counts.get(state, 0) for state in HEALTH_STATES}

    # ---------------------------------------------------------------- rendering

    def render(self, cache: BootCache, pins_count: int | None = None, listing: CacheListing | None = None,
               census: Census | None = None, proofs: Sequence[ProofSample] = ()) -> str:
        """The whole file. ``listing`` is the cache's read now, if the caller has one (else it is
        read here); ``pins_count`` and ``census`` (the boot entries) likewise. ``proofs``: the
        boot proofs of the entries (:func:`proof_samples`)."""
        out = Exposition()
        out.family("info", "gauge", "bootwatch version (always 1).", [((("version", __version__),), 1)])
        _render_listing(out, listing if listing is not None else CacheListing.read(cache))
        _render_entries(out, census if census is not None else Census.of(cache.read_inventory()))
        try:
            references_unknown = cache.references().unknown is not None
        except (BootwatchError, OSError):
            references_unknown = True
        out.family("references_unknown", "gauge",
                   "1 while the boot entries cannot be read or trusted (nothing is cleaned or deleted), else 0.",
                   [((), references_unknown)])
        files, size = _image_files(cache)
        out.family("cache_image_files", "gauge", "Image files in the cache directory.", [((), files)])
        out.family("cache_bytes", "gauge", "Bytes in the cache's image files.", [((), size)])
        if pins_count is None:
            try:
                pins_count = count_pins(cache)
            except (BootwatchError, OSError):
                pins_count = None
        if pins_count is not None:
            out.family("pins", "gauge", "Pin links in <cache>/links (live or not yet collected).", [((), pins_count)])
        _render_proofs(out, proofs)
        self._render_recorded(out)
        return out.text()

    def _render_recorded(self, out: Exposition) -> None:
        """What the daemon recorded: the last reconcile, the last verification, the job runs."""
        with self._lock:
            reconcile = self._last_reconcile
            verification = self._last_verification
            entries_by_state = self._entries_by_state
            written_broken = self._written_broken
            jobs = sorted((name, _JobStats(**vars(stats))) for name, stats in self._jobs.items())
        if entries_by_state is not None:
            out.family("entries_by_state", "gauge",
                       "Boot entries by health state (BOOTABLE, UNKNOWN, AT_RISK, BROKEN; every state always "
                       "present) as the daemon's last health pass found them; 'bootwatch entries' says why.",
                       [((("state", state.value),), count) for state, count in entries_by_state.items()])
        out.family("images_written_broken", "gauge",
                   "Cached paths whose newest image, a kernel or initramfs, failed its format check when it was "
                   "written (the journal's IMAGE_WRITTEN_BROKEN names the command that puts the previous good "
                   "image back).", [((), written_broken)])
        if reconcile is not None:
            out.family("last_reconcile_timestamp_seconds", "gauge",
                       "When the last full reconcile of the boot directory ended (Unix time).", [((), reconcile)])
        if verification is not None:
            when, images, failures = verification
            out.family("last_verification_timestamp_seconds", "gauge",
                       "When the last verify run ended (Unix time).", [((), when)])
            out.family("last_verification_images", "gauge", "Images the last verify run re-hashed.", [((), images)])
            out.family("last_verification_failures", "gauge", "Images that failed in the last verify run.",
                       [((), failures)])
        out.family("job_runs_total", "counter", "Runs of each scheduled job since the daemon started.",
                   [((("job", name),), s.runs) for name, s in jobs])
        out.family("job_errors_total", "counter", "Runs of each scheduled job that raised an error.",
                   [((("job", name),), s.errors) for name, s in jobs])
        out.family("job_last_duration_seconds", "gauge", "How long the last run of each job took.",
                   [((("job", name),), s.last_duration) for name, s in jobs])
        out.family("job_last_run_timestamp_seconds", "gauge", "When the last run of each job ended (Unix time).",
                   [((("job", name),), s.last_run) for name, s in jobs])
        out.family("job_last_success", "gauge", "1 if the last run of each job succeeded, else 0.",
                   [((("job", name),), s.last_ok) for name, s in jobs])

    def write(self, cache: BootCache, pins_count: int | None = None, listing: CacheListing | None = None,
              census: Census | None = None, proofs: Sequence[ProofSample] = ()) -> bool:
        """Replace the text file atomically; False if no text file is configured.

        Raises :class:`BootwatchError` if it cannot be written (the daemon logs it and goes on).
        """
        if self.textfile is None:
            return False
        data = self.render(cache, pins_count, listing, census, proofs).encode()
        try:
            # 0644 whatever the umask: node_exporter runs as another user
            write_atomically(self.textfile, data, mode=0o644, prefix=f".{self.textfile.name}.tmp.")
        except OSError as e:
            raise BootwatchError(f"cannot write the metrics file: {describe_oserror(e)}", path=self.textfile,
                                 hint="check [metrics] textfile and that its directory exists") from None
        return True


def _render_listing(out: Exposition, listing: CacheListing) -> None:
    out.family("index_readable", "gauge", "1 if cacheindex.json could be read and validated, else 0.",
               [((), listing.error is None)])
    if listing.error is not None:
        return
    statuses = listing.statuses
    by_state = {state: 0 for state in STATES}
    for s in statuses:
        by_state[s.state] = by_state.get(s.state, 0) + 1
    out.family("images", "gauge", "Cached boot paths by the state of their newest image (as 'bootwatch list').",
               [((("state", state),), count) for state, count in by_state.items()])
    out.family("images_referenced", "gauge", "Cached paths that at least one boot entry references.",
               [((), sum(1 for s in statuses if s.count))])
    out.family("images_with_problem", "gauge",
               "Cached paths whose newest image is missing, has the wrong size or failed verification.",
               [((), sum(1 for s in statuses if s.image_problem))])
    out.family("images_verification_failed", "gauge",
               "Cached paths whose newest image failed its last verification.",
               [((), sum(1 for s in statuses if s.verified is not None and s.verified.failed))])
    out.family("images_verification_unchecked", "gauge",
               "Cached paths whose newest image's last content check was cut off by the verify run's bound "
               "(neither ok nor failed; verified first at the next run).",
               [((), sum(1 for s in statuses if s.verified is not None and s.verified.unchecked))])


def _render_entries(out: Exposition, census: Census) -> None:
    unknown = {loc.source for loc in census.unknown}
    out.family("entries", "gauge",
               "Boot entries by entry source found on this host (0: found, holds none); a source that cannot be "
               "read completely has no sample (see bootwatch_entry_sources_unknown).",
               [((("source", source.value),), count) for source, count in census.by_source.items()
                if source not in unknown])
    out.family("entry_sources_unknown", "gauge",
               "Locations of entry sources that cannot be read completely (the references are unknown then).",
               [((), len(census.unknown))])
    out.family("entries_none", "gauge",
               "1 while no boot entry was found (no entry source, or every one found holds none; the journal "
               "says what was looked at), else 0.",
               [((), census.warning is not None)])


def _render_proofs(out: Exposition, proofs: Sequence[ProofSample]) -> None:
    out.family("entry_last_proof_timestamp_seconds", "gauge",
               "When the stored boot proof of each entry started (Unix time), whatever its verdict and files.",
               [((("entry", p.entry),), p.started) for p in proofs])
    out.family("entry_proof_passed", "gauge",
               "1 if the boot proof of each entry passed, 0 if it failed; only for a proof that ran and is of the "
               "files the entry names now.",
               [((("entry", p.entry),), p.passed) for p in proofs if p.passed is not None])


def _image_files(cache: BootCache) -> tuple[int, int]:
    try:
        ids = cache.store.image_ids_on_disk()
    except OSError:
        return 0, 0
    total = 0
    for image_id in ids:
        st = cache.store.image_stat(image_id)
        total += st.st_size if st is not None else 0
    return len(ids), total
