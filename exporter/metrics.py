"""Prometheus metrics: served at GET /metrics and, for cron/timer use, written atomically
to a node_exporter textfile ([metrics].textfile) after each ingest/export/sync/prune.

Everything comes from the store (counters persisted with the data they count), so the
figures are the same whichever process ingested the records.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .export import atomic_write
from .store import Store

PREFIX = "kumo_suppression"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(store: Store, now: int | None = None) -> str:
    now = int(time.time()) if now is None else now
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
        lines.append(f"# HELP {PREFIX}_{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}_{name} {kind}")
        for labels, value in samples:
            label = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            lines.append(f"{PREFIX}_{name}{{{label}}} {value}" if label else f"{PREFIX}_{name} {value}")

    counters = store.counters()

    def labelled(prefix: str, label: str) -> list[tuple[dict, float]]:
        return sorted((({label: k.split(":", 1)[1]}, v) for k, v in counters.items() if k.startswith(prefix + ":")),
                      key=lambda sample: sample[0][label])

    family("records_ingested_total", "counter",
           "Distinct log records ingested, by record type: a suppressing record seen again (a file "
           "re-read, a webhook retry, the same record by file and by webhook) is counted once, here, "
           "and its repeats in records_duplicate_total.",
           labelled("records_total", "type"))
    family("records_duplicate_total", "counter",
           "Suppressing records seen before (file and webhook, a hook retry), by record type; "
           "not in records_ingested_total.",
           labelled("records_duplicate_total", "type"))
    family("suppressions_added_total", "counter", "Suppressions added, by reason.", labelled("added_total", "reason"))
    family("suppressions_refreshed_total", "counter", "Suppressions refreshed by a newer event, by reason.",
           labelled("refreshed_total", "reason"))
    family("suppressions_removed_total", "counter", "Suppressions removed by an operator.",
           [({}, counters.get("removed_total", 0))])
    family("suppressions_expired_total", "counter", "Expired suppressions dropped by prune.",
           [({}, counters.get("expired_total", 0))])
    family("records_skipped_total", "counter", "Suppressing-type records skipped, by why.",
           labelled("skipped_total", "why"))
    family("records_malformed_total", "counter", "Malformed records skipped: bad JSON, oversized lines, records that "
           "cannot be processed (invalid text, absurd nesting), records dated beyond [ingest] max_future_skew.",
           [({}, counters.get("malformed_total", 0))])
    family("events_duplicate_total", "counter", "Events seen before (re-read file, webhook retry).",
           [({}, counters.get("duplicates_total", 0))])
    stats = store.stats(now)
    family("entries", "gauge", "Active suppressions, by reason.",
           [({"reason": k}, v) for k, v in stats["by_reason"].items()])
    family("domains", "gauge", "Sending domains with active suppressions.", [({}, len(stats["by_domain"]))])

    def state(key: str) -> float | None:
        value = store.get_state(key)
        return float(value) if value else None
    for key, help_text in (("last_ingest", "Unix time of the last successful ingest."),
                           ("last_export", "Unix time of the last successful export.")):
        value = state(key)
        if value is not None:
            family(f"{key}_timestamp_seconds", "gauge", help_text, [({}, value)])
    for key, name, help_text in (
            ("last_export_duration", "export_duration_seconds", "Duration of the last export."),
            ("last_export_entries", "exported_entries", "Entries in the last export."),
            ("last_export_domains", "exported_domains", "Snapshot files in the last export.")):
        value = state(key)
        if value is not None:
            family(name, "gauge", help_text, [({}, value)])
    return "\n".join(lines) + "\n"


STALE_TEMP = 600   # seconds: a temp file this old was left by a killed writer


def write_textfile(path: Path, store: Store) -> None:
    """Atomically, so node_exporter never reads half a file; temp files a killed writer
    left beside it are removed (only old ones: another writer may be at work)."""
    data = render(store).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write(data))
    cutoff = time.time() - STALE_TEMP
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if temp.stat().st_mtime < cutoff:
                temp.unlink()
