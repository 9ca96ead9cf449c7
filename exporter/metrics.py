"""Prometheus metrics (prometheus-client): served at GET /metrics and, for cron/timer use,
written atomically to a node_exporter textfile ([metrics].textfile) after each
ingest/export/sync/prune.

Two kinds of figures, every name defined once below:
- the store's: counters persisted with the data they count (so the figures are the same
  whichever process ingested the records) and the active entries by reason and domain;
- the process's: build_info, HTTP requests and their latency per route, webhook records,
  scheduler job failures (PROCESS_REGISTRY, one per process).

A scrape must cost the same for ten entries or a million: counting the active entries
takes seconds at a million rows, so the server serves them from StatsCache, which a
background thread refreshes (and only when a domain's generation moved, or the figures are
old enough that expiries may have changed them, and only while someone scrapes: under
webhook traffic the generations move all the time, and a recount nobody reads would cost
the writer CPU every REFRESH seconds for nothing). The textfile, written after a job that
already read the store, counts afresh.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
import time
from pathlib import Path

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import __version__
from .export import atomic_write
from .store import Store

log = logging.getLogger("kumo_suppress.metrics")

prometheus_client.disable_created_metrics()    # no *_created series: nothing here needs them

PREFIX = "kumo_suppression"
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# ------------------------------------------------------------------ the process's figures
PROCESS_REGISTRY = CollectorRegistry()
BUILD_INFO = Gauge(f"{PREFIX}_build_info", "Version of kumo-suppression and its runtime (always 1).",
                   ["version", "python"], registry=PROCESS_REGISTRY)
BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)
HTTP_REQUESTS = Counter(f"{PREFIX}_webhook_requests", "HTTP requests answered, by route and status.",
                        ["route", "status"], registry=PROCESS_REGISTRY)
HTTP_LATENCY = Histogram(f"{PREFIX}_http_request_duration_seconds",
                         "Time from a request's head to its answer (commit included), by route.",
                         ["route"], registry=PROCESS_REGISTRY,
                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
WEBHOOK_RECORDS = Counter(f"{PREFIX}_webhook_records_committed", "Records committed from webhook posts.",
                          registry=PROCESS_REGISTRY)
WEBHOOK_SKIPPED = Counter(f"{PREFIX}_webhook_records_skipped",
                          "Webhook records that could not be processed and were skipped.",
                          registry=PROCESS_REGISTRY)
JOB_FAILURES = Counter(f"{PREFIX}_job_failures", "Scheduled jobs (ingest, export, prune) that failed, by job.",
                       ["job"], registry=PROCESS_REGISTRY)


# ------------------------------------------------------------------ the store's figures
class _StoreFigures:
    """A one-shot collector over figures already read from the store."""

    def __init__(self, counters: dict[str, int], state: dict[str, str | None], stats: dict | None):
        self.counters, self.state, self.stats = counters, state, stats

    def _labelled(self, name: str, help_text: str, prefix: str, label: str) -> CounterMetricFamily:
        family = CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=[label])
        for key, value in sorted(self.counters.items()):
            if key.startswith(prefix + ":"):
                family.add_metric([key.split(":", 1)[1]], value)
        return family

    def _plain(self, name: str, help_text: str, key: str) -> CounterMetricFamily:
        return CounterMetricFamily(f"{PREFIX}_{name}", help_text, value=self.counters.get(key, 0))

    def collect(self):
        yield self._labelled("records_ingested",
                             "Distinct log records ingested, by record type: a suppressing record seen again (a "
                             "file re-read, a webhook retry, the same record by file and by webhook) is counted "
                             "once, here, and its repeats in records_duplicate_total.", "records_total", "type")
        yield self._labelled("records_duplicate", "Suppressing records seen before (file and webhook, a hook "
                             "retry), by record type; not in records_ingested_total.",
                             "records_duplicate_total", "type")
        yield self._labelled("suppressions_added", "Suppressions added, by reason.", "added_total", "reason")
        yield self._labelled("suppressions_refreshed", "Suppressions refreshed by a newer event, by reason.",
                             "refreshed_total", "reason")
        yield self._plain("suppressions_removed", "Suppressions removed by an operator.", "removed_total")
        yield self._plain("suppressions_expired", "Expired suppressions dropped by prune.", "expired_total")
        yield self._labelled("records_skipped", "Suppressing-type records skipped, by why.", "skipped_total", "why")
        yield self._plain("records_malformed", "Malformed records skipped: bad JSON, oversized lines, records that "
                          "cannot be processed (invalid text, absurd nesting), records dated beyond [ingest] "
                          "max_future_skew.", "malformed_total")
        yield self._plain("events_duplicate", "Events seen before (re-read file, webhook retry).",
                          "duplicates_total")
        if self.stats is not None:
            entries = GaugeMetricFamily(f"{PREFIX}_entries", "Active suppressions, by reason.", labels=["reason"])
            for reason, count in sorted(self.stats["by_reason"].items()):
                entries.add_metric([reason], count)
            yield entries
            yield GaugeMetricFamily(f"{PREFIX}_domains", "Sending domains with active suppressions.",
                                    value=len(self.stats["by_domain"]))
        for key, name, help_text in (
                ("last_ingest", "last_ingest_timestamp_seconds", "Unix time of the last successful ingest."),
                ("last_export", "last_export_timestamp_seconds", "Unix time of the last successful export."),
                ("last_export_duration", "export_duration_seconds", "Duration of the last export."),
                ("last_export_entries", "exported_entries", "Entries in the last export."),
                ("last_export_domains", "exported_domains", "Snapshot files in the last export.")):
            value = self.state.get(key)
            if value:
                yield GaugeMetricFamily(f"{PREFIX}_{name}", help_text, value=float(value))


_STATE_KEYS = ("last_ingest", "last_export", "last_export_duration", "last_export_entries", "last_export_domains")


def render(store: Store, stats: dict | None) -> bytes:
    """The exposition: the store's counters and state (a few small rows, read now), the
    given active-entry figures (`store.stats()`, possibly cached) and the process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StoreFigures(store.counters(), {k: store.get_state(k) for k in _STATE_KEYS}, stats))
    return generate_latest(registry) + generate_latest(PROCESS_REGISTRY)


class StatsCache:
    """The active-entry figures for the server's scrapes, recounted off the request path."""

    REFRESH = 30.0         # seconds between looks at the store
    MAX_AGE = 600.0        # recount at least this often: entries expire without a write

    def __init__(self, open_store):
        self._open_store = open_store
        self._stats: dict | None = None
        self._signature: dict | None = None
        self._counted_at = 0.0
        self._asked_at = 0.0          # the last read of `stats` (a scrape)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-stats", daemon=True)

    @property
    def stats(self) -> dict | None:
        self._asked_at = time.monotonic()
        return self._stats

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            # counted once at start; after that only when a scrape came since the last count
            # (the first scrape after a quiet spell shows that count, the next ones a fresh one)
            if self._stats is not None and self._asked_at < self._counted_at:
                self._stop.wait(self.REFRESH)
                continue
            try:
                with self._open_store() as store:
                    self.refresh(store)
            except Exception as err:  # noqa: BLE001 - a scrape shows the last figures meanwhile
                log.warning("metrics: cannot count active entries: %s", err)
            self._stop.wait(self.REFRESH)

    def refresh(self, store: Store) -> None:
        signature = store.domain_generations()
        if signature == self._signature and time.monotonic() - self._counted_at < self.MAX_AGE:
            return
        self._stats = store.stats(int(time.time()))
        self._signature, self._counted_at = signature, time.monotonic()


STALE_TEMP = 600   # seconds: a temp file this old was left by a killed writer


def write_textfile(path: Path, store: Store) -> None:
    """Atomically, so node_exporter never reads half a file; temp files a killed writer
    left beside it are removed (only old ones: another writer may be at work)."""
    data = render(store, store.stats(int(time.time())))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write(data))
    cutoff = time.time() - STALE_TEMP
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
