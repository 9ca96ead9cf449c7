#!/usr/bin/env python3
"""Export of one large sending domain, one new entry: one file (today's layout) vs shards.

    python bench/shards.py [--entries N] [--quick]

Not part of bench/run: at 5M entries filling the store and the three first exports take
several minutes; tests/test_bench_quick.py runs it with --quick.

One store holds N active entries (default 5,000,000) for big.example. The same store is
exported into three snapshot directories, each by `kumo-suppress export` as a process:
  single_*     [export].shard_entries above N: the domain is one file, as before shards
  sharded_*    shard_entries = 50000 (the default): an index plus 2^k shards
  hashed_*     the same with hash_recipients = true
For each: the first export (every file written), then one `add` of a new entry in that
domain and the export after it:
  *_one_new_entry_seconds          wall time of that export (process start-up included)
  *_one_new_entry_internal_seconds the export's own duration (state last_export_duration)
  *_one_new_entry_bytes_rewritten  bytes of the snapshot files it replaced
  *_domain_bytes                   bytes of all the domain's files
  *_bytes_per_entry                domain bytes / N
Targets (issue 14, at 5M): sharded one-new-entry export <= 1 s, rewriting <= 1/32 of
the domain's bytes.
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
from _common import KUMO_SUPPRESS, figure, note, reproduce, run_child  # noqa: E402

from exporter import snapshot  # noqa: E402
from exporter.store import EVIDENCE, Store  # noqa: E402

DOMAIN = "big.example"


def fill(db: Path, entries: int, seed: int = 14) -> None:
    """`entries` active entries of DOMAIN straight into store.py's tables, in key order
    (fixed-width numbers sort as they count), so the b-tree fills by appending."""
    rng = random.Random(seed)
    now = int(time.time())
    with Store.open(db) as store:
        conn = store.conn
        conn.execute("PRAGMA cache_size=-262144")
        cols = ["domain", "recipient", "reason", "source", "first_seen", "last_seen", "expires", "count",
                *(f"ev_{c}" for c in EVIDENCE), "note", "updated_at"]
        sql = f"INSERT INTO suppressions({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        conn.execute("BEGIN")
        for start in range(0, entries, 50_000):
            batch = []
            for i in range(start, min(start + 50_000, entries)):
                since = now - rng.randrange(86400 * 300)
                batch.append((DOMAIN, f"user{i:08d}@mbox{i % 97}.example", "bounce", "log", since, since,
                              now + rng.randrange(86400, 86400 * 365), 1, "Bounce", f"{i:032x}", 550, "5.1.1",
                              "5.1.1 user unknown", "InvalidRecipient", "node", None, now))
            conn.executemany(sql, batch)
        conn.execute("INSERT INTO domains(domain, generation) VALUES (?, 1)", (DOMAIN,))
        conn.execute("COMMIT")


def write_config(root: Path, name: str, export: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(f'[store]\npath = "var/suppression.db"\n[ingest]\nlog_dirs = ["logs"]\n'
                    f'[export]\ndir = "{name}"\n{export}\n')
    return path


def files(directory: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for p in snapshot.snapshot_files(directory):
        st = p.stat()
        out[p.name] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def export(config: Path, db: Path) -> tuple[float, float]:
    wall, _rss, _out = run_child([*KUMO_SUPPRESS, "-c", str(config), "export"])
    with Store.open(db, create=False) as store:
        return wall, float(store.get_state("last_export_duration") or "nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=5_000_000)
    ap.add_argument("--quick", action="store_true", help="50k entries, shard_entries 2000 (32 shards)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    shard_entries = 2000 if args.quick else 50_000
    if args.quick:
        args.entries = 50_000
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-", dir=args.workdir))
    db = tmp / "var" / "suppression.db"
    try:
        started = time.perf_counter()
        fill(db, args.entries)
        note(f"{args.entries} entries of {DOMAIN} filled in {time.perf_counter() - started:.1f} s")
        layouts = {
            "single": f"shard_entries = {args.entries * 2}",
            "sharded": f"shard_entries = {shard_entries}",
            "hashed": f"shard_entries = {shard_entries}\nhash_recipients = true",
        }
        for n, (name, export_keys) in enumerate(layouts.items()):
            config = write_config(tmp, name, export_keys)
            first, first_int = export(config, db)
            before = files(tmp / name)
            with Store.open(db, create=False) as store:
                store.add_manual(f"new{n}.user@mbox1.example", DOMAIN, "manual", None, "bench", int(time.time()))
            # the other layouts' directories have not seen this entry: they write it at their first export
            one, one_int = export(config, db)
            after = files(tmp / name)
            rewritten = sum(v[2] for k, v in after.items() if before.get(k, (None, None))[:2] != v[:2])
            total = sum(v[2] for v in after.values())
            note(f"{name}: {len(after)} file(s); first export {first:.1f} s")
            figure(f"{name}_first_export_seconds", first, "s")
            figure(f"{name}_one_new_entry_seconds", one, "s")
            figure(f"{name}_one_new_entry_internal_seconds", one_int, "s")
            figure(f"{name}_one_new_entry_bytes_rewritten", rewritten, "bytes")
            figure(f"{name}_domain_bytes", total, "bytes")
            figure(f"{name}_rewritten_fraction", rewritten / total, "of the domain")
            figure(f"{name}_bytes_per_entry", total / args.entries, "bytes")
        note(f"targets at 5M entries: sharded_one_new_entry_seconds <= 1; "
             f"sharded_rewritten_fraction <= {1 / 32:.4f} (1/32)")
        reproduce()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
