"""The store's end state for a fixed corpus, as every reader sees it (list, dump, history,
stats, export), pinned to what the store wrote before its storage was made compact
(tests/vectors/store_outputs.json: the digests of what schema-4 code answered): a change of how entries,
evidence, history or the event memory are kept must not change a single answer.

Regenerate (only for an intended change of behaviour): python tests/test_store_equivalence.py --write
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
from pathlib import Path

import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent))
import logfactory as f  # noqa: E402

from exporter.facade import SuppressionList  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "vectors" / "store_outputs.json"
T0 = 1_789_000_000          # every record lies in the past, and in one of two kinds of lifetime:
VIEW = 1_790_500_000        # ended long ago (stale whenever ingested) or ten years long
DAY = 86400
CONFIG = {
    "store": {"path": "var/suppression.db", "history_retention": "10d"},
    "ingest": {"log_dirs": ["logs"]},
    "export": {"dir": "snapshots", "shard_entries": 40},
    "rules": {"expiration_threshold": 2, "expiration_window": "5d",
              "ttl": {"bounce": "3650d", "oob": "1d", "expiration": "3650d", "complaint": "never",
                      "admin": "3650d", "manual": "never"}},
}


def corpus(seed: int = 5) -> list[list[dict]]:
    """Batches of records (each one ingest_records call): new pairs, refreshes older and
    newer than the entry, replays of earlier records (duplicates), multi-recipient
    bounces, expirations toward a threshold, complaints, stale OOBs, non-suppressing ones."""
    rng = random.Random(seed)
    domains = [f"s{i}.example" for i in range(4)] + ["big.example"]
    sent: list[dict] = []
    batches = []
    serial = 0
    for _b in range(12):
        batch = []
        for _ in range(60):
            serial += 1
            ts = T0 + rng.randrange(0, 20 * DAY)
            domain = "big.example" if rng.random() < 0.4 else rng.choice(domains)
            rcpt = f"u{rng.randrange(150)}@mx{rng.randrange(3)}.example"
            mid = f"{serial:032x}"
            r = rng.random()
            if sent and r < 0.12:
                batch.append(dict(rng.choice(sent)))              # a replay: counts once
                continue
            if r < 0.55:
                rec = f.bounce(rcpt, domain, timestamp=ts, id=mid, content=f"5.1.1 user unknown #{serial % 7}")
            elif r < 0.62:
                rec = f.bounce([rcpt, f"v{serial % 9}@mx9.example"], domain, timestamp=ts, id=mid)
            elif r < 0.75:
                rec = f.expiration(rcpt, domain, timestamp=ts, id=mid)
            elif r < 0.82:
                rec = f.feedback(rcpt, f"news@{domain}", timestamp=ts, id=mid)
            elif r < 0.88:
                rec = f.oob(f"bounces@{domain}", rcpt, timestamp=ts, id=mid)
            elif r < 0.93:
                rec = f.bounce(rcpt, domain, timestamp=ts, id=mid, code=550, enhanced_code="5.7.1",
                               classification="Uncategorized")           # a policy block: no entry
            else:
                rec = f.delivery(rcpt, domain, timestamp=ts, id=mid)
            rec["nodeid"] = f"node-{serial % 3}"
            sent.append(rec)
            batch.append(rec)
        batches.append(batch)
    return batches


def outputs(root: Path) -> dict:
    """Everything a reader can see of the store the corpus and a few operator changes leave."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(tomli_w.dumps(CONFIG))
    with SuppressionList.open(root / "config.toml") as sl:
        batches = corpus()
        for i, batch in enumerate(batches):
            sl.ingest_records(batch, source="webhook" if i % 3 == 0 else "log")
            if i == 4:
                for k in range(0, 150, 11):
                    sl.remove(f"u{k}@mx0.example", "big.example", note=f"asked {k}", now=T0 + 9 * DAY)
                sl.add("u3@mx1.example", "s1.example", ttl="5d", note="short", now=T0 + 2 * DAY)
                sl.add("@mx2.example", "s2.example", reason="manual", now=T0 + 3 * DAY)
                sl.add_many([{"recipient": f"u{k}@mx1.example", "domain": "s0.example", "reason": "bounce",
                              "since": T0 + k, "expires": T0 + 12 * DAY + k} for k in range(0, 150, 7)],
                            now=T0 + 4 * DAY)
            if i == 8:
                sl.add("u5@mx0.example", "big.example", note="back", actor="cli", now=T0 + 15 * DAY)
        pairs = sorted({(e["domain"], e["recipient"]) for e in sl.entries(now=T0)}
                       | {(r["domain"], r["recipient"]) for b in batches for r in b
                          if isinstance(r.get("recipient"), str) for r in [_pair(r)] if r})
        before_prune = [dict(e) for e in sl.entries(now=VIEW)]
        pruned = sl.prune(now=VIEW)
        dump = io.StringIO()
        sl.dump_csv(dump, now=VIEW)
        stats = sl.stats(now=VIEW)
        for key in ("last_ingest", "last_export"):
            stats.pop(key)
        history = {f"{d} {r}": [{k: v for k, v in h.items() if k != "at" or h["source"] in ("manual", "import")}
                                for h in sl.history(r, d)] for d, r in pairs}
        lookups = {f"{d} {r}": sl.lookup(r, d, now=VIEW) for d, r in pairs[::5]}
        searches = {r: sl.page(recipient=r, limit=3, now=VIEW)[0] for _d, r in pairs[::9]}
        sl.export()
        # what the snapshots say, whatever their layout: each domain's keys and entries
        # over its single file or index and shards, and the manifest's counts
        snaps = {}
        for path in sorted((root / "snapshots").iterdir()):
            doc = json.loads(path.read_text())
            if path.name == "manifest.json":
                snaps["manifest"] = {d: e["count"] for d, e in doc["domains"].items()}
            else:
                snaps.setdefault(doc["domain"], {}).update(doc["recipients"])
    return {"before_prune": before_prune, "pruned": pruned, "list": [dict(e) for e in sl_entries(root)],
            "dump": dump.getvalue(), "stats": stats, "history": history, "lookups": lookups,
            "searches": searches, "snapshots": snaps}


def _pair(record: dict) -> dict | None:
    domain = record["headers"].get("From", "").rpartition("@")[2].rstrip(">").lower()
    return {"domain": domain, "recipient": record["recipient"].lower()} if domain else None


def sl_entries(root: Path) -> list[dict]:
    with SuppressionList.open(root / "config.toml", create=False) as sl:
        return list(sl.entries(now=VIEW))


def digests(parts: dict) -> dict:
    """The golden file: each part's sha256 (canonical JSON), and the small parts in full."""
    parts = json.loads(json.dumps(parts))
    return {"sha256": {k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()
                       for k, v in parts.items()}, "stats": parts["stats"], "pruned": parts["pruned"]}


def test_the_same_corpus_leaves_the_same_answers(tmp_path):
    got = digests(outputs(tmp_path / "install"))
    want = json.loads(GOLDEN.read_text())
    assert got["stats"] == want["stats"] and got["pruned"] == want["pruned"]
    differ = [part for part in want["sha256"] if got["sha256"][part] != want["sha256"][part]]
    assert not differ, f"these answers differ from what schema-4 code gave: {differ}"


if __name__ == "__main__":
    import tempfile
    if sys.argv[1:] != ["--write"]:
        raise SystemExit(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(digests(outputs(Path(tmp) / "install")), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
