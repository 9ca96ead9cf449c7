#!/usr/bin/env python3
"""What the store's row layout costs SQLite alone when a bounce storm adds new entries,
beside the bare executemany floor of bench/write.py and a candidate layout, in one run.

    python bench/write_layouts.py [--quick] [--sizes N ...]

No Python per event here (no records, rules, event keys or packing): every layout takes
the same prepared rows, in transactions of 50,000 sorted by key (as Store.apply_events
writes them), into a fresh file with the store's pragmas. It says how much of
bench/write.py's ratio is the layout's, and how much a different one would save:
  * floor: (domain, recipient) into a table keyed by them (bench/write.py's floor);
  * store: today's rows (schema 6), an entry (18 columns, evidence packed as the store
    packs it, clustered by (domain, recipient)) plus its `add` history row, appended and
    reached from the entry (outside the history's partial pair index);
  * split: a candidate: the clustered row holds only what a snapshot needs (reason, since,
    expires) and the id of a detail row (source, counts, evidence, note) appended in
    arrival order, and a new entry's `add` history row is implied by its entry.
Figures (name: value unit), for each size N:
  layouts_N_floor_s, layouts_N_store_s, layouts_N_split_s   seconds for N new entries
  layouts_N_store_vs_floor, layouts_N_split_vs_floor        ratios
  layouts_N_store_bytes_per_entry, layouts_N_split_bytes_per_entry
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import figure, note, reproduce, scratch, size_arguments  # noqa: E402

from write import storm  # noqa: E402

from exporter.store import CACHE_KIB  # noqa: E402

BATCH = 50_000
YEAR = 365 * 86400

LAYOUTS = {
    "floor": ["CREATE TABLE pairs (domain TEXT, recipient TEXT, PRIMARY KEY (domain, recipient)) WITHOUT ROWID"],
    "store": [
        "CREATE TABLE suppressions (domain TEXT NOT NULL, recipient TEXT NOT NULL, reason TEXT NOT NULL, "
        "source TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, expires INTEGER, "
        "count INTEGER NOT NULL, ev_type TEXT, ev_message_id TEXT, ev_code INTEGER, ev_enhanced_code TEXT, "
        "ev_content TEXT, ev_classification TEXT, ev_nodeid TEXT, note TEXT, updated_at INTEGER, added INTEGER, "
        "PRIMARY KEY (domain, recipient)) WITHOUT ROWID",
        "CREATE TABLE history (id INTEGER PRIMARY KEY, at INTEGER, action TEXT, domain TEXT, recipient TEXT, "
        "reason TEXT, source TEXT, event_time INTEGER, expires INTEGER, note TEXT, actor TEXT, "
        "indexed INTEGER DEFAULT 1)",
        "CREATE INDEX history_pair ON history(domain, recipient) WHERE indexed"],
    "split": [
        "CREATE TABLE entries (domain TEXT NOT NULL, recipient TEXT NOT NULL, reason TEXT NOT NULL, "
        "since INTEGER NOT NULL, expires INTEGER, detail INTEGER NOT NULL, PRIMARY KEY (domain, recipient)) "
        "WITHOUT ROWID",
        "CREATE TABLE details (id INTEGER PRIMARY KEY, source TEXT, last_seen INTEGER, count INTEGER, "
        "ev_type TEXT, ev_message_id TEXT, ev_code INTEGER, ev_enhanced_code TEXT, ev_content TEXT, "
        "ev_classification TEXT, ev_nodeid TEXT, note TEXT, updated_at INTEGER)"],
}


def pairs_of(count: int) -> list[tuple[str, str]]:
    """bench/write.py's pairs, in the same arrival order."""
    return [(event.domain, event.recipients[0]) for event in storm(count)]


def statements(layout: str, chunk: list[tuple[str, str]], first_id: int, now: int) -> list[tuple[str, list]]:
    # evidence as the store packs it: type and classification one byte, ids 16 bytes
    ev = (b"\x01", os.urandom(16), 550, "5.1.1", "5.1.1 user unknown", b"\x0c", b"\x0b" * 16)
    since, expires = now - 60, now - 60 + YEAR
    if layout == "floor":
        return [("INSERT INTO pairs VALUES (?, ?)", chunk)]
    ids = range(first_id, first_id + len(chunk))
    if layout == "store":
        return [("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 [(i, now, "add", d, r, "bounce", "log", since, expires, None, None, None)
                  for (d, r), i in zip(chunk, ids)]),
                ("REPLACE INTO suppressions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 [(d, r, "bounce", "log", since, since, expires, 1, *ev, None, now, i)
                  for (d, r), i in zip(chunk, ids)])]
    return [("INSERT INTO details VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
             [(i, "log", since, 1, *ev, None, now) for i in ids]),
            ("REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
             [(d, r, "bounce", since, expires, i) for (d, r), i in zip(chunk, ids)])]


def run(path: Path, layout: str, pairs: list[tuple[str, str]]) -> tuple[float, float]:
    """(seconds, bytes per entry) for every pair written in transactions of BATCH."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", f"cache_size=-{CACHE_KIB}"):   # the store's
        conn.execute(f"PRAGMA {pragma}")
    for sql in LAYOUTS[layout]:
        conn.execute(sql)
    now = int(time.time())
    batches = [sorted(pairs[start:start + BATCH]) for start in range(0, len(pairs), BATCH)]
    prepared = [statements(layout, chunk, 1 + n * BATCH, now) for n, chunk in enumerate(batches)]
    started = time.perf_counter()
    for batch in prepared:
        conn.execute("BEGIN")
        for sql, rows in batch:
            conn.executemany(sql, rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    size = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    return elapsed, size / len(pairs)


def main() -> None:
    args = size_arguments(__doc__)
    with scratch("bench-layouts-", args.workdir) as tmp:
        for size in args.sizes:
            pairs = pairs_of(size)
            name = f"layouts_{size // 1000}k"
            seconds = {}
            for layout in LAYOUTS:
                seconds[layout], per_entry = run(tmp / f"{layout}-{size}.db", layout, pairs)
                figure(f"{name}_{layout}_s", seconds[layout], "s")
                if layout != "floor":
                    figure(f"{name}_{layout}_bytes_per_entry", per_entry, "B")
            for layout in ("store", "split"):
                figure(f"{name}_{layout}_vs_floor", seconds[layout] / seconds["floor"], "x")
            for p in tmp.iterdir():
                p.unlink()
        note("SQLite alone; bench/write.py's ratio adds the Python per event on top")
        reproduce()


if __name__ == "__main__":
    main()
