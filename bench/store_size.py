#!/usr/bin/env python3
"""Store size at steady state: bytes per active entry, history and event memory included.

Simulates DAYS days of bounces day by day (each day's events in one transaction, then a
prune every PRUNE_EVERY days with the default [store].history_retention and event
memory), long enough that entries expire and history ages out as fast as they come:
75% of events are for a new (domain, recipient) pair, 25% hit a pair seen before;
bounce 85%, oob 5%, expiration 5% (30 days), complaint 5% (never expires).

Figures (name: value unit):
  store_active_entries            active entries at the end
  store_bytes_per_active_entry    used pages (file minus free pages, WAL checkpointed) / active
  store_floor_bytes_per_entry     the same active entries alone, in a table clustered by
                                  (domain, recipient) filled in key order: the least SQLite needs
  store_<table>_bytes_per_entry   where the bytes are (when SQLite has the dbstat table)
Target: store_bytes_per_active_entry <= 250.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import figure, note, reproduce, scratch  # noqa: E402

from exporter.config import build_config  # noqa: E402
from exporter.records import Event  # noqa: E402
from exporter.rules import decide  # noqa: E402
from exporter.store import ApplyResult, Store  # noqa: E402

DAY = 86400
DOMAINS = 1000
PRUNE_EVERY = 7
KINDS = (("Bounce", 85), ("OOB", 5), ("Expiration", 5), ("Feedback", 5))


def simulate(path: Path, days: int, per_day: int, seed: int = 11) -> int:
    rng = random.Random(seed)
    config = build_config({}, base=path.parent, cfg_path=None)
    start = int(time.time()) - days * DAY
    kinds = [k for k, w in KINDS for _ in range(w)]
    pairs: list[tuple[str, str]] = []
    serial = 0
    with Store.open(path) as store:
        for day in range(days):
            now = start + (day + 1) * DAY
            pending = []
            for _ in range(per_day):
                if pairs and rng.random() < 0.25:
                    domain, recipient = rng.choice(pairs)
                else:
                    serial += 1
                    domain, recipient = f"s{serial * 7919 % DOMAINS}.example", f"user{serial}@mbox{serial % 97}.example"
                    pairs.append((domain, recipient))
                serial += 1
                kind = rng.choice(kinds)
                event = Event(type=kind, recipients=[recipient], domain=domain,
                              timestamp=now - rng.randrange(1, DAY), message_id=f"{serial:032x}", code=550,
                              enhanced_code="5.1.1", content="5.1.1 user unknown",
                              classification="InvalidRecipient", nodeid="0b5e1b4e-9a55-11ee-8c90-0242ac120002",
                              feedback_type="abuse" if kind == "Feedback" else None)
                pending.append((event, decide(event, config.rules)))
            with store.transaction():
                store.apply_events(pending, "log", now, ApplyResult())
            if day % PRUNE_EVERY == PRUNE_EVERY - 1:
                store.prune(now, history_retention=config.store.history_retention)
        store.prune(now, history_retention=config.store.history_retention)
        return now


def used_bytes(path: Path) -> tuple[int, dict[str, int]]:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    used = (conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0])
    tables: dict[str, int] = {}
    try:
        for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            tables[name] = size
    except sqlite3.OperationalError:
        pass     # SQLite built without the dbstat table
    conn.close()
    return used * page, tables


def floor_bytes(path: Path, now: int, work: Path) -> int:
    """The active entries alone, copied in key order into a fresh clustered table."""
    target = work / "floor.db"
    conn = sqlite3.connect(target)
    conn.execute("ATTACH ? AS src", (str(path),))
    conn.execute("CREATE TABLE entries AS SELECT * FROM src.suppressions WHERE 0")
    cols = [r[1] for r in conn.execute("PRAGMA table_info(entries)")]
    conn.execute("DROP TABLE entries")
    conn.execute(f"CREATE TABLE entries ({', '.join(cols)}, PRIMARY KEY (domain, recipient)) WITHOUT ROWID")
    conn.execute("INSERT INTO entries SELECT * FROM src.suppressions WHERE expires IS NULL OR expires > ? "
                 "ORDER BY domain, recipient", (now,))
    conn.commit()
    conn.execute("DETACH src")
    conn.close()
    size, _tables = used_bytes(target)
    return size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=500)
    ap.add_argument("--per-day", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="200 days of 200 events")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.days, args.per_day = 200, 200
    with scratch("bench-size-", args.workdir) as tmp:
        path = tmp / "suppression.db"
        started = time.perf_counter()
        now = simulate(path, args.days, args.per_day)
        note(f"{args.days} days of {args.per_day} events simulated in {time.perf_counter() - started:.1f} s")
        with Store.open(path) as store:
            active = store.stats(now)["entries"]
        size, tables = used_bytes(path)
        figure("store_active_entries", active, "entries")
        figure("store_bytes_per_active_entry", size / active, "B")
        figure("store_floor_bytes_per_entry", floor_bytes(path, now, tmp) / active, "B")
        for name, part in sorted(tables.items(), key=lambda item: -item[1]):
            if part * 100 >= size:
                figure(f"store_{name}_bytes_per_entry", part / active, "B")
        note("target: store_bytes_per_active_entry <= 250")
        reproduce()


if __name__ == "__main__":
    main()
