#!/usr/bin/env python3
"""The sharded and hashed snapshot layouts in the project's kumod stand-in.

    python bench/lua_shards.py [--quick]

A 5,000,000-entry sending domain written as the exporter shards it by default
(shard_entries 50,000 -> 128 shards of ~39,000 entries; only the shards this run touches
are written, with exactly the entries that hash into them), beside a small single-file
domain. Prints `name: value unit` lines:
  * first lookup in a shard (index warm): the whole check in process CPU time (the wall
    time too: on a shared machine it waits for a core), and of it the stand-in's own
    file decode (Python json + lupa table conversion; kumod decodes in Rust), measured
    alone on the same file;
  * warm check_http of a clean recipient: small domain, sharded domain, hashed small
    domain, hashed sharded domain, and the ratios the targets name; the stand-in's
    kumo.digest is a Python call (hashlib via lupa) where kumod's is native, so the
    ratios are also printed less the one digest a sharded or hashed check makes;
  * Lua memory held for the big domain after touching 1, 2 and 4 shards;
  * snapshot bytes per entry, plain and hashed.
Targets (issue 14): first lookup in a shard <= 100 ms; sharded warm check within 1.2x
of the small domain's; hashed warm check within 1.5x of the plain one; memory bounded
by the shards touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from lua_support import NOW, Policy, shard_name, snapshot_doc  # noqa: E402

BIG, SMALL = "big.example", "small.example"
ENTRY = {"reason": "bounce", "since": NOW - 86400, "expires": NOW + 300 * 86400}


def address(i: int) -> str:
    return f"user{i}@mail{i % 5000}.example.net"


def write_big(d: Path, total: int, shards: int, touched: int, hashed: bool) -> dict[int, list[str]]:
    """The index and the first `touched` shards (in shard order of appearance) of a domain
    of `total` entries; returns shard -> its addresses."""
    members: dict[int, list[str]] = {}
    digests: dict[str, str] = {}
    wanted: list[int] = []
    for i in range(total):
        key = address(i)
        h = hashlib.sha256(key.encode()).hexdigest()
        k = int(h[:8], 16) % shards
        if k not in members:
            if len(wanted) >= touched:
                continue
            wanted.append(k)
            members[k] = []
        members[k].append(key)
        digests[key] = h
    extra = {"hash": "sha256"} if hashed else {}
    for k, keys in members.items():
        recipients = {digests[key] if hashed else key: ENTRY for key in keys}
        doc = snapshot_doc(BIG, recipients, **extra, domain_entries=0, shard=k, shards=shards)
        (d / shard_name(BIG, k, shards)).write_text(json.dumps(doc, separators=(",", ":")))
    at = "@blocked.example"
    index = snapshot_doc(BIG, {hashlib.sha256(at.encode()).hexdigest() if hashed else at: ENTRY},
                         **extra, domain_entries=1, shards=shards)
    index["count"] = total
    (d / f"{BIG}.json").write_text(json.dumps(index, separators=(",", ":")))
    return members


def write_small(d: Path, n: int, hashed: bool) -> None:
    keys = [address(i) for i in range(n)]
    recipients = {hashlib.sha256(k.encode()).hexdigest() if hashed else k: ENTRY for k in keys}
    extra = {"hash": "sha256", "domain_entries": 0} if hashed else {}
    (d / f"{SMALL}.json").write_text(json.dumps(snapshot_doc(SMALL, recipients, **extra), separators=(",", ":")))


LOOP = """
return function(sup, msg, n)
  local clock, check = os.clock, sup.check_http
  check(sup, msg)
  collectgarbage(); local t0 = clock()
  for i = 1, n do check(sup, msg) end
  return (clock() - t0) / n
end
"""


def warm(p: Policy, domain: str, rcpt: str, n: int) -> float:
    msg = p.message([rcpt], from_domain=domain)
    loop = p.k.execute(LOOP, "=bench")
    return min(loop(p.k.eval("sup"), msg.ud, n) for _ in range(3))


def run(d: Path, total: int, hashed: bool, iterations: int) -> dict:
    d.mkdir(parents=True)
    shards = 128
    members = write_big(d, total, shards, touched=4, hashed=hashed)
    write_small(d, 1000, hashed)
    p = Policy({"snapshot_dir": str(d)})
    order = list(members)
    clean_big = "nobody@mail1.example.net"
    # the index warm (a recipient of the first shard), then the first lookup in another shard
    assert p.http(members[order[0]][0], from_domain=BIG)[0].rejected
    base = p.k.lua_memory_bytes()
    rcpt = members[order[1]][0]
    t0, c0 = time.perf_counter(), time.process_time()
    assert p.http(rcpt, from_domain=BIG)[0].rejected
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    decode = p.k.eval("function(path) local c = os.clock(); require('kumo').serde.json_load(path) "
                      "return os.clock() - c end")
    decode_s = min(decode(str(d / shard_name(BIG, order[1], shards))) for _ in range(2))
    one_shard = p.k.lua_memory_bytes() - base
    memory = {2: one_shard}
    for count, k in enumerate(order[2:], start=3):
        assert p.http(members[k][0], from_domain=BIG)[0].rejected
        memory[count] = p.k.lua_memory_bytes() - base
    # a clean recipient whose shard is loaded: the warm path of a sharded domain
    clean = next(f"nobody{i}@mail1.example.net" for i in range(10**6)
                 if int(hashlib.sha256(f"nobody{i}@mail1.example.net".encode()).hexdigest()[:8], 16) % shards
                 in members)
    assert p.http(clean, from_domain=BIG)[0].ok and p.http(clean_big, from_domain=SMALL)[0].ok
    digest = p.k.execute("""return function(n)
      local sha256, clock = require('kumo').digest.sha256, os.clock
      local t0 = clock()
      for i = 1, n do local x = sha256('nobody@mail1.example.net').hex end
      return (clock() - t0) / n end""")
    return {
        "digest": min(digest(iterations) for _ in range(3)),
        "first": first, "first_cpu": first_cpu, "decode": decode_s, "shard_entries": len(members[order[1]]),
        "warm_big": warm(p, BIG, clean, iterations), "warm_small": warm(p, SMALL, clean_big, iterations),
        "memory": memory, "errors": list(p.k.errors_logged),
        "bytes_per_entry": (d / shard_name(BIG, order[1], shards)).stat().st_size / len(members[order[1]]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 500,000-entry domain (~4,000 per shard)")
    args = ap.parse_args()
    total = 500_000 if args.quick else 5_000_000
    iterations = 20_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(Path(tmp) / "plain", total, False, iterations)
        hashed = run(Path(tmp) / "hashed", total, True, iterations)
    assert not plain["errors"] and not hashed["errors"], (plain["errors"], hashed["errors"])
    print(f"domain_entries: {total} in 128 shards ({plain['shard_entries']} in the measured shard)")
    for label, r in (("plain", plain), ("hashed", hashed)):
        print(f"first_lookup_in_a_shard_{label}: {r['first_cpu'] * 1e3:.0f} ms CPU, "
              f"{r['first'] * 1e3:.0f} ms wall (stand-in json_load of that shard alone: "
              f"{r['decode'] * 1e3:.0f} ms CPU)")
    print(f"warm_check_small_domain: {plain['warm_small'] * 1e6:.2f} us")
    print(f"warm_check_sharded_domain: {plain['warm_big'] * 1e6:.2f} us "
          f"({plain['warm_big'] / plain['warm_small']:.2f} x the small domain)")
    cost = plain["digest"]
    print(f"stand_in_kumo_digest_sha256_hex: {cost * 1e6:.2f} us (a Python call here; native Rust in kumod)")
    print(f"warm_check_sharded_domain_less_one_digest: {(plain['warm_big'] - cost) * 1e6:.2f} us "
          f"({(plain['warm_big'] - cost) / plain['warm_small']:.2f} x the small domain)")
    print(f"warm_check_small_domain_hashed: {hashed['warm_small'] * 1e6:.2f} us "
          f"({hashed['warm_small'] / plain['warm_small']:.2f} x plain)")
    print(f"warm_check_small_domain_hashed_less_one_digest: {(hashed['warm_small'] - cost) * 1e6:.2f} us "
          f"({(hashed['warm_small'] - cost) / plain['warm_small']:.2f} x plain)")
    print(f"warm_check_sharded_domain_hashed: {hashed['warm_big'] * 1e6:.2f} us "
          f"({hashed['warm_big'] / plain['warm_big']:.2f} x plain sharded)")
    for shards_touched, held in sorted(plain["memory"].items()):
        print(f"memory_held_after_{shards_touched}_shards_touched: {held / 1e6:.1f} MB "
              f"({held / (shards_touched - 1) / 1e6:.1f} MB per shard beyond the first)")
    print(f"bytes_per_entry_plain: {plain['bytes_per_entry']:.1f} bytes")
    print(f"bytes_per_entry_hashed: {hashed['bytes_per_entry']:.1f} bytes")


if __name__ == "__main__":
    main()
