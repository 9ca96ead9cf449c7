#!/usr/bin/env python3
"""The sharded and hashed snapshot layouts in the project's kumod stand-in.

    python bench/lua_shards.py [--quick] [--shards N] [--python-fallback]

A 5,000,000-entry sending domain written as the exporter shards it by default
(shard_entries 50,000 -> 512 shards of ~9,800 entries; only the shards this run touches
are written, with exactly the entries that hash into them), beside a small single-file
domain. Prints `name: value unit` lines:
  * first lookup in a shard (index warm): the whole check in process CPU time, the
    median and the lowest over 5 shards (the wall time too: on a shared machine it waits
    for a core), and of it the stand-in's own file decode (orjson + lupa table
    conversion; kumod decodes in Rust), measured alone on the same file;
  * warm check_http of a clean recipient: small domain, sharded domain, hashed small
    domain, hashed sharded domain, and the ratios the targets name;
  * which stand-in path runs (first line, stand_in_native): by default, where gcc is,
    its native part (tests/standin_native.c): userdata and kumo.digest.sha256 with its
    BinaryResult are C, as they are native Rust in kumod; with --python-fallback (or no
    gcc) a userdata is a lupa-wrapped Python object and sha256 a Python hashlib call;
  * the stand-in's floors, measured in the same state: a no-op Python call from Lua
    through lupa, one userdata (kumo.time.now()), and kumo.digest.sha256(key).hex; the
    ratios are also printed less the one digest a sharded or hashed check makes;
  * Lua memory held for the big domain after touching 2 to 6 shards;
  * snapshot bytes per entry, plain and hashed.
Targets (issue 14): first lookup in a shard <= 100 ms; sharded warm check within 1.2x
of the small domain's; hashed warm check within 1.5x of the plain one; memory bounded
by the shards touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from kumo_standin import NATIVE_ENV  # noqa: E402
from lua_support import NOW, Policy, shard_name, snapshot_doc  # noqa: E402

from exporter import config, snapshot  # noqa: E402

# plain and hashed, side by side in one kumod state
BIG, SMALL = "big.example", "small.example"
HBIG, HSMALL = "hashed-big.example", "hashed-small.example"
ENTRY = {"reason": "bounce", "since": NOW - 86400, "expires": NOW + 300 * 86400}
AT = "@blocked.example"  # every domain also holds one '@domain' entry (domain_entries = 1)


def address(i: int) -> str:
    return f"user{i}@mail{i % 5000}.example.net"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write(d: Path, domain: str, recipients: dict, hashed: bool, **fields) -> Path:
    extra = {"hash": "sha256"} if hashed else {}
    doc = snapshot_doc(domain, {digest(k) if hashed else k: v for k, v in recipients.items()}, **extra, **fields)
    path = d / (shard_name(domain, fields["shard"], fields["shards"]) if "shard" in fields else f"{domain}.json")
    path.write_text(json.dumps(doc, separators=(",", ":")))
    return path


def write_big(d: Path, domain: str, total: int, shards: int, touched: int, hashed: bool) -> dict[int, list[str]]:
    """The index and the first `touched` shards (in shard order of appearance) of a domain
    of `total` entries; returns shard -> its addresses."""
    members: dict[int, list[str]] = {}
    for i in range(total):
        key = address(i)
        k = int(digest(key)[:8], 16) % shards
        if k not in members:
            if len(members) >= touched:
                continue
            members[k] = []
        members[k].append(key)
    for k, keys in members.items():
        write(d, domain, dict.fromkeys(keys, ENTRY), hashed, domain_entries=0, shard=k, shards=shards)
    write(d, domain, {AT: ENTRY}, hashed, domain_entries=1, shards=shards, count=total)
    return members


def write_small(d: Path, domain: str, n: int, hashed: bool) -> None:
    recipients = dict.fromkeys((address(i) for i in range(n)), ENTRY)
    write(d, domain, {**recipients, AT: ENTRY}, hashed, domain_entries=1)


LOOP = """
return function(sup, msg, n)
  local clock, check = os.clock, sup.check_http
  check(sup, msg)
  collectgarbage(); local t0 = clock()
  for i = 1, n do check(sup, msg) end
  return (clock() - t0) / n
end
"""

# the stand-in's floors: each a loop of n calls, in CPU seconds per call
FLOORS = """
local kumo = require 'kumo'
local key = 'nobody@mail1.example.net'
local function timed(n, f)
  collectgarbage(); local t0 = os.clock()
  for i = 1, n do f(key) end
  return (os.clock() - t0) / n
end
return {
  noop_python_call = function(n, noop) return timed(n, noop) end,
  userdata = function(n) local now = kumo.time.now; return timed(n, function() return now() end) end,
  digest = function(n) local sha256 = kumo.digest.sha256
    return timed(n, function(k) return sha256(k).hex end) end,
  lua_call = function(n) return timed(n, function(k) return k end) end,
}
"""
TOUCHED = 6  # shards written: the first warms the index, the other 5 are first lookups


def warm_and_floors(p: Policy, checks: dict[str, tuple[str, str]], n: int) -> dict[str, float]:
    """The lowest of 3 rounds of each warm check and floor, the rounds interleaved: the
    Python fallback's userdata cost a little more with every one it ever made, and GC
    work moves, so figures meant to be compared are taken side by side."""
    loop, f = p.k.execute(LOOP, "=bench"), p.k.execute(FLOORS, "=floors")
    sup = p.k.eval("sup")
    msgs = {name: p.message([rcpt], from_domain=domain).ud for name, (domain, rcpt) in checks.items()}
    noop = lambda key: key  # noqa: E731  the cheapest Python function lupa can call
    best: dict[str, float] = {}
    for _ in range(3):
        for name, msg in msgs.items():
            best[name] = min(best.get(name, 1.0), loop(sup, msg, n))
        for name in ("noop_python_call", "userdata", "digest", "lua_call"):
            best[name] = min(best.get(name, 1.0), f[name](n, noop))
    # the same checks with kumo.digest.sha256 replaced by a Lua table lookup of the
    # precomputed results (no call, no userdata): the module's own cost, what a free
    # digest would leave to it
    keys = {rcpt for _, rcpt in checks.values()} | {AT, "@" + next(iter(checks.values()))[1].rpartition("@")[2]}
    stub = p.k.execute("""return function(results)
      local digest = require('kumo').digest
      local real, known = digest.sha256, {}
      for key, hex in pairs(results) do known[key] = {hex = hex} end
      digest.sha256 = function(key) return known[key] or real(key) end
      return function() digest.sha256 = real end
    end""")(p.k.lua.table_from({k: digest(k) for k in keys}))
    for _ in range(3):
        for name, msg in msgs.items():
            best[name + "_stub"] = min(best.get(name + "_stub", 1.0), loop(sup, msg, n))
    stub()
    return best


def first_lookups(p: Policy, domain: str, members: dict[int, list[str]]) -> dict:
    """The index warm (a recipient of the first shard), then the first lookup in each other
    shard; Lua memory held for the domain after each."""
    order = list(members)
    assert p.http(members[order[0]][0], from_domain=domain)[0].rejected
    base = p.k.lua_memory_bytes()
    wall, cpu, memory = [], [], {}
    for count, k in enumerate(order[1:], start=2):
        t0, c0 = time.perf_counter(), time.process_time()
        assert p.http(members[k][0], from_domain=domain)[0].rejected
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        memory[count] = p.k.lua_memory_bytes() - base
    return {"first": statistics.median(wall), "first_cpu": statistics.median(cpu), "first_cpu_min": min(cpu),
            "memory": memory}


def run(d: Path, total: int, iterations: int, shards: int) -> dict:
    d.mkdir(parents=True)
    members = {BIG: write_big(d, BIG, total, shards, TOUCHED, hashed=False),
               HBIG: write_big(d, HBIG, total, shards, TOUCHED, hashed=True)}
    write_small(d, SMALL, 1000, hashed=False)
    write_small(d, HSMALL, 1000, hashed=True)
    p = Policy({"snapshot_dir": str(d)})
    out = {"plain": first_lookups(p, BIG, members[BIG]), "hashed": first_lookups(p, HBIG, members[HBIG])}
    decode = p.k.eval("function(path) local c = os.clock(); require('kumo').serde.json_load(path) "
                      "return os.clock() - c end")
    for label, domain in (("plain", BIG), ("hashed", HBIG)):
        one = d / shard_name(domain, list(members[domain])[1], shards)
        out[label]["decode"] = min(decode(str(one)) for _ in range(3))
        out[label]["bytes_per_entry"] = one.stat().st_size / len(members[domain][list(members[domain])[1]])
    out["shard_entries"] = len(members[BIG][list(members[BIG])[1]])
    # a clean recipient whose shard is loaded (in both big domains): the warm path of a sharded domain
    clean = next(f"nobody{i}@mail1.example.net" for i in range(10**6)
                 if int(digest(f"nobody{i}@mail1.example.net")[:8], 16) % shards in members[BIG])
    for domain in (BIG, HBIG, SMALL, HSMALL):
        assert p.http(clean, from_domain=domain)[0].ok
    out["timed"] = warm_and_floors(p, {"warm_big": (BIG, clean), "warm_small": (SMALL, clean),
                                       "warm_hbig": (HBIG, clean), "warm_hsmall": (HSMALL, clean)}, iterations)
    out["errors"] = list(p.k.errors_logged)
    out["native"] = (p.k.native, p.k.native_why, p.k.native_sha256_block)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 500,000-entry domain (~7,800 per shard)")
    ap.add_argument("--shards", type=int, default=None,
                    help="shards of the big domains (default: what the exporter writes for the size)")
    ap.add_argument("--python-fallback", action="store_true",
                    help="the stand-in without its native part (Python userdata and sha256)")
    args = ap.parse_args()
    if args.python_fallback:
        os.environ[NATIVE_ENV] = "0"
    total = 500_000 if args.quick else 5_000_000
    iterations = 20_000 if args.quick else 100_000
    if args.shards is None:
        args.shards = snapshot.shard_count(total, config.defaults()["export"]["shard_entries"])
    with tempfile.TemporaryDirectory() as tmp:
        r = run(Path(tmp) / "snapshots", total, iterations, args.shards)
    assert not r["errors"], r["errors"]
    us, t = 1e6, r["timed"]
    native, why, block = r["native"]
    if native:
        print(f"stand_in_native: yes (tests/standin_native.c: C userdata, kumo.digest.sha256 and its "
              f"BinaryResult in C, sha256 block {block}; native Rust in kumod)")
    else:
        print(f"stand_in_native: no ({why}: the Python fallback, lupa-wrapped Python userdata, hashlib)")
    print(f"domain_entries: {total} in {args.shards} shards ({r['shard_entries']} in the measured shard)")
    for label in ("plain", "hashed"):
        x = r[label]
        print(f"first_lookup_in_a_shard_{label}: {x['first_cpu'] * 1e3:.0f} ms CPU (median of {TOUCHED - 1} "
              f"shards, lowest {x['first_cpu_min'] * 1e3:.0f} ms), {x['first'] * 1e3:.0f} ms wall (stand-in "
              f"json_load of one shard alone: {x['decode'] * 1e3:.0f} ms CPU)")
    print(f"stand_in_noop_python_call: {t['noop_python_call'] * us:.2f} us (a Lua call of a no-op Python "
          f"function through lupa; a Lua function call: {t['lua_call'] * us:.2f} us)")
    made = "a C userdata" if native else "a fresh Python object for lupa"
    print(f"stand_in_userdata: {t['userdata'] * us:.2f} us (kumo.time.now(): one userdata, {made})")
    cost = t["digest"]
    made = ("one C call + a C .hex, as kumod's Rust" if native else
            "Python call + hashlib + userdata; native in kumod")
    print(f"stand_in_kumo_digest_sha256_hex: {cost * us:.2f} us ({made})")
    small, big, hsmall, hbig = t["warm_small"], t["warm_big"], t["warm_hsmall"], t["warm_hbig"]
    print(f"warm_check_small_domain: {small * us:.2f} us")
    print(f"warm_check_sharded_domain: {big * us:.2f} us ({big / small:.2f} x the small domain; "
          f"{(big - small) * us:.2f} us more, one digest is {cost * us:.2f} us)")
    print(f"warm_check_sharded_domain_less_one_digest: {(big - cost) * us:.2f} us "
          f"({(big - cost) / small:.2f} x the small domain)")
    print(f"warm_check_small_domain_hashed: {hsmall * us:.2f} us ({hsmall / small:.2f} x plain)")
    print(f"warm_check_small_domain_hashed_less_one_digest: {(hsmall - cost) * us:.2f} us "
          f"({(hsmall - cost) / small:.2f} x plain)")
    print(f"warm_check_sharded_domain_hashed: {hbig * us:.2f} us ({hbig / big:.2f} x plain sharded)")
    print("# the same with kumo.digest.sha256 a Lua table lookup (no call, no userdata):")
    stub = {k: t[f"warm_{k}_stub"] for k in ("small", "big", "hsmall", "hbig")}
    print(f"warm_check_small_domain_digest_stub: {stub['small'] * us:.2f} us")
    print(f"warm_check_sharded_domain_digest_stub: {stub['big'] * us:.2f} us "
          f"({stub['big'] / stub['small']:.2f} x the small domain)")
    print(f"warm_check_small_domain_hashed_digest_stub: {stub['hsmall'] * us:.2f} us "
          f"({stub['hsmall'] / stub['small']:.2f} x plain)")
    print(f"warm_check_sharded_domain_hashed_digest_stub: {stub['hbig'] * us:.2f} us "
          f"({stub['hbig'] / stub['big']:.2f} x plain sharded, {stub['hbig'] / stub['small']:.2f} x the small domain)")
    for shards_touched, held in sorted(r["plain"]["memory"].items()):
        print(f"memory_held_after_{shards_touched}_shards_touched: {held / 1e6:.1f} MB "
              f"({held / (shards_touched - 1) / 1e6:.1f} MB per shard beyond the first)")
    print(f"bytes_per_entry_plain: {r['plain']['bytes_per_entry']:.1f} bytes")
    print(f"bytes_per_entry_hashed: {r['hashed']['bytes_per_entry']:.1f} bytes")


if __name__ == "__main__":
    main()
