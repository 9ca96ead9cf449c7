"""Snapshots: format, schema, atomic and minimal rewrites, manifest, removals, hostile
domain names."""

import hashlib
import json
import stat
import time

import jsonschema

import logfactory as f
from conftest import wait_for
from exporter.config import load_config
from exporter.export import export_snapshots, snapshot_schema
from exporter.store import Store

DAY = 86400


def test_snapshot_content_and_schema(install):
    ts = int(time.time()) - 2 * DAY
    install.ingest([f.bounce("User@Example.NET", timestamp=ts),
                    f.feedback("c@example.net", "news@example.com", timestamp=ts)])
    install.ok("add", "@Bad.Example", "--domain", "Example.COM")
    out = install.ok("export").output
    assert out.startswith("written 1, unchanged 0, removed 0")
    snap = install.snapshot("example.com")
    jsonschema.Draft202012Validator(snapshot_schema()).validate(snap)
    assert snap["count"] == 3 and snap["domain"] == "example.com"
    assert snap["recipients"]["user@example.net"] == {"reason": "bounce", "since": ts, "expires": ts + 365 * DAY}
    assert "expires" not in snap["recipients"]["c@example.net"], "never-expiring entries carry no expires"
    assert snap["recipients"]["@bad.example"]["reason"] == "manual"


def test_toml_format_holds_the_same_structure(install):
    install.configure(export={"format": "toml"})
    install.ingest([f.bounce('we"ird\\\x7fname@example.net'), f.bounce("plain@example.net")])
    install.ok("export")
    snap = install.snapshot("example.com", "toml")
    jsonschema.Draft202012Validator(snapshot_schema()).validate(snap)
    assert set(snap["recipients"]) == {'we"ird\\\x7fname@example.net', "plain@example.net"}
    assert install.ok("validate").exit_code == 0


def test_unchanged_export_does_not_touch_files(install):
    install.ingest([f.bounce("u@example.net")])
    install.ok("export")
    path = install.snap_dir / "example.com.json"
    manifest = install.snap_dir / "manifest.json"
    # a rewrite renames a new file into place: a new inode, whatever the clock says
    before = (path.stat().st_mtime_ns, path.stat().st_ino, manifest.stat().st_mtime_ns)
    assert install.ok("export").output.startswith("written 0, unchanged 1")
    # a change to another domain leaves this file alone too
    install.ok("add", "x@example.net", "--domain", "other.example")
    install.ok("export")
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before[:2]


def test_re_added_entry_rewrites_the_file(install):
    ts = int(time.time()) - DAY
    install.ingest([f.bounce("u@example.net", timestamp=ts)])
    install.ok("export")
    path = install.snap_dir / "example.com.json"
    before = path.stat().st_mtime_ns
    install.ok("remove", "u@example.net", "--domain", "example.com")
    install.ok("add", "u@example.net", "--domain", "example.com", "--reason", "bounce")
    install.ok("export")
    assert path.stat().st_mtime_ns != before, "the entry changed (new since), so the file must change"


def test_domain_without_active_entries_loses_its_file(install):
    install.ok("add", "u@example.net", "--domain", "example.com")
    install.ok("export")
    install.ok("remove", "u@example.net", "--domain", "example.com")
    out = install.ok("export").output
    assert "removed 1" in out
    assert not (install.snap_dir / "example.com.json").exists()
    assert "example.com" not in json.loads((install.snap_dir / "manifest.json").read_text())["domains"]


def test_manifest_lists_sha256_and_counts(install):
    install.ok("add", "a@example.net", "--domain", "example.com")
    install.ok("add", "b@example.net", "--domain", "shop.example")
    install.ok("export")
    manifest = json.loads((install.snap_dir / "manifest.json").read_text())
    assert manifest["format"] == "kumo-suppression-manifest"
    for domain in ("example.com", "shop.example"):
        item = manifest["domains"][domain]
        data = (install.snap_dir / item["file"]).read_bytes()
        assert item["sha256"] == hashlib.sha256(data).hexdigest() and item["count"] == 1


def test_expired_entries_are_never_exported_even_before_prune(install):
    old = int(time.time()) - 30 * DAY + 3
    install.ingest([f.expiration("soon@example.net", timestamp=old), f.bounce("u@example.net")])
    install.ok("export")
    assert "soon@example.net" in install.snapshot("example.com")["recipients"]
    # soon@ lapses 3 s after it was learned; the next export after that rewrites the file
    wait_for(lambda: install.ok("export").output.startswith("written 1"), what="soon@ expired")
    assert "soon@example.net" not in install.snapshot("example.com")["recipients"]


def test_hostile_sending_domains_never_name_a_file(install, caplog):
    for domain in ["../../etc", "a/b", ".x", "x\x00y", "a" * 300, "exаmple.com"]:
        install.ingest([f.bounce("u@example.net", meta={"x_suppression_domain": domain})])
    install.ingest([f.bounce("u@example.net")])
    out = install.ok("export").output
    # the 300-character one is no domain at all (over 253 bytes): skipped at ingest
    assert "5 domain(s) skipped" in out
    assert sorted(p.name for p in install.snap_dir.iterdir() if not p.name.startswith(".")) == \
        ["example.com.json", "manifest.json"]
    assert not (install.root / "etc.json").exists()


def test_files_and_dir_permissions(install):
    install.ok("add", "u@example.net", "--domain", "example.com")
    install.ok("export")
    assert stat.S_IMODE(install.snap_dir.stat().st_mode) == 0o755
    for p in install.snap_dir.iterdir():
        if not p.name.startswith("."):
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_switching_format_replaces_files(install):
    install.ok("add", "u@example.net", "--domain", "example.com")
    install.ok("export")
    install.configure(export={"format": "toml"})
    install.ok("export")
    names = sorted(p.name for p in install.snap_dir.iterdir() if not p.name.startswith("."))
    assert names == ["example.com.toml", "manifest.json"]


def test_deleted_or_tampered_file_is_repaired(install):
    install.ok("add", "u@example.net", "--domain", "example.com")
    install.ok("export")
    path = install.snap_dir / "example.com.json"
    path.unlink()
    install.ok("export")
    assert path.exists()
    path.write_text("{}")
    install.ok("export")
    assert install.snapshot("example.com")["count"] == 1


def test_export_streams_with_a_consistent_view(install):
    """Entries are read from a cursor in key order; count matches what is written."""
    install.ok("init")
    cfg = load_config(install.config_path)
    now = int(time.time())
    with Store.open(cfg.store.path) as store:
        with store.transaction():
            store.conn.executemany(
                "INSERT INTO suppressions(domain, recipient, reason, source, first_seen, last_seen, expires, "
                "count, updated_at) VALUES ('example.com', ?, 'bounce', 'log', ?, ?, ?, 1, ?)",
                [(f"u{i:05d}@example.net", now, now, now + DAY, now) for i in range(20000)])
            store.conn.execute("INSERT INTO domains VALUES ('example.com', 1)")
        result = export_snapshots(store, cfg)
    assert result.entries == 20000
    snap = install.snapshot("example.com")
    assert snap["count"] == len(snap["recipients"]) == 20000
    assert list(snap["recipients"]) == sorted(snap["recipients"])


def test_unusable_snapshot_dir_is_exit_3_with_one_line(install):
    install.ok("add", "u@example.net", "--domain", "example.com")
    (install.root / "not-a-dir").write_text("")
    install.configure(export={"dir": "not-a-dir/snapshots"})
    r = install.run("export")
    assert r.exit_code == 3
    assert r.stderr.count("\n") == 1 and "not-a-dir" in r.stderr and "Traceback" not in r.stderr
