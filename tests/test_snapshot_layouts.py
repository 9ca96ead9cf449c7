"""Snapshot layouts (docs/snapshot-format.md): a single file up to [export].shard_entries,
an index plus shards above it; shard choice by the shared hash vectors; only changed
shards rewritten; back to one file when a domain shrinks; hashed keys; validation of
both layouts and of the manifest."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from pathlib import Path

import pytest

from exporter import snapshot
from exporter.config import load_config
from exporter.export import export_snapshots
from exporter.store import Store

VECTORS = json.loads((Path(__file__).parent / "vectors" / "normalization.json").read_text())
DAY = 86400


@pytest.mark.parametrize("case", VECTORS["sha256_shards"], ids=lambda c: c["key"])
def test_sha256_shard_vectors(case):
    assert snapshot.key_digest(case["key"]) == case["sha256"]
    for shards, expected in case["shard_of"].items():
        assert snapshot.shard_of(case["key"], int(shards)) == expected


def test_shard_count_power_of_two_with_hysteresis():
    assert snapshot.shard_count(50_000, 50_000) == 1
    # shards of at most 50,000 / 4 = 12,500 entries when the count is chosen
    assert snapshot.shard_count(50_001, 50_000) == 8
    assert snapshot.shard_count(5_000_000, 50_000) == 512
    assert snapshot.shard_count(6_400_000, 50_000) == 512
    # kept while its shards stay between a quarter of that and that: 3,125 .. 12,500
    assert snapshot.shard_count(3_300_000, 50_000, current=512) == 512
    assert snapshot.shard_count(1_600_000, 50_000, current=512) == 512
    assert snapshot.shard_count(1_599_999, 50_000, current=512) == 128
    assert snapshot.shard_count(6_400_001, 50_000, current=512) == 1024
    assert snapshot.shard_count(40_000, 50_000, current=512) == 1
    assert snapshot.shard_count(10**12, 1) == snapshot.MAX_SHARDS


def test_shard_file_names_never_collide():
    assert snapshot.shard_filename("example.com", 7, 128, "json") == "example.com_shard-0007-of-0128.json"
    name = snapshot.parse_filename("example.com_shard-0007-of-0128.toml")
    assert (name.domain, name.shard, name.shards, name.ext) == ("example.com", 7, 128, "toml")
    assert snapshot.parse_filename("example.com.json") == snapshot.FileName("example.com", "json")
    for other in ("manifest.json", "example.com_shard-0007-of-0100.json", "example.com_shard-0128-of-0128.json",
                  ".example.com.json.x.tmp", "a_b.json"):
        assert snapshot.parse_filename(other) is None, other


class Domain:
    """A store and snapshot dir with [export].shard_entries small enough to shard."""

    def __init__(self, install, shard_entries: int = 8, **export):
        install.configure(export={"shard_entries": shard_entries, **export})
        install.ok("init")
        self.install = install
        self.cfg = load_config(install.config_path)
        self.dir = install.snap_dir
        self.now = int(time.time())
        self.result = None

    def add(self, *recipients, domain="example.com", ttl=None):
        with Store.open(self.cfg.store.path) as store:
            for r in recipients:
                store.add_manual(r, domain, "bounce", ttl, None, self.now)

    def remove(self, *recipients, domain="example.com"):
        with Store.open(self.cfg.store.path) as store:
            for r in recipients:
                store.remove(r, domain, self.now)

    def export(self, now=None):
        with Store.open(self.cfg.store.path) as store:
            self.result = export_snapshots(store, self.cfg, now=now)
        return self.result

    def files(self) -> dict[str, tuple[int, int]]:
        """Snapshot file name -> (inode, mtime_ns): what kumod's file version sees."""
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in snapshot.snapshot_files(self.dir)}

    def lookup(self, recipient, domain="example.com"):
        return snapshot.lookup(self.dir, domain, recipient, self.cfg.export.format)


def _valid(install) -> None:
    r = install.run("validate")
    assert r.exit_code == 0, r.output


def _manifest_matches_files(directory: Path) -> dict:
    manifest = json.loads((directory / snapshot.MANIFEST).read_text())
    assert snapshot.validate_manifest(directory / snapshot.MANIFEST) == []
    listed = set()
    for entry in manifest["domains"].values():
        for item in snapshot.manifest_files(entry):
            listed.add(item["file"])
            assert item["sha256"] == hashlib.sha256((directory / item["file"]).read_bytes()).hexdigest()
    assert listed == {p.name for p in snapshot.snapshot_files(directory)}
    return manifest


@pytest.mark.parametrize("fmt", ["json", "toml"])
def test_large_domain_is_an_index_and_shards(install, fmt):
    d = Domain(install, shard_entries=8, format=fmt)
    plain = [f"user{i}@mail.example" for i in range(20)]
    d.add(*plain, "@bad.example")
    d.add("alone@example.net", domain="small.example")
    d.export()
    index = snapshot.read(d.dir / f"example.com.{fmt}")
    assert index["shards"] == 16 and index["count"] == 21 and index["domain_entries"] == 1
    assert set(index["recipients"]) == {"@bad.example"}
    shards = [snapshot.read(d.dir / snapshot.shard_filename("example.com", k, 16, fmt)) for k in range(16)]
    for k, shard in enumerate(shards):
        assert (shard["shard"], shard["shards"], shard["count"]) == (k, 16, len(shard["recipients"]))
        assert all(snapshot.shard_of(r, 16) == k for r in shard["recipients"])
        assert list(shard["recipients"]) == sorted(shard["recipients"])
    assert sorted(r for s in shards for r in s["recipients"]) == sorted(plain)
    assert snapshot.read(d.dir / f"small.example.{fmt}").get("shards") is None
    for r in plain:
        assert d.lookup(r)["reason"] == "bounce"
    assert d.lookup("anyone@bad.example")["reason"] == "bounce"
    assert d.lookup("nobody@mail.example") is None
    _valid(install)
    _manifest_matches_files(d.dir)


def test_one_new_entry_rewrites_its_shard_and_the_index_only(install, monkeypatch):
    d = Domain(install, shard_entries=8)
    d.add(*(f"user{i}@mail.example" for i in range(40)))
    d.export()
    before = d.files()
    assert len(before) == 1 + 32
    new = "new.user@mail.example"
    d.add(new)

    def whole_domain(*args):
        raise AssertionError("a patch export reads the changed keys, not the whole domain")
    with monkeypatch.context() as m:
        m.setattr(Store, "iter_snapshot", whole_domain)
        m.setattr(Store, "domain_summary", whole_domain)
        result = d.export()
    after = d.files()
    changed = {name for name in after if after[name] != before.get(name)}
    shard = snapshot.shard_filename("example.com", snapshot.shard_of(new, 32), 32, "json")
    assert changed == {"example.com.json", shard}
    assert sorted(result.written) == sorted(changed)
    assert d.lookup(new) is not None
    _manifest_matches_files(d.dir)
    # nothing changed: nothing written
    assert d.export().written == []
    assert d.files() == after


def test_removed_and_expired_entries_leave_their_shards(install):
    d = Domain(install, shard_entries=8)
    d.add(*(f"user{i}@mail.example" for i in range(30)))
    d.add("soon@mail.example", ttl=60)
    d.export()
    before = d.files()
    d.remove("user3@mail.example")
    d.export()
    assert d.lookup("user3@mail.example") is None
    changed = {n for n, v in d.files().items() if v != before[n]}
    assert changed == {"example.com.json",
                       snapshot.shard_filename("example.com", snapshot.shard_of("user3@mail.example", 16), 16, "json")}
    # the export after its expiry drops it, though no prune ran and the store still holds it
    d.export(now=d.now + 120)
    assert d.lookup("soon@mail.example") is None
    assert snapshot.read(d.dir / "example.com.json")["count"] == 29
    _valid(install)
    _manifest_matches_files(d.dir)


@pytest.mark.parametrize("export", [{"format": "json"}, {"format": "toml"}, {"hash_recipients": True}],
                         ids=["json", "toml", "hashed"])
def test_patched_shards_equal_a_fresh_export(install, tmp_path, export):
    """Many rounds of random adds and removes, each exported by patching shards: the files
    hold exactly what an export from scratch writes."""
    d = Domain(install, shard_entries=16, **export)
    rng = random.Random(14)
    pool = [f"u{i}@m{i % 7}.example" for i in range(300)]
    d.add(*pool[:100], "@gone.example")
    d.export()
    for _round in range(8):
        d.add(*rng.sample(pool, 15))
        d.remove(*rng.sample(pool, 10))
        d.export()
    fresh = tmp_path / "fresh"
    shutil.copytree(d.dir, fresh)
    for p in fresh.iterdir():
        p.unlink()
    cfg = d.cfg
    cfg.export.dir = fresh
    with Store.open(cfg.store.path) as store:
        export_snapshots(store, cfg)
    names = sorted(p.name for p in snapshot.snapshot_files(d.dir))
    assert names == sorted(p.name for p in snapshot.snapshot_files(fresh))
    for name in names:
        ours, theirs = snapshot.read(d.dir / name), snapshot.read(fresh / name)
        assert ours["recipients"] == theirs["recipients"] and ours["count"] == theirs["count"], name


def test_domain_growing_and_shrinking_changes_layout_and_leaves_no_shard(install):
    d = Domain(install, shard_entries=8)
    d.add(*(f"user{i}@mail.example" for i in range(6)))
    d.export()
    assert [p.name for p in snapshot.snapshot_files(d.dir)] == ["example.com.json"]
    d.add(*(f"more{i}@mail.example" for i in range(30)))     # 36 entries: 32 shards of at most 8 / 4
    d.export()
    assert snapshot.read(d.dir / "example.com.json")["shards"] == 32
    d.remove(*(f"more{i}@mail.example" for i in range(20)))  # 16: half a shard each, a quarter of 2: kept
    d.export()
    assert snapshot.read(d.dir / "example.com.json")["shards"] == 32
    d.remove("more20@mail.example", "more21@mail.example")  # 14: under a quarter: 8 shards
    d.export()
    assert snapshot.read(d.dir / "example.com.json")["shards"] == 8
    assert sorted(p.name for p in snapshot.snapshot_files(d.dir)) == [
        "example.com.json", *(snapshot.shard_filename("example.com", k, 8, "json") for k in range(8))]
    d.remove(*(f"more{i}@mail.example" for i in range(22, 30)))  # 6: one file again
    result = d.export()
    assert sorted(p.name for p in d.dir.iterdir() if not p.name.startswith(".")) == \
        ["example.com.json", "manifest.json"]
    assert "example.com_shard-0000-of-0008.json" in result.removed
    assert snapshot.read(d.dir / "example.com.json")["count"] == 6
    _manifest_matches_files(d.dir)


def test_tampered_or_deleted_shard_is_rewritten(install, caplog):
    d = Domain(install, shard_entries=8)
    d.add(*(f"user{i}@mail.example" for i in range(20)))
    d.export()
    shard = d.dir / snapshot.shard_filename("example.com", 1, 16, "json")
    good = snapshot.read(shard)
    shard.write_text('{"format": "kumo-suppression-snapshot"}')
    d.export()
    assert snapshot.read(shard) == good
    shard.unlink()
    d.export()
    assert shard.exists()
    _valid(install)


@pytest.mark.parametrize("shard_entries", [1000, 4])
def test_hashed_snapshots_hold_no_plain_address_yet_suppress(install, shard_entries):
    d = Domain(install, shard_entries=shard_entries, hash_recipients=True)
    plain = [f"secret{i}.person@mail.example" for i in range(12)]
    d.add(*plain, "@hidden.example")
    d.export()
    for path in snapshot.snapshot_files(d.dir):
        data = path.read_bytes()
        doc = snapshot.read(path)
        assert doc["hash"] == "sha256"
        assert b"secret" not in data and b"hidden" not in data and b"mail.example" not in data, path.name
    for r in plain:
        assert d.lookup(r)["reason"] == "bounce"
    assert d.lookup("anyone@hidden.example") is not None
    assert d.lookup("other@mail.example") is None
    _valid(install)
    # the store and the CLI keep the address
    assert install.check("secret1.person@mail.example")["recipient"] == "secret1.person@mail.example"


def test_switching_hash_recipients_rewrites_every_file(install):
    d = Domain(install, shard_entries=4)
    d.add(*(f"user{i}@mail.example" for i in range(10)))
    d.export()
    install.configure(export={"hash_recipients": True})
    d.cfg = load_config(install.config_path)
    d.export()
    assert all(snapshot.read(p).get("hash") == "sha256" for p in snapshot.snapshot_files(d.dir))
    assert d.lookup("user3@mail.example") is not None


def test_validate_finds_a_missing_shard_and_a_wrong_count(install):
    d = Domain(install, shard_entries=4)
    d.add(*(f"user{i}@mail.example" for i in range(10)))
    d.export()
    (d.dir / snapshot.shard_filename("example.com", 0, 16, "json")).unlink()
    r = install.run("validate")
    assert r.exit_code == 1 and "shard files missing" in r.output
    d.export()
    index = d.dir / "example.com.json"
    doc = json.loads(index.read_text())
    doc["count"] = 99
    index.write_text(json.dumps(doc))
    r = install.run("validate")
    assert r.exit_code == 1 and "count is 99" in r.output


def test_validate_flags_a_broken_manifest(install):
    d = Domain(install)
    d.add("u@mail.example")
    d.export()
    (d.dir / "manifest.json").write_text(json.dumps({"format": "kumo-suppression-manifest", "version": 1}))
    r = install.run("validate")
    assert r.exit_code == 1 and "FAIL manifest.json" in r.output


def test_sharded_domain_without_entries_loses_every_file_and_nothing_else(install):
    d = Domain(install, shard_entries=4)
    recipients = [f"user{i}@mail.example" for i in range(10)]
    d.add(*recipients)
    d.export()
    (d.dir / "example.com_shard-0000-of-0008.json").write_text("not ours")   # no export wrote it
    d.remove(*recipients)
    d.export()
    assert sorted(p.name for p in d.dir.iterdir()) == ["example.com_shard-0000-of-0008.json", "manifest.json"]
