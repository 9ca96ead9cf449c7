#!/usr/bin/env python3
"""What the store's row layout costs SQLite alone when a bounce storm adds new entries,
beside the bare executemany floor of bench/write.py and the layout schema 7 replaced, in
one run.

    python bench/write_layouts.py [--quick] [--sizes N ...]

No Python per event here (no records, rules, event keys or packing): every layout takes
the same prepared rows, in transactions of 50,000 sorted by key (as Store.apply_events
writes them), into a fresh file with the store's pragmas. It says how much of
bench/write.py's ratio is the layout's:
  * floor: (domain, recipient) into a table keyed by them (bench/write.py's floor);
  * store: schema 7's rows: the entry's clustered row (reason, since, expires, the id of
    its details), its details (source, counts, evidence packed as the store packs it,
    note) appended in arrival order, and its `add` history row, appended and reached from
    the entry (outside the history's partial pair index);
  * one_row: schema 6's rows: the whole entry (18 columns) clustered by (domain,
    recipient), and the same history row.
Each with bench/write.py's short response text, and at the largest size once more with
a response as long as Gmail's for an unknown mailbox (`_long`): the text is in the
clustered b-tree of one_row, and only in the appended details of store.
Figures (name: value unit), for each size N (and N_long):
  layouts_N_floor_s, layouts_N_store_s, layouts_N_one_row_s   seconds for N new entries
  layouts_N_store_vs_floor, layouts_N_one_row_vs_floor        ratios
  layouts_N_store_bytes_per_entry, layouts_N_one_row_bytes_per_entry
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

from exporter.store import CACHE_KIB, ENTRY_TABLES  # noqa: E402

BATCH = 50_000
YEAR = 365 * 86400

HISTORY = [
    "CREATE TABLE history (id INTEGER PRIMARY KEY, at INTEGER, action TEXT, domain TEXT, recipient TEXT, "
    "reason TEXT, source TEXT, event_time INTEGER, expires INTEGER, note TEXT, actor TEXT, indexed INTEGER DEFAULT 1)",
    "CREATE INDEX history_pair ON history(domain, recipient) WHERE indexed"]
LAYOUTS = {
    "floor": ["CREATE TABLE pairs (domain TEXT, recipient TEXT, PRIMARY KEY (domain, recipient)) WITHOUT ROWID"],
    "store": [*ENTRY_TABLES, *HISTORY],
    "one_row": [
        "CREATE TABLE suppressions (domain TEXT NOT NULL, recipient TEXT NOT NULL, reason TEXT NOT NULL, "
        "source TEXT NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, expires INTEGER, "
        "count INTEGER NOT NULL, ev_type TEXT, ev_message_id TEXT, ev_code INTEGER, ev_enhanced_code TEXT, "
        "ev_content TEXT, ev_classification TEXT, ev_nodeid TEXT, note TEXT, updated_at INTEGER, added INTEGER, "
        "PRIMARY KEY (domain, recipient)) WITHOUT ROWID",
        *HISTORY],
}
SHORT = "5.1.1 user unknown"       # bench/write.py's
# Gmail's answer to an unknown mailbox, as kumod logs its response text
LONG = ("The email account that you tried to reach does not exist. Please try double-checking the recipient's "
        "email address for typos or unnecessary spaces. For more information, go to "
        "https://support.google.com/mail/?p=NoSuchUser d2e1a72fcca58-7ab7e7fd1d5si1234567b3a.123 - gsmtp")


def pairs_of(count: int) -> list[tuple[str, str]]:
    """bench/write.py's pairs, in the same arrival order."""
    return [(event.domain, event.recipients[0]) for event in storm(count)]


def statements(layout: str, chunk: list[tuple[str, str]], first_id: int, now: int,
               content: str) -> list[tuple[str, list]]:
    # evidence as the store packs it: type and classification one byte, ids 16 bytes
    ev = (bytearray(b"\x01"), bytearray(os.urandom(16)), 550, "5.1.1", content, bytearray(b"\x0c"),
          bytearray(b"\x0b" * 16))
    since, expires = now - 60, now - 60 + YEAR
    if layout == "floor":
        return [("INSERT INTO pairs VALUES (?, ?)", chunk)]
    ids = range(first_id, first_id + len(chunk))
    # bound as the store binds them: NULL as 0 (NULLIF), packed values as bytearrays
    history = ("INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, 0), NULLIF(?, 0), NULLIF(?, 0))",
               [(i, now, "add", d, r, "bounce", "log", since, expires, 0, 0, 0) for (d, r), i in zip(chunk, ids)])
    if layout == "one_row":
        return [history,
                ("REPLACE INTO suppressions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, 0), ?, ?)",
                 [(d, r, "bounce", "log", since, since, expires, 1, *ev, 0, now, i)
                  for (d, r), i in zip(chunk, ids)])]
    return [history,
            ("REPLACE INTO entry_details VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, 0), ?, ?)",
             [(i, "log", since, 1, *ev, 0, now, i) for i in ids]),
            ("REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
             [(d, r, "bounce", since, expires, i) for (d, r), i in zip(chunk, ids)])]


def run(path: Path, layout: str, pairs: list[tuple[str, str]], content: str) -> tuple[float, float]:
    """(seconds, bytes per entry) for every pair written in transactions of BATCH."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", f"cache_size=-{CACHE_KIB}"):   # the store's
        conn.execute(f"PRAGMA {pragma}")
    for sql in LAYOUTS[layout]:
        conn.execute(sql)
    now = int(time.time())
    batches = [sorted(pairs[start:start + BATCH]) for start in range(0, len(pairs), BATCH)]
    prepared = [statements(layout, chunk, 1 + n * BATCH, now, content) for n, chunk in enumerate(batches)]
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
        runs = [(size, SHORT, f"layouts_{size // 1000}k") for size in args.sizes]
        runs.append((max(args.sizes), LONG, f"layouts_{max(args.sizes) // 1000}k_long"))
        for size, content, name in runs:
            pairs = pairs_of(size)
            seconds = {}
            for layout in LAYOUTS:
                seconds[layout], per_entry = run(tmp / f"{layout}-{size}.db", layout, pairs, content)
                figure(f"{name}_{layout}_s", seconds[layout], "s")
                if layout != "floor":
                    figure(f"{name}_{layout}_bytes_per_entry", per_entry, "B")
            for layout in ("store", "one_row"):
                figure(f"{name}_{layout}_vs_floor", seconds[layout] / seconds["floor"], "x")
            for p in tmp.iterdir():
                p.unlink()
        note("SQLite alone; bench/write.py's ratio adds the Python per event on top")
        reproduce()


if __name__ == "__main__":
    main()
