#!/usr/bin/env python3
"""What the Lua module's memoize caches cost kumod, measured in the project's stand-in.

    python bench/lua_caches.py [--quick]

Prints `name: value unit` lines:
  * metric series: kumod lists ~15 Prometheus series per memoize cache and never removes
    them; measured for many small sending domains plus large ones, beside what one cache
    per domain (the module's former design) gives for the same domains;
  * memory of a large domain re-exported every check_interval (its own capacity-1
    cache): peak and steady Lua memory against one loaded version;
  * memory of many small domains re-exported every check_interval (one shared cache,
    ttl 300 s): how much stale versions add, and when they are gone.
The large-file threshold is set to 1 MiB here (default 16 MiB) to keep the run short.
Memory is the stand-in's Lua heap after a full collection; kumod keeps memoized data in
Rust, so absolute bytes differ, the ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from kumo_standin import SERIES_PER_MEMOIZE_CACHE  # noqa: E402
from lua_support import LARGE_SNAPSHOT_BYTES, Policy, entry, write_snapshot  # noqa: E402

CHECK_INTERVAL = 5


def recipients(n: int, version: int) -> dict:
    out = {f"user{i}@mail{i % 500}.example.net": entry() for i in range(n)}
    out[f"v{version}@example.net"] = entry()
    return out


def touch(path: Path, version: int) -> None:
    os.utime(path, (1_700_000_000 + version, 1_700_000_000 + version))


def check(p: Policy, rcpt: str, domain: str) -> None:
    assert p.http(rcpt, from_domain=domain)[0].rejected, (rcpt, domain)


def series(d: Path, small: int, large: int, large_entries: int) -> None:
    for i in range(small):
        write_snapshot(d, f"small{i}.example", recipients(20, 0))
    for i in range(large):
        write_snapshot(d, f"large{i}.example", recipients(large_entries, 0))
    p = Policy({"snapshot_dir": str(d), "large_snapshot_bytes": LARGE_SNAPSHOT_BYTES})
    for i in range(small):
        check(p, "v0@example.net", f"small{i}.example")
    for i in range(large):
        check(p, "v0@example.net", f"large{i}.example")
    domains = small + large
    print(f"domains: {domains} ({small} small, {large} of {large_entries} entries)")
    print(f"memoize_caches: {len(p.k.memo_names())}")
    print(f"metric_series: {p.k.metric_series()} series")
    print(f"metric_series_one_cache_per_domain: {SERIES_PER_MEMOIZE_CACHE * (domains + 1)} series")


def large_domain(d: Path, entries: int, versions: int) -> None:
    p = Policy({"snapshot_dir": str(d), "check_interval": CHECK_INTERVAL,
                "large_snapshot_bytes": LARGE_SNAPSHOT_BYTES})
    base = p.k.lua_memory_bytes()
    path = write_snapshot(d, "large.example", recipients(entries, 0))
    check(p, "v0@example.net", "large.example")
    one = p.k.lua_memory_bytes() - base
    peak = one
    for v in range(1, versions + 1):
        write_snapshot(d, "large.example", recipients(entries, v))
        touch(path, v)
        p.clock.advance(CHECK_INTERVAL + 1)
        check(p, f"v{v}@example.net", "large.example")
        peak = max(peak, p.k.lua_memory_bytes() - base)
    steady = p.k.lua_memory_bytes() - base
    print(f"large_domain_entries: {entries}")
    print(f"large_domain_one_version: {one / 1e6:.1f} MB")
    print(f"large_domain_after_{versions}_reexports_peak: {peak / 1e6:.1f} MB ({peak / one:.2f} x one version)")
    print(f"large_domain_after_{versions}_reexports_steady: {steady / 1e6:.1f} MB ({steady / one:.2f} x)")


def small_domains(d: Path, domains: int, entries: int, minutes: int) -> None:
    p = Policy({"snapshot_dir": str(d), "check_interval": CHECK_INTERVAL})
    base = p.k.lua_memory_bytes()
    paths = [write_snapshot(d, f"s{i}.example", recipients(entries, 0)) for i in range(domains)]
    for i in range(domains):
        check(p, "v0@example.net", f"s{i}.example")
    one = p.k.lua_memory_bytes() - base
    # every domain re-exported once a minute, all domains checked every check_interval
    peak, version = one, 0
    for minute in range(1, minutes + 1):
        version += 1
        for i, path in enumerate(paths):
            write_snapshot(d, f"s{i}.example", recipients(entries, version))
            touch(path, version)
        for _ in range(60 // CHECK_INTERVAL):
            p.clock.advance(CHECK_INTERVAL)
            for i in range(domains):
                check(p, f"v{version}@example.net", f"s{i}.example")
        peak = max(peak, p.k.lua_memory_bytes() - base)
    # then no new export: stale versions leave within the shared ttl + lruttl's prune
    for _ in range(7):
        p.clock.advance(60)
        for i in range(domains):
            check(p, f"v{version}@example.net", f"s{i}.example")
    settled = p.k.lua_memory_bytes() - base
    print(f"small_domains: {domains} x {entries} entries, re-exported every minute for {minutes} min")
    print(f"small_domains_one_version_each: {one / 1e6:.2f} MB")
    print(f"small_domains_peak_while_reexported: {peak / 1e6:.2f} MB ({peak / one:.2f} x)")
    print(f"small_domains_7_min_after_last_export: {settled / 1e6:.2f} MB ({settled / one:.2f} x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        series(Path(tmp) / "series", small=300 if args.quick else 2000, large=3,
               large_entries=20_000)
        large_domain(Path(tmp) / "large", 50_000 if args.quick else 200_000, versions=4)
        small_domains(Path(tmp) / "small", 50 if args.quick else 200, 200, minutes=8)


if __name__ == "__main__":
    main()
