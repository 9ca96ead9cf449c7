#!/usr/bin/env python3
"""The naive alternative, for docs/performance.md: a per-message SQLite point query against the
store (what a kumod policy doing a sqlite lookup keyed by recipient behind kumo.memoize
does: the memo misses on almost every new recipient, so nearly every message pays the
query) against the snapshot check the Lua module does (an in-memory table index).

Naive side: Python sqlite3 on the real store schema (1M entries over 1,000 domains,
filled like bench/export.py), one prepared statement (sqlite3's statement cache), the
pair and its `@domain` entry in one query, expiry honoured. A fair lower bound for the
same query from Lua (kumod's sqlite binding adds its own call overhead).
Snapshot side: policy_lua/suppression.lua in the project's kumod stand-in, via
bench/lua_check.py (sup:lookup on a 1M-entry snapshot), when both exist; otherwise a
Python dict lookup in the loaded snapshot JSON, and the output says so. The Python dict
figure is printed in both cases as a floor.

Figures: naive_sqlite_miss_us, naive_sqlite_hit_us, snapshot_*_us, naive_vs_snapshot_ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, figure, note, reproduce  # noqa: E402
from export import fill, rows  # noqa: E402  (bench/export.py)

SQL = ("SELECT reason, first_seen, expires FROM suppressions WHERE domain = ? AND recipient IN (?, ?) "
       "AND (expires IS NULL OR expires > ?) LIMIT 1")


def naive(db: Path, entries: int, domains: int, checks: int) -> tuple[float, float]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, check_same_thread=False)
    rng = random.Random(3)
    now = int(time.time())
    misses = [(f"s{rng.randrange(domains)}.example", f"new{i}@mbox{i % 97}.example", f"@mbox{i % 97}.example", now)
              for i in range(checks)]
    # suppressed pairs as bench/export.py filled them: user{i} lives in domain i // share
    share = entries // domains
    hits = []
    for _ in range(checks):
        i = rng.randrange(share * domains)
        hits.append((f"s{i // share}.example", f"user{i}@mbox{i % 97}.example", f"@mbox{i % 97}.example", now))
    execute = conn.execute
    assert execute(SQL, hits[0]).fetchone() is not None and execute(SQL, misses[0]).fetchone() is None
    results = []
    for args in (misses, hits):
        started = time.perf_counter()
        for a in args:
            execute(SQL, a).fetchone()
        results.append((time.perf_counter() - started) / len(args))
    conn.close()
    return results[0], results[1]


def python_dict(entries: int, checks: int) -> tuple[float, float]:
    """A snapshot of `entries` recipients loaded with json.loads; check = two dict gets."""
    text = "{" + ",".join(f'"user{i}@mbox{i % 97}.example":{{"reason":"bounce","since":1,"expires":2}}'
                          for i in range(entries)) + "}"
    recipients = json.loads(text)
    keys = [(f"new{i}@mbox{i % 97}.example", f"@mbox{i % 97}.example") for i in range(checks)]
    get = recipients.get
    started = time.perf_counter()
    for rcpt, at in keys:
        get(rcpt) or get(at)
    return (time.perf_counter() - started) / checks, len(recipients)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--domains", type=int, default=1000)
    ap.add_argument("--checks", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="100k entries, 20k checks")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.entries, args.domains, args.checks = 100_000, 200, 20_000
    tmp = Path(tempfile.mkdtemp(prefix="bench-naive-", dir=args.workdir))
    try:
        db = tmp / "suppression.db"
        fill(db, rows(args.entries, args.domains))
        miss, hit = naive(db, args.entries, args.domains, args.checks)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figure("naive_entries", args.entries, "entries")
    figure("naive_sqlite_miss_us", miss * 1e6, "us")
    figure("naive_sqlite_hit_us", hit * 1e6, "us")

    py, _n = python_dict(args.entries, args.checks)
    figure("snapshot_python_dict_us", py * 1e6, "us")

    lua_ok = (ROOT / "policy_lua" / "suppression.lua").exists() and (HERE / "lua_check.py").exists() \
        and (ROOT / "tests" / "kumo_standin.py").exists()
    if lua_ok:
        import lua_check   # bench/lua_check.py: the module in the kumod stand-in
        r = lua_check.bench_size(args.entries, 100_000 if not args.quick else 20_000)
        figure("snapshot_lua_lookup_clean_us", r["lookup_clean"] * 1e6, "us")
        figure("snapshot_lua_lookup_suppressed_us", r["lookup_suppressed"] * 1e6, "us")
        figure("snapshot_lua_check_http_clean_us", r["check_http_clean"] * 1e6, "us")
        figure("naive_vs_snapshot_ratio", miss / r["check_http_clean"], "x")
        note(f"snapshot side: policy_lua/suppression.lua in the kumod stand-in (bench/lua_check.py), one "
             f"snapshot of {args.entries} entries; naive_vs_snapshot_ratio = naive_sqlite_miss_us / "
             f"snapshot_lua_check_http_clean_us (a whole check_http of a clean message)")
    else:
        figure("naive_vs_snapshot_ratio", miss / py, "x")
        note("snapshot side: NO Lua module/stand-in found; measured as a Python dict lookup of the loaded "
             "snapshot JSON (naive_vs_snapshot_ratio = naive_sqlite_miss_us / snapshot_python_dict_us)")
    note("naive side: Python sqlite3, prepared statement, one query per check (pair + @domain), "
         f"{args.entries} entries over {args.domains} domains, page cache warm")
    reproduce()


if __name__ == "__main__":
    main()
