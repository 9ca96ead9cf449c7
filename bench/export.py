#!/usr/bin/env python3
"""Export: 1M active entries over 1,000 sending domains -> one snapshot per domain.

The store is filled fast (executemany straight into the `suppressions` and `domains`
tables of store.py's schema; the schema itself comes from Store.open), then
`kumo-suppress export` runs as a process, three times:
  export_full_seconds         first export, every domain written
  export_nochange_seconds     again, nothing changed (manifest generations: nothing read)
  export_one_domain_seconds   after `Store.add_manual` of one entry in one domain
Each is the wall time of the whole process; *_internal_seconds is the export's own
duration (state `last_export_duration`), without interpreter start-up.
  export_peak_rss             peak RSS of the full-export process
Targets: full <= 10 s, no change <= 1 s, one domain changed <= 1 s, RSS <= 200 MB.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import KUMO_SUPPRESS, figure, note, reproduce, run_child, write_config  # noqa: E402

from exporter.store import EVIDENCE, Store  # noqa: E402

DOMAINS = 1000
REASONS = ("bounce", "bounce", "bounce", "oob", "expiration", "complaint", "manual")


def fill(db: Path, entries: int, domains: int = DOMAINS, seed: int = 7) -> None:
    rng = random.Random(seed)
    now = int(time.time())
    with Store.open(db) as store:
        conn = store.conn
        conn.execute("PRAGMA cache_size=-262144")   # 256 MB: the secondary indexes fill at random
        cols = ["domain", "recipient", "reason", "source", "first_seen", "last_seen", "expires", "count",
                *(f"ev_{c}" for c in EVIDENCE), "note", "updated_at"]
        sql = f"INSERT INTO suppressions({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        names = [f"s{d}.example" for d in range(domains)]
        batch = []
        conn.execute("BEGIN")
        i = 0
        for d, name in enumerate(names):      # primary-key order: the b-tree fills by appending
            share = entries // domains + (1 if d < entries % domains else 0)
            for recipient in sorted(f"user{i + k}@mbox{(i + k) % 97}.example" for k in range(share)):
                reason = REASONS[i % len(REASONS)]
                since = now - rng.randrange(86400 * 300)
                expires = None if reason in ("complaint", "manual") else now + rng.randrange(86400, 86400 * 365)
                batch.append((name, recipient, reason, "log", since, since, expires, 1, "Bounce", f"{i:032x}",
                              550, "5.1.1", "5.1.1 user unknown", "InvalidRecipient", "node", None, now))
                i += 1
            if len(batch) >= 50_000:
                conn.executemany(sql, batch)
                batch.clear()
        conn.executemany(sql, batch)
        conn.executemany("INSERT INTO domains(domain, generation) VALUES (?, 1)", [(d,) for d in names])
        conn.execute("COMMIT")


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
        fill(tmp / "var" / "suppression.db", args.entries, args.domains)
        note(f"{args.entries} entries over {args.domains} domains filled in {time.perf_counter() - started:.1f} s")

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
        note("targets: export_full_seconds <= 10; export_nochange_seconds <= 1; "
             "export_one_domain_seconds <= 1; export_peak_rss <= 200 (at 1M entries)")
        reproduce()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
