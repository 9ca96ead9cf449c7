"""The sharded and hashed snapshot layouts in the module (index + shards, sha256 keys,
domain_entries), and that the single-file layout is still read. The files are written by
tests/lua_support.py's write_layout to the agreed layout (docs/lua-module.md)."""

import json

import pytest

from lua_support import (NOW, Policy, entry, key_digest, shard_name, shard_of, write_layout,
                         write_layout_manifest, write_snapshot)

DOMAIN = "example.com"
SHARDS = 8


def many(n: int = 40) -> dict:
    out = {f"user{i}@mail{i % 3}.example.net": entry() for i in range(n)}
    out["@bad.example"] = entry("manual")
    return out


def rejected(p, rcpt):
    return p.http(rcpt, from_domain=DOMAIN)[0].rejected


def shard_files_read(p):
    return sorted({path.rsplit("/", 1)[1] for path in p.k.io_paths if "_shard-" in path})


@pytest.fixture
def snap(tmp_path):
    return tmp_path / "snapshots"


@pytest.mark.parametrize("hashed", [False, True], ids=["plain", "hashed"])
@pytest.mark.parametrize("shards", [1, SHARDS], ids=["single", "sharded"])
def test_every_layout_suppresses_what_it_holds(snap, shards, hashed):
    recipients = many()
    write_layout(snap, DOMAIN, recipients, shards=shards, hashed=hashed)
    p = Policy({"snapshot_dir": str(snap)})
    for rcpt in recipients:
        if not rcpt.startswith("@"):
            assert rejected(p, rcpt), rcpt
    r, _ = p.http("anyone@bad.example", from_domain=DOMAIN)
    assert r.rejected and "manual" in r.text
    assert not rejected(p, "nobody@mail1.example.net")
    assert p.lookup("user3@mail0.example.net", DOMAIN)["reason"] == "bounce"
    assert p.k.errors_logged == []


def test_hashed_snapshots_hold_no_plain_address(snap):
    recipients = many()
    for path in write_layout(snap, DOMAIN, recipients, shards=SHARDS, hashed=True):
        text = path.read_text()
        assert "@" not in text.replace(f'"domain": "{DOMAIN}"', "")
    p = Policy({"snapshot_dir": str(snap)})
    assert rejected(p, "user7@mail1.example.net") and rejected(p, "x@bad.example")


def test_a_shard_is_loaded_when_a_recipient_first_hashes_into_it(snap):
    write_layout(snap, DOMAIN, many(), shards=SHARDS)
    p = Policy({"snapshot_dir": str(snap)})
    assert rejected(p, "x@bad.example"), "its own shard first, then the index's @domain entry"
    assert shard_files_read(p) == [shard_name(DOMAIN, shard_of("x@bad.example", SHARDS), SHARDS)]
    p.k.io_paths.clear()
    rcpt = next(r for r in many() if not r.startswith("@") and shard_of(r, SHARDS) != shard_of("x@bad.example", SHARDS))
    assert rejected(p, rcpt)
    assert shard_files_read(p) == [shard_name(DOMAIN, shard_of(rcpt, SHARDS), SHARDS)]
    p.k.io_paths.clear()
    for _ in range(20):
        assert rejected(p, rcpt)
    assert p.k.io_paths == [], "warm: no file IO"


def test_only_a_changed_shard_is_reloaded(snap):
    recipients = many()
    write_layout(snap, DOMAIN, recipients, shards=SHARDS)
    p = Policy({"snapshot_dir": str(snap)})
    plain = [r for r in recipients if not r.startswith("@")]
    for r in plain:
        assert rejected(p, r)
    before = p.k.memo_stats("user.kumo_suppression.default.snapshots")["populated"]
    # rewrite only the index and shard 0, as the exporter does for a change in shard 0
    target = next(r for r in plain if shard_of(r, SHARDS) == 0)
    kept = {k: v for k, v in recipients.items() if k != target}
    tmp = snap.parent / "rewrite"
    write_layout(tmp, DOMAIN, kept, shards=SHARDS)
    (tmp / shard_name(DOMAIN, 0, SHARDS)).replace(snap / shard_name(DOMAIN, 0, SHARDS))
    (tmp / f"{DOMAIN}.json").replace(snap / f"{DOMAIN}.json")
    p.clock.advance(6)
    assert not rejected(p, target)
    for r in plain:
        if r != target:
            assert rejected(p, r)
    assert p.k.memo_stats("user.kumo_suppression.default.snapshots")["populated"] - before == 2, \
        "the index and shard 0, nothing else"


def test_caches_stay_bounded_with_shards(snap):
    write_layout(snap, DOMAIN, many(200), shards=64)
    p = Policy({"snapshot_dir": str(snap)})
    rejected(p, "user0@mail0.example.net")
    series = p.k.metric_series()
    for i in range(200):
        assert rejected(p, f"user{i}@mail{i % 3}.example.net")
    assert p.k.metric_series() == series


def test_domain_entries_zero_skips_the_domain_lookup(snap):
    """domain_entries = 0 says the file has no '@domain' entry: the module does not look
    (nor, hashed, compute a second digest); a file that lies is not consulted."""
    write_layout(snap, DOMAIN, {"@bad.example": entry()}, hashed=True, domain_entries=False)
    doc = json.loads((snap / f"{DOMAIN}.json").read_text())
    doc["domain_entries"] = 0
    (snap / f"{DOMAIN}.json").write_text(json.dumps(doc))
    p = Policy({"snapshot_dir": str(snap)})
    assert not rejected(p, "x@bad.example")
    doc["domain_entries"] = 1
    write_layout(snap, DOMAIN, {"@bad.example": entry()}, hashed=True)
    p.clock.advance(6)
    assert rejected(p, "x@bad.example")


def test_upgrade_single_to_shards_and_back(snap):
    recipients = many()
    write_layout(snap, DOMAIN, recipients)
    p = Policy({"snapshot_dir": str(snap)})
    assert rejected(p, "user1@mail1.example.net")
    write_layout(snap, DOMAIN, recipients, shards=SHARDS)
    p.clock.advance(6)
    assert rejected(p, "user1@mail1.example.net") and rejected(p, "a@bad.example")
    for shard in snap.glob(f"{DOMAIN}_shard-*"):
        shard.unlink()
    write_layout(snap, DOMAIN, {"user2@mail2.example.net": entry()})
    p.clock.advance(6)
    assert rejected(p, "user2@mail2.example.net") and not rejected(p, "user1@mail1.example.net")
    assert p.k.errors_logged == []


def test_missing_shard_fails_open_for_its_recipients_with_one_error_per_index_version(snap):
    recipients = many()
    write_layout(snap, DOMAIN, recipients, shards=SHARDS)
    plain = [r for r in recipients if not r.startswith("@")]
    lost = shard_of(plain[0], SHARDS)
    (snap / shard_name(DOMAIN, lost, SHARDS)).unlink()
    p = Policy({"snapshot_dir": str(snap)})
    for _ in range(3):
        for r in plain:
            assert rejected(p, r) == (shard_of(r, SHARDS) != lost), r
        assert rejected(p, "x@bad.example"), "the index's @domain entries still count"
    assert len(p.k.errors_logged) == 1 and "missing" in p.k.errors_logged[0], p.k.errors_logged


@pytest.mark.parametrize("damage", ["not json", "wrong shard", "plain in a hashed index", "bad count"])
def test_corrupt_shard_fails_open_with_one_error_per_version(snap, damage):
    recipients = many()
    write_layout(snap, DOMAIN, recipients, shards=SHARDS, hashed=damage == "plain in a hashed index")
    plain = [r for r in recipients if not r.startswith("@")]
    broken = shard_of(plain[0], SHARDS)
    path = snap / shard_name(DOMAIN, broken, SHARDS)
    doc = json.loads(path.read_text())
    if damage == "not json":
        path.write_text("{ not json")
    else:
        if damage == "wrong shard":
            doc["shard"] = (broken + 1) % SHARDS
        elif damage == "plain in a hashed index":
            del doc["hash"]
        else:
            doc["count"] = "many"
        path.write_text(json.dumps(doc))
    p = Policy({"snapshot_dir": str(snap)})
    for _ in range(3):
        for r in plain:
            assert rejected(p, r) == (shard_of(r, SHARDS) != broken), r
    assert len(p.k.errors_logged) == 1 and "bad snapshot" in p.k.errors_logged[0], p.k.errors_logged


@pytest.mark.parametrize("shards", [3, 1, 10000, "8"])
def test_corrupt_index_fails_open_with_one_error(snap, shards):
    write_layout(snap, DOMAIN, many(), shards=SHARDS)
    doc = json.loads((snap / f"{DOMAIN}.json").read_text())
    doc["shards"] = shards
    (snap / f"{DOMAIN}.json").write_text(json.dumps(doc))
    p = Policy({"snapshot_dir": str(snap)})
    for _ in range(3):
        assert not rejected(p, "user1@mail1.example.net") and not rejected(p, "x@bad.example")
    assert len(p.k.errors_logged) == 1 and "shards" in p.k.errors_logged[0], p.k.errors_logged


@pytest.mark.parametrize("shards,hashed", [(SHARDS, False), (1, True)])
def test_kumod_without_digest_fails_open_with_one_error(snap, shards, hashed):
    write_layout(snap, DOMAIN, many(), shards=shards, hashed=hashed)
    write_snapshot(snap, "plain.example", {"user1@mail1.example.net": entry()})
    p = Policy({"snapshot_dir": str(snap)}, with_digest=False)
    for _ in range(3):
        assert not rejected(p, "user1@mail1.example.net")
    assert p.http("user1@mail1.example.net", from_domain="plain.example")[0].rejected
    assert len(p.k.errors_logged) == 1 and "kumo.digest" in p.k.errors_logged[0], p.k.errors_logged


def test_sharded_and_hashed_without_kumo_fs_use_the_manifest(snap):
    recipients = many()
    write_layout(snap, DOMAIN, recipients, shards=SHARDS, hashed=True)
    write_layout_manifest(snap)
    p = Policy({"snapshot_dir": str(snap)}, with_fs=False)
    for r in recipients:
        if not r.startswith("@"):
            assert rejected(p, r), r
    assert rejected(p, "x@bad.example") and not rejected(p, "nobody@mail1.example.net")
    assert p.k.errors_logged == []


def test_toml_shards(snap):
    recipients = many()
    write_layout(snap, DOMAIN, recipients, shards=SHARDS, fmt="toml")
    p = Policy({"snapshot_dir": str(snap), "format": "toml"})
    assert rejected(p, "user5@mail2.example.net") and rejected(p, "x@bad.example")
    assert all(path.endswith(".toml") for path in p.k.io_paths)


def test_expired_entries_in_shards_do_not_suppress(snap):
    write_layout(snap, DOMAIN, {"old@example.net": entry(expires=NOW - 1), "@gone.example": entry(expires=NOW - 1),
                                "live@example.net": entry(expires=NOW + 60)}, shards=2, hashed=True)
    p = Policy({"snapshot_dir": str(snap)})
    assert not rejected(p, "old@example.net") and not rejected(p, "x@gone.example")
    assert rejected(p, "live@example.net")
    p.clock.advance(61)
    assert not rejected(p, "live@example.net")


def test_hashed_key_is_the_sha256_of_the_normalized_key(snap):
    write_layout(snap, DOMAIN, {"user@example.net": entry()}, hashed=True)
    doc = json.loads((snap / f"{DOMAIN}.json").read_text())
    assert list(doc["recipients"]) == [key_digest("user@example.net")]
    p = Policy({"snapshot_dir": str(snap)})
    assert rejected(p, "<User@Example.NET>")
