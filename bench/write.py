#!/usr/bin/env python3
"""New entries: a bounce storm (every record a new pair) through the store's write path,
against a bare executemany of the same (domain, recipient) pairs into a fresh table keyed
by them, in the same run.

Both start from an empty file with the store's pragmas (its page cache size included) and
take the pairs in arrival order (random with respect to the key). The write path is what ingest does once a
record is an Event: decide() (rules.py), then Store.apply_events in transactions of
[ingest] batch_lines events (event memory, tombstone check, entry, history, domain
generation). Parsing records is the ingest benchmark's business.

Figures (name: value unit), for each size N:
  write_N_entries_per_s       new entries per second through the store
  write_N_floor_per_s         the bare executemany, same pairs, one transaction
  write_N_vs_floor_ratio      store time / floor time (target <= 4)
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import figure, note, reproduce, scratch, size_arguments  # noqa: E402

from exporter.config import build_config  # noqa: E402
from exporter.records import Event  # noqa: E402
from exporter.rules import decide  # noqa: E402
from exporter.store import CACHE_KIB, ApplyResult, Store  # noqa: E402

DOMAINS = 1000
BATCH = 50_000          # [ingest] batch_lines' default


def storm(count: int, seed: int = 3) -> list[Event]:
    """`count` hard bounces, each for a new (domain, recipient) pair, in arrival order."""
    rng = random.Random(seed)
    now = int(time.time())
    ids = rng.sample(range(count * 4), count)
    return [Event(type="Bounce", recipients=[f"user{i}@mbox{i % 211}.example"],
                  domain=f"s{i * 7919 % DOMAINS}.example", timestamp=now - rng.randrange(1, 86400),
                  message_id=f"{i:032x}", code=550, enhanced_code="5.1.1", content="5.1.1 user unknown",
                  classification="InvalidRecipient", nodeid="0b5e1b4e-9a55-11ee-8c90-0242ac120002")
            for i in ids]


def through_store(path: Path, events: list[Event]) -> float:
    rules = build_config({}, base=path.parent, cfg_path=None).rules
    now = int(time.time())
    result = ApplyResult()
    with Store.open(path) as store:
        started = time.perf_counter()
        for start in range(0, len(events), BATCH):
            with store.transaction():
                store.apply_events([(e, decide(e, rules)) for e in events[start:start + BATCH]], "log", now, result)
        elapsed = time.perf_counter() - started
    assert sum(result.added.values()) == len(events), result
    return elapsed


def floor(path: Path, events: list[Event]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", f"cache_size=-{CACHE_KIB}"):   # the store's
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("CREATE TABLE pairs (domain TEXT, recipient TEXT, PRIMARY KEY (domain, recipient)) WITHOUT ROWID")
    pairs = [(e.domain, e.recipients[0]) for e in events]
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO pairs VALUES (?, ?)", pairs)
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def main() -> None:
    args = size_arguments(__doc__)
    with scratch("bench-write-", args.workdir) as tmp:
        for size in args.sizes:
            events = storm(size)
            floor_s = floor(tmp / f"floor-{size}.db", events)
            store_s = through_store(tmp / f"store-{size}.db", events)
            name = f"write_{size // 1000}k"
            figure(f"{name}_entries_per_s", size / store_s, "entries/s")
            figure(f"{name}_floor_per_s", size / floor_s, "pairs/s")
            figure(f"{name}_vs_floor_ratio", store_s / floor_s, "x")
            for p in tmp.iterdir():
                p.unlink()
        note("target: write_*_vs_floor_ratio <= 4")
        reproduce()


if __name__ == "__main__":
    main()
