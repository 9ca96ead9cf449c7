"""Never halt, never lose: poison records, a missing or foreign store, files an export
never wrote, rewritten log files, time that lies, counters that must not double."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time

import pytest

import logfactory as f
from conftest import Daemon, free_port

DAY = 86400


def _snapshots(install) -> dict:
    return {p.name: p.read_bytes() for p in sorted(install.snap_dir.iterdir())}


# ---------------------------------------------------------------------- 3. the store must exist

@pytest.fixture
def exported(install):
    install.ingest([f.bounce("u@dest.example", "example.com"), f.bounce("v@dest.example", "other.example")])
    install.ok("export")
    return install


@pytest.mark.parametrize("damage", ["missing", "empty", "foreign", "foreign-sqlite"])
@pytest.mark.parametrize("command", [("ingest",), ("export",), ("sync",), ("prune",),
                                     ("check", "u@dest.example", "--domain", "example.com"),
                                     ("add", "w@dest.example", "--domain", "example.com")])
def test_no_command_but_init_uses_a_missing_empty_or_foreign_store(exported, damage, command):
    install = exported
    before = _snapshots(install)
    install.db.unlink()
    if damage == "empty":
        install.db.write_bytes(b"")
    elif damage == "foreign":
        install.db.write_text("queue = 'x'\n")
    elif damage == "foreign-sqlite":
        with sqlite3.connect(install.db) as conn:
            conn.execute("CREATE TABLE t(x)")
    size = install.db.stat().st_size if install.db.exists() else None
    r = install.subprocess(*command)
    err = r.stderr.decode()
    assert r.returncode == 3, err
    assert str(install.db) in err and "kumo-suppress init" in err and "Traceback" not in err
    assert _snapshots(install) == before, "the snapshots kumod reads stay as they were"
    assert (install.db.stat().st_size if install.db.exists() else None) == size, "nothing created or written"


def test_run_and_serve_refuse_a_missing_store(exported):
    install = exported
    install.db.unlink()
    install.configure(webhook={"listen": f"127.0.0.1:{free_port()}"})
    for command in ("serve", "run"):
        r = install.subprocess(command, timeout=30)
        assert r.returncode == 3, r.stderr.decode()
        assert "kumo-suppress init" in r.stderr.decode()
    assert not install.db.exists()


def test_init_still_creates_and_an_empty_file_can_be_initialised(install):
    install.db.unlink()
    install.db.write_bytes(b"")
    install.ok("init")
    install.ok("add", "w@dest.example", "--domain", "example.com")


# ---------------------------------------------------------------------- 1. poison records

NESTED_FROM = "(" * 600 + "x" + ")" * 600 + " news@example.com"


def _poison_segment(install, name):
    """good, surrogate-escaped text, absurdly nested From, good: as raw JSONL lines."""
    good1 = f.bounce("good1@dest.example", id="g1")
    surrogate = f.bounce("sur@dest.example", id="s1")
    nested = f.bounce("nest@dest.example", id="n1", headers={"From": NESTED_FROM})
    good2 = f.bounce("good2@dest.example", id="g2")
    lines = [json.dumps(good1), json.dumps(surrogate).replace("5.1.1 user unknown", "bad \\ud800 text"),
             json.dumps(nested), json.dumps(good2)]
    assert "\\ud800" in lines[1]
    return _raw_segment(install.log_dir, lines, name)


def _raw_segment(log_dir, lines, name):
    import zstandard
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / name
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    os.chmod(path, 0o444)
    return path


def test_poison_records_are_malformed_and_never_stop_the_rest(install):
    seg = _poison_segment(install, "20261125-010000.000000000")
    install.segment([f.bounce("later@dest.example")], name="20261125-020000.000000000")
    r = install.subprocess("sync")
    err = r.stderr.decode()
    assert r.returncode == 0, err
    for rcpt in ("good1@dest.example", "good2@dest.example", "later@dest.example"):
        assert install.check(rcpt) is not None, f"{rcpt} must be stored despite the poison records"
    assert install.check("sur@dest.example") is None
    assert f"{seg}:2: malformed record skipped" in err and "Traceback" not in err
    counters = json.loads(install.ok("stats", "--json").output)["counters"]
    assert counters["malformed_total"] >= 1
    assert "good1@dest.example" in install.snapshot("example.com")["recipients"], "sync exported"


def test_a_poison_record_in_a_batch_after_good_ones_commits_the_good_ones(install):
    from exporter.config import load_config
    from exporter.ingest import Ingestor
    from exporter.store import Store
    cfg = load_config(install.config_path)
    with Store.open(cfg.store.path, create=False) as store:
        bad = f.bounce("sur@dest.example", id="s1")
        bad["id"] = "id-\ud800"                  # a lone surrogate SQLite cannot bind
        res = Ingestor(store, cfg).ingest_records([f.bounce("a@dest.example"), bad, f.bounce("b@dest.example")])
        assert res.malformed == 1
        assert store.get("a@dest.example", "example.com", int(time.time())) is not None
        assert store.get("b@dest.example", "example.com", int(time.time())) is not None
        assert store.counters()["records_total:Bounce"] == 2


def _post(port: int, body: bytes) -> int:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/v1/events", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_webhook_never_answers_a_poison_record_with_5xx(install):
    port = free_port()
    install.configure(webhook={"listen": f"127.0.0.1:{port}"})
    daemon = Daemon(install, "serve")
    try:
        daemon.wait_listening(port)
        good = f.bounce("hook-good@dest.example")
        nested = f.bounce("hook-nest@dest.example", headers={"From": NESTED_FROM})
        surrogate = json.dumps(f.bounce("hook-sur@dest.example")).replace("5.1.1 user unknown", "\\udfff")
        batch = ("[" + ",".join([json.dumps(good), surrogate, json.dumps(nested)]) + "]").encode()
        assert _post(port, batch) == 200
        for body in (surrogate.encode(), json.dumps(nested).encode()):
            status = _post(port, body)
            assert 200 <= status < 500, status
        assert _post(port, json.dumps(f.bounce("after@dest.example")).encode()) == 200
    finally:
        assert daemon.stop() == 0
    assert install.check("hook-good@dest.example") is not None
    assert install.check("after@dest.example") is not None
    assert "Traceback" not in daemon.output()


# ---------------------------------------------------------------------- 13. records from the future

def test_records_dated_beyond_max_future_skew_are_malformed(install):
    now = int(time.time())
    install.ingest([f.bounce("soon@dest.example", timestamp=now + 1800),
                    f.bounce("far@dest.example", timestamp=now + 3 * 3600),
                    f.bounce("y2106@dest.example", timestamp=2**32 - 10)])
    assert install.check("soon@dest.example") is not None, "within the default 1h skew"
    assert install.check("far@dest.example") is None
    assert install.check("y2106@dest.example") is None
    counters = json.loads(install.ok("stats", "--json").output)["counters"]
    assert counters["malformed_total"] == 2
    install.configure(ingest={"max_future_skew": "4h"})
    install.ingest([f.bounce("far2@dest.example", timestamp=now + 3 * 3600)])
    assert install.check("far2@dest.example") is not None


def test_a_future_record_cannot_beat_a_later_remove(install):
    install.ingest([f.bounce("u@dest.example")])
    install.ok("remove", "u@dest.example", "--domain", "example.com")
    install.ingest([f.bounce("u@dest.example", timestamp=2**32 - 10)])
    assert install.check("u@dest.example") is None


# ---------------------------------------------------------------------- 15. counters never double

def test_a_record_seen_twice_counts_once_in_records_ingested(install):
    line = json.dumps(f.bounce("u@dest.example", id="m1")) + "\n"
    install.ok("ingest", "-", input=line)
    install.ok("ingest", "-", input=line)
    counters = json.loads(install.ok("stats", "--json").output)["counters"]
    assert counters["records_total:Bounce"] == 1
    assert counters["records_duplicate_total:Bounce"] == 1
    from exporter.config import load_config
    from exporter.metrics import render
    from exporter.store import Store
    with Store.open(load_config(install.config_path).store.path, create=False) as store:
        text = render(store, None).decode()
    assert 'kumo_suppression_records_ingested_total{type="Bounce"} 1' in text
    assert 'kumo_suppression_records_duplicate_total{type="Bounce"} 1' in text
    assert "counted once" in text


# ---------------------------------------------------------------------- 2. many recipients

def test_recipient_deduplication_is_linear_and_bounded(monkeypatch):
    """Counted, not timed: every comparison of two recipient keys goes through __eq__."""
    from exporter import records
    comparisons = [0]

    class Key(str):
        __hash__ = str.__hash__

        def __eq__(self, other):
            comparisons[0] += 1
            return str.__eq__(self, other)

    real = records.recipient_key
    monkeypatch.setattr(records, "recipient_key", lambda value: (k := real(value)) and Key(k))
    many = [f"user{i}@dest.example" for i in range(records.MAX_RECIPIENTS)]
    found = records._recipients(many + many[:10] + ["extra@dest.example"])
    assert found == many, "the first MAX_RECIPIENTS, in order, each once"
    assert comparisons[0] < 2 * len(many), f"{comparisons[0]} key comparisons for {len(many)} recipients"


# ---------------------------------------------------------------------- 6. checkpoints by identity

def _counters(install) -> dict:
    return json.loads(install.ok("stats", "--json").output)["counters"]


def test_a_file_replaced_under_the_same_name_is_read_from_its_start(install):
    path = install.segment([f.bounce("old1@dest.example"), f.bounce("old2@dest.example")])
    install.ok("ingest")
    path.unlink()
    install.segment([f.bounce("new1@dest.example"), f.bounce("new2@dest.example"),
                     f.bounce("new3@dest.example")], name=path.name)
    install.ok("ingest")
    for rcpt in ("new1@dest.example", "new2@dest.example", "new3@dest.example"):
        assert install.check(rcpt) is not None, rcpt


def test_a_file_rewritten_in_place_is_read_from_its_start(install):
    install.configure(ingest={"include_open": True})
    path = install.segment([f.bounce("old1@dest.example"), f.bounce("old2@dest.example")], done=False,
                           compress=False)
    install.ok("ingest")
    inode = path.stat().st_ino
    path.write_bytes(f.to_jsonl([f.bounce("new1@dest.example"), f.bounce("new2@dest.example"),
                                 f.bounce("new3@dest.example")]))
    assert path.stat().st_ino == inode
    install.ok("ingest")
    for rcpt in ("new1@dest.example", "new2@dest.example", "new3@dest.example"):
        assert install.check(rcpt) is not None, rcpt


def test_a_moved_file_is_not_read_again(install):
    path = install.segment([f.delivery("d@dest.example"), f.bounce("b@dest.example")])
    install.ok("ingest")
    before = _counters(install)
    (install.log_dir / "archive").mkdir()
    path.rename(install.log_dir / "archive" / path.name)
    install.ok("ingest")
    assert _counters(install) == before


def test_a_growing_open_file_keeps_its_checkpoint(install):
    install.configure(ingest={"include_open": True})
    path = install.segment([f.delivery(f"d{i}@dest.example") for i in range(3)], done=False, compress=False)
    install.ok("ingest")
    with open(path, "ab") as fh:
        fh.write(f.to_jsonl([f.delivery(f"e{i}@dest.example") for i in range(200)]))
    install.ok("ingest")
    assert _counters(install)["records_total:Delivery"] == 203


def test_last_record_of_a_file_nobody_writes_any_more_is_kept_without_its_newline(install, tmp_path):
    """A hand-made or copied JSONL file keeps its write bits: it is never 'done'."""
    data = f.to_jsonl([f.bounce("a@dest.example")]) + f.to_jsonl([f.bounce("b@dest.example")]).rstrip(b"\n")
    path = tmp_path / "copied.jsonl"
    path.write_bytes(data)
    install.ok("ingest", str(path))
    assert install.check("b@dest.example") is not None
    with open(path, "ab") as fh:         # the newline arrives later: nothing counts twice
        fh.write(b"\n" + f.to_jsonl([f.bounce("c@dest.example")]))
    install.ok("ingest", str(path))
    assert install.check("c@dest.example") is not None
    assert _counters(install)["records_total:Bounce"] == 3
    assert _counters(install).get("records_duplicate_total:Bounce", 0) == 0


def test_a_v1_store_keeps_its_checkpoints_when_migrated(install):
    path = install.segment([f.bounce("a@dest.example")])
    install.db.unlink()
    from exporter.store import Store
    conn = sqlite3.connect(install.db, isolation_level=None)   # the layout a v1 kumo-suppress left
    v1 = Store(conn, install.db)
    with v1.transaction():
        v1._create_v1()
        conn.execute("PRAGMA user_version=1")
        conn.execute("INSERT INTO segments VALUES (?, 1, 1, ?, 0)", (str(path.resolve()), path.stat().st_size))
    conn.close()
    install.ok("init")
    install.ok("ingest")
    assert install.check("a@dest.example") is None, "the segment was done before the upgrade"


# ---------------------------------------------------------------------- 10. idempotency memory

def test_a_ttl_longer_than_the_memory_prune_and_a_replay_counts_once(install):
    install.configure(rules={"ttl": {"bounce": "1000d"}})
    line = json.dumps(f.bounce("u@dest.example", id="m1", timestamp=int(time.time()) - 500 * DAY)) + "\n"
    install.ok("ingest", "-", input=line)
    install.ok("prune")
    install.ok("ingest", "-", input=line)
    assert install.check("u@dest.example")["count"] == 1
    assert _counters(install)["records_total:Bounce"] == 1


# ---------------------------------------------------------------------- 11. thresholds, any order

@pytest.mark.parametrize("order", [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
def test_threshold_entry_is_the_same_in_any_arrival_order(install, order):
    install.configure(rules={"expiration_threshold": 2, "expiration_window": "3d"})
    now = int(time.time())
    records = [f.expiration("u@dest.example", timestamp=now - 2 * DAY, id="e0"),
               f.expiration("u@dest.example", timestamp=now - DAY, id="e1"),
               f.expiration("u@dest.example", timestamp=now - 3600, id="e2")]
    for i in order:
        install.ok("ingest", "-", input=json.dumps(records[i]) + "\n")
    entry = install.check("u@dest.example")
    assert (entry["first_seen"], entry["last_seen"], entry["count"]) == (now - DAY, now - 3600, 2)
    assert entry["expires"] == now - 3600 + 30 * DAY
    assert entry["evidence"]["message_id"] == "e2"


# ---------------------------------------------------------------------- 3. another store's manifest

def test_export_from_another_store_that_would_remove_most_snapshots_needs_force(install):
    for i in range(4):
        install.ok("add", f"u@dest.example", "--domain", f"d{i}.example")
    install.ok("export")
    before = _snapshots(install)
    install.db.unlink()
    install.ok("init")                       # a lost store, re-created: empty
    install.ok("add", "u@dest.example", "--domain", "d0.example")
    for command in ("export", "sync"):
        r = install.subprocess(command)
        err = r.stderr.decode()
        assert r.returncode == 3, err
        assert "another store" in err and "--force" in err
        assert _snapshots(install) == before
    r = install.subprocess("export", "--force")
    assert r.returncode == 0, r.stderr.decode()
    assert sorted(p.name for p in install.snap_dir.iterdir()) == ["d0.example.json", "manifest.json"]


# ---------------------------------------------------------------------- 4. files an export never wrote

def test_export_never_touches_files_it_did_not_write(install):
    install.snap_dir.mkdir()
    theirs = {"queues.toml": b"[queue.default]\n", "shaping.toml": b"['example.com']\n",
              "settings.json": b"{}\n", "example.com.toml": b"x = 1\n"}
    for name, data in theirs.items():
        (install.snap_dir / name).write_bytes(data)
    install.ok("add", "u@dest.example", "--domain", "example.com")
    install.ok("export")
    install.ok("remove", "u@dest.example", "--domain", "example.com")
    install.ok("export")
    for name, data in theirs.items():
        assert (install.snap_dir / name).read_bytes() == data, name
    assert not (install.snap_dir / "example.com.json").exists(), "its own file goes"


def test_a_domain_named_manifest_never_overwrites_the_manifest(install):
    install.ok("add", "u@dest.example", "--domain", "manifest")
    install.ok("add", "u@dest.example", "--domain", "example.com")
    install.ok("export")
    r = install.ok("export")
    assert "written 0" in r.output, "the manifest is not a domain's file, rewritten every time"
    manifest = json.loads((install.snap_dir / "manifest.json").read_text())
    assert manifest["format"] == "kumo-suppression-manifest"
    assert "manifest" not in manifest["domains"]


def test_the_snapshot_dir_holds_only_snapshots_and_the_manifest(install):
    install.ok("add", "u@dest.example", "--domain", "example.com")
    install.ok("export")
    install.ok("sync")
    assert sorted(p.name for p in install.snap_dir.iterdir()) == ["example.com.json", "manifest.json"]


# ---------------------------------------------------------------------- 8. modes and symlinks

def test_a_world_writable_export_dir_is_fixed_with_a_warning(install):
    install.snap_dir.mkdir()
    os.chmod(install.snap_dir, 0o777)
    install.ok("add", "u@dest.example", "--domain", "example.com")
    r = install.subprocess("export")
    assert r.returncode == 0
    assert "writable by group or others" in r.stderr.decode()
    assert stat.S_IMODE(install.snap_dir.stat().st_mode) == 0o755


def test_a_symlinked_lock_file_is_never_followed(install, tmp_path):
    victim = tmp_path / "victim"
    lock = install.db.with_name(install.db.name + ".ingest.lock")
    lock.unlink(missing_ok=True)
    lock.symlink_to(victim)
    install.segment([f.bounce("u@dest.example")])
    r = install.subprocess("ingest")
    assert r.returncode == 0, r.stderr.decode()
    assert not victim.exists(), "the lock was followed through the symlink"
    assert install.check("u@dest.example") is not None


# ---------------------------------------------------------------------- 12. the clock steps back

def test_after_the_clock_steps_back_export_rewrites_what_check_sees_active(install):
    from exporter.config import load_config
    from exporter.export import export_snapshots
    from exporter.store import Store
    cfg = load_config(install.config_path)
    now = int(time.time())
    with Store.open(cfg.store.path, create=False) as store:
        store.add_manual("short@dest.example", "example.com", "manual", 3600, None, now)
        store.add_manual("long@dest.example", "example.com", "manual", None, None, now)
        export_snapshots(store, cfg, now=now + 7200)           # the clock ran fast: short expired
        assert "short@dest.example" not in install.snapshot("example.com")["recipients"]
        assert store.get("short@dest.example", "example.com", now) is not None   # stepped back
        export_snapshots(store, cfg, now=now)
    assert "short@dest.example" in install.snapshot("example.com")["recipients"]


# ---------------------------------------------------------------------- 7. backup

def test_backup_is_0600_from_its_first_byte(install, tmp_path):
    from exporter.store import Store
    install.ok("add", "u@dest.example", "--domain", "example.com")
    target = tmp_path / "backup.db"
    modes = set()

    def watch():                   # SQLite calls this while VACUUM INTO writes the copy
        if target.exists():
            modes.add(stat.S_IMODE(target.stat().st_mode))
        return 0
    old = os.umask(0o022)
    try:
        with Store.open(install.db, create=False) as store:
            store.conn.set_progress_handler(watch, 1)
            store.backup(target)
    finally:
        os.umask(old)
    assert modes == {0o600}, f"modes seen while the copy was written: {sorted(map(oct, modes))}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_backup_never_writes_through_a_symlink(install, tmp_path):
    victim = tmp_path / "victim"
    (tmp_path / "backup.db").symlink_to(victim)
    r = install.subprocess("backup", str(tmp_path / "backup.db"))
    assert r.returncode == 3 and not victim.exists()


# ---------------------------------------------------------------------- 14. the WAL shrinks

def test_the_wal_shrinks_once_a_long_reader_lets_go(install):
    from exporter.store import Store
    panel = sqlite3.connect(f"file:{install.db}?mode=ro", uri=True, isolation_level=None)
    panel.execute("BEGIN")
    panel.execute("SELECT COUNT(*) FROM suppressions").fetchone()    # holds its snapshot
    wal = install.db.with_name(install.db.name + "-wal")
    with Store.open(install.db, create=False) as store:
        store.import_rows(((f"u{i}@dest.example", "example.com", "manual", 1, None) for i in range(30000)),
                          int(time.time()))
    grown = wal.stat().st_size
    assert grown > 4 << 20
    panel.execute("COMMIT")                                           # the panel lets go
    install.ok("add", "x@dest.example", "--domain", "example.com")
    assert wal.stat().st_size < 1 << 20, f"WAL still {wal.stat().st_size} bytes (was {grown})"
    panel.close()
