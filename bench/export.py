#!/usr/bin/env python3
"""Export: 1M active entries over 1,000 sending domains -> one snapshot per domain.

The store is filled fast but in arrival order, as ingest leaves it (executemany of the
rows in random order straight into the `suppressions` and `domains` tables of store.py's
schema; the schema itself comes from Store.open), then `kumo-suppress export` runs as a
process, three times:
  export_full_seconds         first export, every domain written
  export_nochange_seconds     again, nothing changed (manifest generations: nothing read)
  export_one_domain_seconds   after `Store.add_manual` of one entry in one domain
Each is the wall time of the whole process; *_internal_seconds is the export's own
duration (state `last_export_duration`), without interpreter start-up.
  export_peak_rss             peak RSS of the full-export process
  export_floor_seconds        the floor: the same rows streamed as per-domain JSON files
                              (the snapshot writer, no fsync or manifest) from a table
                              clustered by (domain, recipient) and filled in key order
  export_full_vs_floor_ratio  export_full_internal_seconds / export_floor_seconds (target <= 2)
Targets: full <= 10 s, no change <= 1 s, one domain changed <= 1 s, RSS <= 200 MB.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import KUMO_SUPPRESS, figure, note, reproduce, run_child, write_config  # noqa: E402

from exporter import snapshot  # noqa: E402
from exporter.store import EVIDENCE, Store, pack_evidence  # noqa: E402

DOMAINS = 1000
REASONS = ("bounce", "bounce", "bounce", "oob", "expiration", "complaint", "manual")


def rows(entries: int, domains: int = DOMAINS, seed: int = 7) -> list[tuple]:
    """The suppressions rows, in arrival order (random with respect to the key)."""
    rng = random.Random(seed)
    now = int(time.time())
    names = [f"s{d}.example" for d in range(domains)]
    out = []
    i = 0
    for d, name in enumerate(names):
        share = entries // domains + (1 if d < entries % domains else 0)
        for recipient in sorted(f"user{i + k}@mbox{(i + k) % 97}.example" for k in range(share)):
            reason = REASONS[i % len(REASONS)]
            since = now - rng.randrange(86400 * 300)
            expires = None if reason in ("complaint", "manual") else now + rng.randrange(86400, 86400 * 365)
            out.append((name, recipient, reason, "log", since, since, expires, 1, "Bounce", f"{i:032x}",
                        550, "5.1.1", "5.1.1 user unknown", "InvalidRecipient", "node", None, now))
            i += 1
    rng.shuffle(out)
    return out


def fill(db: Path, data: list[tuple]) -> None:
    with Store.open(db) as store:
        conn = store.conn
        cols = ["domain", "recipient", "reason", "source", "first_seen", "last_seen", "expires", "count",
                *(f"ev_{c}" for c in EVIDENCE), "note", "updated_at"]
        sql = f"INSERT INTO suppressions({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        for start in range(0, len(data), 50_000):     # ingest's batches, evidence stored as ingest stores it
            with store.transaction():
                conn.executemany(sql, [(*row[:8], *pack_evidence(row[8:15]), *row[15:])
                                       for row in data[start:start + 50_000]])
        with store.transaction():
            conn.executemany("INSERT INTO domains(domain, generation) VALUES (?, 1)",
                             [(d,) for d in sorted({row[0] for row in data})])


def floor(work: Path, data: list[tuple]) -> float:
    """Seconds to stream the rows as per-domain JSON from a table clustered by (domain,
    recipient) and filled in key order."""
    conn = sqlite3.connect(work / "floor.db", isolation_level=None)
    conn.execute("CREATE TABLE entries (domain TEXT, recipient TEXT, reason TEXT, since INTEGER, expires INTEGER, "
                 "PRIMARY KEY (domain, recipient)) WITHOUT ROWID")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
                     sorted((r[0], r[1], r[2], r[4], r[6]) for r in data))
    conn.execute("COMMIT")
    out = work / "floor"
    out.mkdir()
    started = time.perf_counter()
    domains = [r[0] for r in conn.execute("SELECT DISTINCT domain FROM entries ORDER BY domain")]
    for domain in domains:
        count = conn.execute("SELECT COUNT(*) FROM entries WHERE domain = ?", (domain,)).fetchone()[0]
        with open(out / f"{domain}.json", "wb") as fh:
            snapshot.write(fh, "json", snapshot.header(domain, "2026-01-01T00:00:00Z", count), conn.execute(
                "SELECT recipient, reason, since, expires FROM entries WHERE domain = ? ORDER BY recipient",
                (domain,)))
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def export(config: Path) -> tuple[float, float, float, str]:
    wall, rss, out = run_child([*KUMO_SUPPRESS, "-c", str(config), "export"])
    with Store.open(config.parent / "var" / "suppression.db", create=False) as store:
        internal = float(store.get_state("last_export_duration") or "nan")
    return wall, internal, rss, out.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--domains", type=int, default=DOMAINS)
    ap.add_argument("--quick", action="store_true", help="100k entries over 200 domains")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.entries, args.domains = 100_000, 200
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-", dir=args.workdir))
    try:
        config = write_config(tmp)
        started = time.perf_counter()
        data = rows(args.entries, args.domains)
        fill(tmp / "var" / "suppression.db", data)
        note(f"{args.entries} entries over {args.domains} domains filled in {time.perf_counter() - started:.1f} s")

        floor_s = floor(tmp, data)
        del data
        full, full_int, rss, out = export(config)
        note(out.splitlines()[-1] if out else "(no output)")
        same, same_int, _rss, out = export(config)
        note(out.splitlines()[-1] if out else "(no output)")
        with Store.open(tmp / "var" / "suppression.db", create=False) as store:
            store.add_manual("new.user@mbox1.example", "s1.example", "manual", None, "bench", int(time.time()))
        one, one_int, _rss, out = export(config)
        note(out.splitlines()[-1] if out else "(no output)")
        snaps = list((tmp / "snapshots").glob("*.json"))
        note(f"{len(snaps)} snapshot files, {sum(p.stat().st_size for p in snaps) / 1e6:.1f} MB")

        figure("export_entries", args.entries, "entries")
        figure("export_full_seconds", full, "s")
        figure("export_full_internal_seconds", full_int, "s")
        figure("export_nochange_seconds", same, "s")
        figure("export_nochange_internal_seconds", same_int, "s")
        figure("export_one_domain_seconds", one, "s")
        figure("export_one_domain_internal_seconds", one_int, "s")
        figure("export_peak_rss", rss, "MB")
        figure("export_floor_seconds", floor_s, "s")
        figure("export_full_vs_floor_ratio", full_int / floor_s, "x")
        note("targets: export_full_seconds <= 10; export_nochange_seconds <= 1; "
             "export_one_domain_seconds <= 1; export_peak_rss <= 200 (at 1M entries); "
             "export_full_vs_floor_ratio <= 2")
        reproduce()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
