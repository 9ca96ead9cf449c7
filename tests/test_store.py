"""The store: upserts, refreshes, tombstones, thresholds, history, idempotency."""

import os
import stat

import pytest

import logfactory as f
from exporter.config import build_config
from exporter.records import DomainSource, to_event
from exporter.rules import decide
from exporter.store import SCHEMA_VERSION, ApplyResult, Store

NOW = 1_800_000_000
DAY = 86400


@pytest.fixture
def store(tmp_path):
    with Store.open(tmp_path / "s.db") as s:
        yield s


def apply(store, record, now=NOW, source="log", **rules):
    rules_cfg = build_config({"rules": rules}, base=store.path.parent, cfg_path=None).rules
    event = to_event(record, DomainSource(), "suppressed.kumo_suppression")
    result = ApplyResult()
    with store.transaction():
        store.apply_event(event, decide(event, rules_cfg), source, now, result)
    return result


def test_store_file_is_private_and_wal(tmp_path):
    with Store.open(tmp_path / "s.db") as s:
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE(os.stat(tmp_path / "s.db").st_mode) == 0o600


def test_open_without_create_fails_clearly(tmp_path):
    from exporter.store import StoreError
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "missing.db", create=False)


def test_add_then_refresh_extends_expiry_and_counts(store):
    r = apply(store, f.bounce("u@example.net", timestamp=NOW - 10 * DAY))
    assert r.added == {"bounce": 1}
    entry = store.get("u@example.net", "example.com", NOW)
    assert (entry["first_seen"], entry["expires"], entry["count"]) == (NOW - 10 * DAY, NOW + 355 * DAY, 1)
    r = apply(store, f.bounce("u@example.net", timestamp=NOW - DAY, content="newer"))
    assert r.refreshed == {"bounce": 1}
    entry = store.get("u@example.net", "example.com", NOW)
    assert entry["first_seen"] == NOW - 10 * DAY
    assert entry["last_seen"] == NOW - DAY
    assert entry["expires"] == NOW + 364 * DAY
    assert entry["count"] == 2
    assert entry["evidence"]["content"] == "newer"
    assert [h["action"] for h in store.history("u@example.net", "example.com")] == ["add", "refresh"]


def test_older_event_keeps_newest_evidence(store):
    apply(store, f.bounce("u@example.net", timestamp=NOW - DAY, content="newest"))
    apply(store, f.bounce("u@example.net", timestamp=NOW - 5 * DAY, content="older"))
    entry = store.get("u@example.net", "example.com", NOW)
    assert entry["evidence"]["content"] == "newest"
    assert entry["first_seen"] == NOW - 5 * DAY and entry["count"] == 2


def test_never_expiring_reason_wins_over_a_shorter_one(store):
    apply(store, f.feedback("u@example.net", "news@example.com", timestamp=NOW - 2 * DAY))
    apply(store, f.bounce("u@example.net", timestamp=NOW - DAY))
    entry = store.get("u@example.net", "example.com", NOW)
    assert entry["reason"] == "complaint" and entry["expires"] is None


def test_same_record_twice_changes_nothing(store):
    rec = f.bounce(["a@example.net", "b@example.net"])
    apply(store, rec)
    before = [dict(r) for r in store.conn.execute("SELECT * FROM suppressions ORDER BY recipient")]
    r = apply(store, rec, now=NOW + 60)
    assert r.duplicates == 2 and not r.added and not r.refreshed
    after = [dict(r) for r in store.conn.execute("SELECT * FROM suppressions ORDER BY recipient")]
    assert before == after


def test_tombstone_blocks_older_events_but_not_newer(store):
    apply(store, f.bounce("u@example.net", timestamp=NOW - 3 * DAY))
    assert store.remove("u@example.net", "example.com", NOW - DAY)
    assert store.get("u@example.net", "example.com", NOW) is None
    # replaying old logs must not undo the operator's decision
    r = apply(store, f.bounce("u@example.net", timestamp=NOW - 2 * DAY))
    assert r.tombstoned == 1 and store.get("u@example.net", "example.com", NOW) is None
    # a bounce after the removal is news
    apply(store, f.bounce("u@example.net", timestamp=NOW - 3600))
    assert store.get("u@example.net", "example.com", NOW)["reason"] == "bounce"
    actions = [h["action"] for h in store.history("u@example.net", "example.com")]
    assert actions == ["add", "remove", "add"]


def test_event_at_the_moment_of_removal_stays_removed(store):
    """The operator saw that event when they removed the pair: only a later one is news."""
    apply(store, f.bounce("u@example.net", timestamp=NOW - 3 * DAY))
    assert store.remove("u@example.net", "example.com", NOW - DAY)
    r = apply(store, f.bounce("u@example.net", timestamp=NOW - DAY, id="same-second"))
    assert r.tombstoned == 1 and store.get("u@example.net", "example.com", NOW) is None
    r = apply(store, f.bounce("u@example.net", timestamp=NOW - DAY + 1, id="a-second-later"))
    assert r.added == {"bounce": 1}


def test_manual_add_clears_tombstone(store):
    store.remove("u@example.net", "example.com", NOW - 10)
    store.add_manual("u@example.net", "example.com", "manual", None, "asked by the customer", NOW)
    entry = store.get("u@example.net", "example.com", NOW)
    assert (entry["reason"], entry["source"], entry["expires"], entry["note"]) == ("manual", "manual", None,
                                                                                  "asked by the customer")


@pytest.mark.parametrize("text", ["", "0", None])
def test_a_note_and_an_actor_are_kept_exactly_as_given(store, text):
    """The write path binds a missing note or actor as the integer 0, stored as NULL: an
    empty or "0" text is a text, and stays one."""
    store.add_manual("u@example.net", "example.com", "manual", None, text, NOW, actor=text)
    assert store.get("u@example.net", "example.com", NOW)["note"] == text
    assert [(row["note"], row["actor"]) for row in store.history("u@example.net", "example.com")] == [(text, text)]
    assert tuple(store.conn.execute("SELECT typeof(note), typeof(actor) FROM history").fetchone()) == \
        (("null",) * 2 if text is None else ("text",) * 2)


def test_expired_entry_no_longer_suppresses_and_is_re_added_fresh(store):
    apply(store, f.expiration("u@example.net", timestamp=NOW - 29 * DAY))
    assert store.get("u@example.net", "example.com", NOW)
    assert store.get("u@example.net", "example.com", NOW + 2 * DAY) is None
    apply(store, f.expiration("u@example.net", timestamp=NOW + DAY), now=NOW + 2 * DAY)
    entry = store.get("u@example.net", "example.com", NOW + 2 * DAY)
    assert entry["first_seen"] == NOW + DAY and entry["count"] == 1


def test_event_whose_suppression_is_already_over_is_not_added(store):
    r = apply(store, f.expiration("u@example.net", timestamp=NOW - 40 * DAY))
    assert r.stale == 1 and store.get("u@example.net", "example.com", NOW) is None


def test_expiration_threshold_within_window(store):
    rules = dict(expiration_threshold=3, expiration_window="10d")
    apply(store, f.expiration("u@example.net", timestamp=NOW - 20 * DAY), **rules)
    apply(store, f.expiration("u@example.net", timestamp=NOW - 5 * DAY), **rules)
    r = apply(store, f.expiration("u@example.net", timestamp=NOW - 4 * DAY), **rules)
    assert r.below_threshold == 1, "the first strike is outside the window"
    assert store.get("u@example.net", "example.com", NOW) is None
    apply(store, f.expiration("u@example.net", timestamp=NOW - 3 * DAY), **rules)
    assert store.get("u@example.net", "example.com", NOW)["reason"] == "expiration"


def test_recipient_domain_entry_suppresses_everyone_there(store):
    store.add_manual("@bad.example", "example.com", "manual", None, None, NOW)
    assert store.get("anyone@bad.example", "example.com", NOW)["recipient"] == "@bad.example"
    assert store.get("anyone@good.example", "example.com", NOW) is None
    assert store.get("anyone@bad.example", "other.example", NOW) is None


def test_prune_drops_expired_with_history(store):
    apply(store, f.expiration("old@example.net", timestamp=NOW - 29 * DAY))
    apply(store, f.bounce("live@example.net", timestamp=NOW - DAY))
    assert store.prune(NOW + 2 * DAY) == 1
    assert store.conn.execute("SELECT COUNT(*) FROM suppressions").fetchone()[0] == 1
    assert store.history("old@example.net", "example.com")[-1]["action"] == "expire"


def _history_rows(store, recipient):
    """(action, indexed) of the pair's rows as a panel reading the table sees them, and the
    id of the add row its entry reaches."""
    rows = store.conn.execute("SELECT action, indexed FROM history WHERE recipient = ? ORDER BY id",
                              (recipient,)).fetchall()
    added = store.conn.execute("SELECT added FROM suppressions WHERE recipient = ?", (recipient,)).fetchone()
    return [tuple(r) for r in rows], None if added is None else added[0]


def test_a_live_entrys_add_row_is_reached_from_the_entry_and_every_other_row_from_the_pair_index(store):
    apply(store, f.bounce("u@example.net", timestamp=NOW - 10 * DAY))
    rows, added = _history_rows(store, "u@example.net")
    assert rows == [("add", None)], "a new entry's add row is appended, not indexed"
    assert added == store.history_mark()
    apply(store, f.bounce("u@example.net", timestamp=NOW - DAY))
    assert _history_rows(store, "u@example.net") == ([("add", None), ("refresh", 1)], added)
    assert store.remove("u@example.net", "example.com", NOW)
    assert _history_rows(store, "u@example.net") == ([("add", 1), ("refresh", 1), ("remove", 1)], None)
    apply(store, f.bounce("u@example.net", timestamp=NOW + 10), now=NOW + 20)
    rows, added = _history_rows(store, "u@example.net")
    assert rows == [("add", 1), ("refresh", 1), ("remove", 1), ("add", None)] and added == store.history_mark()
    assert [h["action"] for h in store.history("u@example.net", "example.com")] == ["add", "refresh", "remove", "add"]


def test_an_entry_that_expires_or_starts_afresh_files_its_add_row_under_the_pair(store):
    apply(store, f.expiration("old@example.net", timestamp=NOW - 29 * DAY))
    assert store.prune(NOW + 2 * DAY) == 1
    assert _history_rows(store, "old@example.net") == ([("add", 1), ("expire", 1)], None)
    apply(store, f.expiration("again@example.net", timestamp=NOW - 29 * DAY))
    # expired, not yet pruned: a later event adds the pair afresh
    apply(store, f.bounce("again@example.net", timestamp=NOW + DAY), now=NOW + 2 * DAY)
    rows, added = _history_rows(store, "again@example.net")
    assert rows == [("add", 1), ("add", None)] and added == store.history_mark()
    assert [h["action"] for h in store.history("again@example.net", "example.com")] == ["add", "add"]


def test_an_add_row_trimmed_by_retention_is_never_confused_with_a_later_row(store):
    apply(store, f.bounce("u@example.net", timestamp=NOW - 100 * DAY), now=NOW - 100 * DAY)
    store.prune(NOW, history_retention=90 * DAY)     # the only history row goes: ids start over
    assert store.history_mark() == 0
    apply(store, f.bounce("v@example.net", timestamp=NOW - DAY))
    assert store.history("u@example.net", "example.com") == []
    assert [h["action"] for h in store.history("v@example.net", "example.com")] == ["add"]


@pytest.mark.parametrize("recipient", ["üser@exämple.net", "mañana@例え.jp", "smile\U0001F600@example.net",
                                       'quote"back\\slash@example.net'])
def test_a_batch_finds_the_stored_entry_and_tombstone_of_any_recipient_key(store, recipient):
    """A batch looks its pairs up through a JSON array: every key must come back as the
    very text stored, or a second event would start the entry afresh."""
    first = apply(store, f.bounce(recipient, timestamp=NOW - 2 * DAY))
    key = store.conn.execute("SELECT recipient FROM suppressions").fetchone()[0]
    assert first.added == {"bounce": 1}
    assert apply(store, f.bounce(recipient, timestamp=NOW - DAY)).refreshed == {"bounce": 1}
    assert store.get(key, "example.com", NOW)["count"] == 2
    assert store.remove(key, "example.com", NOW - 10)
    assert apply(store, f.bounce(recipient, timestamp=NOW - 20)).tombstoned == 1


def test_history_of_a_pair_reads_the_partial_pair_index(store):
    plan = " ".join(r[-1] for r in store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM history WHERE domain = ? AND recipient = ? AND indexed", ("d", "r")))
    assert "USING INDEX history_pair" in plan or "USING COVERING INDEX history_pair" in plan, plan


def test_generation_bumps_only_on_exported_changes(store):
    apply(store, f.bounce("u@example.net", timestamp=NOW - 3 * DAY))
    g1 = store.domain_generations()["example.com"]
    # a refresh that moves expires changes the snapshot
    apply(store, f.bounce("u@example.net", timestamp=NOW - DAY))
    g2 = store.domain_generations()["example.com"]
    assert g2 > g1
    # an older event changes nothing a snapshot shows (since stays, expires stays)
    apply(store, f.bounce("u@example.net", timestamp=NOW - 2 * DAY))
    assert store.domain_generations()["example.com"] == g2


def test_migrate_is_idempotent_and_refuses_newer_schema(tmp_path):
    from exporter.store import StoreError
    Store.open(tmp_path / "s.db").close()
    Store.open(tmp_path / "s.db").close()
    with Store.open(tmp_path / "s.db") as s:
        s.conn.execute("PRAGMA user_version=99")
    with pytest.raises(StoreError, match="newer"):
        Store.open(tmp_path / "s.db")


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_expiration_threshold_does_not_depend_on_arrival_order(store, order):
    """Webhook retries and several nodes deliver events out of order."""
    rules = dict(expiration_threshold=2, expiration_window="2d")
    times = [NOW - DAY, NOW - 3600]
    for i in order:
        apply(store, f.expiration("u@example.net", timestamp=times[i]), **rules)
    entry = store.get("u@example.net", "example.com", NOW)
    assert entry is not None, "two expirations within the window suppress, whatever their order"
    assert (entry["first_seen"], entry["last_seen"], entry["expires"], entry["count"]) == \
        (NOW - 3600, NOW - 3600, NOW - 3600 + 30 * DAY, 1)


def test_replayed_never_expiring_event_does_not_count_twice_after_prune(store):
    rec = f.feedback("u@example.net", "news@example.com", timestamp=NOW - 500 * DAY)
    apply(store, rec, now=NOW - 499 * DAY)
    store.prune(NOW)
    apply(store, rec)
    assert store.get("u@example.net", "example.com", NOW)["count"] == 1


def test_schema_1_store_is_migrated_and_keeps_its_memory(tmp_path):
    """A store written by schema 1 (rowid tables, 16-byte event keys) keeps its entries,
    tombstones, history and event memory: a record it had seen is still a duplicate."""
    import hashlib
    import sqlite3
    rec = f.bounce("u@example.net", timestamp=NOW - DAY)
    event = to_event(rec, DomainSource(), "suppressed.kumo_suppression")
    material = "\x1f".join((event.type, event.message_id, "u@example.net", event.domain,
                            str(event.timestamp), str(event.code)))
    old_key = hashlib.blake2b(material.encode(), digest_size=16).digest()
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE suppressions (domain TEXT, recipient TEXT, reason TEXT NOT NULL, source TEXT NOT NULL,
          first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, expires INTEGER, count INTEGER NOT NULL,
          ev_type TEXT, ev_message_id TEXT, ev_code INTEGER, ev_enhanced_code TEXT, ev_content TEXT,
          ev_classification TEXT, ev_nodeid TEXT, note TEXT, updated_at INTEGER, PRIMARY KEY (domain, recipient));
        CREATE TABLE tombstones (domain TEXT, recipient TEXT, removed_at INTEGER, note TEXT,
          PRIMARY KEY (domain, recipient));
        CREATE TABLE history (id INTEGER PRIMARY KEY, at INTEGER, action TEXT, domain TEXT, recipient TEXT,
          reason TEXT, source TEXT, event_time INTEGER, expires INTEGER, detail TEXT);
        CREATE TABLE seen_events (key BLOB PRIMARY KEY, at INTEGER);
        CREATE TABLE strikes (domain TEXT, recipient TEXT, reason TEXT, at INTEGER, key BLOB PRIMARY KEY);
        CREATE TABLE domains (domain TEXT PRIMARY KEY, generation INTEGER);
        CREATE TABLE segments (path TEXT PRIMARY KEY, lines INTEGER, complete INTEGER, size INTEGER,
          updated_at INTEGER);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER);
        CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT);
        CREATE INDEX suppressions_expires ON suppressions(expires);
        CREATE INDEX suppressions_reason ON suppressions(reason);
        CREATE INDEX history_pair ON history(domain, recipient);
        CREATE INDEX strikes_pair ON strikes(domain, recipient, at);
        CREATE INDEX seen_events_at ON seen_events(at);
        INSERT INTO state VALUES ('store_id', 'old-store');
        INSERT INTO domains VALUES ('example.com', 3);
        INSERT INTO tombstones VALUES ('example.com', 'gone@example.net', 1799000000, 'asked');
        PRAGMA user_version=1;
    """)
    conn.execute("INSERT INTO suppressions VALUES ('example.com', 'u@example.net', 'bounce', 'log', ?, ?, ?, 1, "
                 "'Bounce', ?, 550, '5.1.1', '5.1.1 user unknown', 'InvalidRecipient', 'node', NULL, ?)",
                 (NOW - DAY, NOW - DAY, NOW + 364 * DAY, event.message_id, NOW - DAY))
    conn.execute("INSERT INTO history(at, action, domain, recipient, reason, source, event_time, expires) "
                 "VALUES (?, 'add', 'example.com', 'u@example.net', 'bounce', 'log', ?, ?)",
                 (NOW - DAY, NOW - DAY, NOW + 364 * DAY))
    conn.execute("INSERT INTO seen_events VALUES (?, ?)", (old_key, NOW - DAY))
    conn.commit()
    conn.close()
    with Store.open(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.store_id == "old-store" and store.domain_generations() == {"example.com": 3}
        entry = store.get("u@example.net", "example.com", NOW)
        assert (entry["count"], entry["expires"], entry["evidence"]["nodeid"]) == (1, NOW + 364 * DAY, "node")
        assert [h["action"] for h in store.history("u@example.net", "example.com")] == ["add"]
        assert apply(store, rec).duplicates == 1, "the migrated event memory still knows the record"
        assert apply(store, f.bounce("gone@example.net", timestamp=1799000000 - 10)).tombstoned == 1


def test_prune_trims_history_older_than_the_retention(store):
    apply(store, f.bounce("u@example.net", timestamp=NOW - 100 * DAY), now=NOW - 100 * DAY)
    apply(store, f.bounce("u@example.net", timestamp=NOW - DAY))
    apply(store, f.bounce("v@example.net", timestamp=NOW - 201 * DAY), now=NOW - 201 * DAY)
    assert store.remove("v@example.net", "example.com", NOW - 200 * DAY)
    store.prune(NOW, history_retention=90 * DAY)
    assert [h["action"] for h in store.history("u@example.net", "example.com")] == ["refresh"]
    entry = store.get("u@example.net", "example.com", NOW)
    assert (entry["first_seen"], entry["count"]) == (NOW - 100 * DAY, 2), "the entry keeps its own record"
    assert store.stats(NOW)["tombstones"] == 1, "a removal stays in force and on record"
    store.prune(NOW, history_retention=None)
    assert len(store.history("u@example.net", "example.com")) == 1


def test_schema_4_store_migrates_and_answers_as_before(tmp_path):
    """A store schema-4 code wrote (tests/vectors/store_v4.sql, its dump) migrates on open
    and answers every read as schema-4 code did (tests/vectors/store_v4_reads.json); the
    records it had seen are still duplicates, its tombstone still holds."""
    import json
    import sqlite3
    from pathlib import Path
    vectors = Path(__file__).resolve().parent / "vectors"
    path = tmp_path / "v4.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((vectors / "store_v4.sql").read_text())
    now = 1_790_000_000
    want = json.loads((vectors / "store_v4_reads.json").read_text())
    with Store.open(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.store_id == "v4-store"
        got = {"entries": list(store.iter_entries(now)),
               "history": {key: store.history(key.split(" ")[1], key.split(" ")[0]) for key in want["history"]},
               "stats": store.stats(now), "gens": store.domain_generations(),
               "domains_of_c": store.suppressing_domains("c@example.org", now),
               "domains_of_bad": store.suppressing_domains("z@bad.example", now)}
        assert json.loads(json.dumps(got)) == want
        rules = dict(ttl={"bounce": "3650d", "expiration": "3650d"})
        for rcpt, mid, days in (("u@example.net", "m1", 3), ("u@example.net", "m2", 1)):
            again = f.bounce(rcpt, timestamp=now - days * DAY, id=mid, content="newer" if mid == "m2" else "")
            again["nodeid"] = "node-a"
            assert apply(store, again, now=now, **rules).duplicates == 1, mid
        assert apply(store, f.bounce("gone@example.net", timestamp=now - 2 * DAY, id="m9"), now=now,
                     **rules).tombstoned == 1
        assert store.get("u@example.net", "example.com", now)["count"] == 2


def test_schema_6_store_migrates_to_two_row_entries_and_answers_as_before(tmp_path):
    """A store schema-6 code wrote (tests/vectors/store_v6.sql, its dump: one row per entry)
    migrates on open to schema 7's entries and entry_details, and answers every read as
    schema-6 code did (tests/vectors/store_v6_reads.json), each live entry still reaching
    its add row; the view keeps the table a panel read."""
    import json
    import sqlite3
    from pathlib import Path
    vectors = Path(__file__).resolve().parent / "vectors"
    path = tmp_path / "v6.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((vectors / "store_v6.sql").read_text())
        before = [tuple(r) for r in conn.execute("SELECT * FROM suppressions ORDER BY domain, recipient")]
    now = 1_790_000_000
    want = json.loads((vectors / "store_v6_reads.json").read_text())
    with Store.open(path) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        got = {"entries": list(store.iter_entries(now)),
               "history": {key: store.history(key.split(" ")[1], key.split(" ")[0]) for key in want["history"]},
               "stats": store.stats(now), "gens": store.domain_generations(),
               "snapshot": {d: [list(r) for r in store.iter_snapshot(d, now)] for d in want["snapshot"]},
               "domains_of_bad": store.suppressing_domains("z@bad.example", now)}
        assert json.loads(json.dumps(got)) == want
        conn = store.conn
        assert [tuple(r) for r in conn.execute("SELECT * FROM suppressions ORDER BY domain, recipient")] == before
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_master WHERE name IN "
                                  "('suppressions', 'entries', 'entry_details')").fetchall())
        assert kinds == {"suppressions": "view", "entries": "table", "entry_details": "table"}
        # details numbered in key order, one each
        assert conn.execute("SELECT group_concat(detail) FROM entries").fetchone()[0] == \
            ",".join(str(i) for i in range(1, len(before) + 1))
        rules = dict(ttl={"bounce": "3650d", "expiration": "3650d"})
        assert apply(store, f.bounce("u@example.net", timestamp=now - 1 * DAY, id="m2", content="newer"),
                     now=now, **rules).duplicates == 1
        assert apply(store, f.bounce("gone@example.net", timestamp=now - 3 * DAY, id="m9"), now=now,
                     **rules).tombstoned == 1
        apply(store, f.bounce("u@example.net", timestamp=now - 10, id="m7"), now=now, **rules)
        assert store.get("u@example.net", "example.com", now)["count"] == 3
        assert [h["action"] for h in store.history("u@example.net", "example.com")] == ["add", "refresh", "refresh"]


def test_the_suppressions_view_writes_like_the_table_it_replaced(store):
    """A row written by hand into `suppressions` (a panel's fix-up, a test) lands in
    entries and entry_details; replaced, updated or deleted, it leaves no details behind."""
    conn = store.conn
    insert = ("INSERT INTO suppressions(domain, recipient, reason, source, first_seen, last_seen, expires, count, "
              "ev_content, note) VALUES ('example.com', 'u@example.net', ?, 'import', 1, 2, NULL, ?, 'text', ?)")
    conn.execute(insert, ("bounce", 1, "first"))
    conn.execute(insert, ("manual", 5, "second"))       # the same pair again: the row is replaced
    assert store.get("u@example.net", "example.com", NOW)["reason"] == "manual"
    assert store.get("u@example.net", "example.com", NOW)["count"] == 5
    assert conn.execute("SELECT COUNT(*) FROM entry_details").fetchone()[0] == 1
    conn.execute("UPDATE suppressions SET note = 'third', expires = ? WHERE recipient = 'u@example.net'", (NOW + DAY,))
    entry = store.get("u@example.net", "example.com", NOW)
    assert (entry["note"], entry["expires"], entry["evidence"]["content"]) == ("third", NOW + DAY, "text")
    conn.execute("DELETE FROM suppressions WHERE domain = 'example.com'")
    assert [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("entries", "entry_details")] == [0, 0]


def test_every_entry_has_one_details_row_through_adds_refreshes_removals_and_prune(store):
    """New entries' details are appended; a refresh rewrites its entry's details in place;
    removal and prune take them away with the entry."""
    def details():
        return [tuple(r) for r in store.conn.execute(
            "SELECT e.recipient, d.id, d.count FROM entries e JOIN entry_details d ON d.id = e.detail "
            "ORDER BY d.id")]
    apply(store, f.bounce("b@example.net", timestamp=NOW - 3 * DAY))
    apply(store, f.bounce("a@example.net", timestamp=NOW - 3 * DAY))
    apply(store, f.expiration("old@example.net", timestamp=NOW - 29 * DAY))
    assert details() == [("b@example.net", 1, 1), ("a@example.net", 2, 1), ("old@example.net", 3, 1)]
    apply(store, f.bounce("b@example.net", timestamp=NOW - DAY))
    assert details()[0] == ("b@example.net", 1, 2)
    assert store.remove("a@example.net", "example.com", NOW)
    assert store.prune(NOW + 2 * DAY) == 1
    assert details() == [("b@example.net", 1, 2)]
    assert store.conn.execute("SELECT COUNT(*) FROM entry_details").fetchone()[0] == 1


def test_a_snapshot_reads_the_narrow_entries_alone(store):
    """What export reads needs no entry_details: its queries, and a panel's read of the
    same columns through the view, touch the clustered entries only."""
    for sql in ("SELECT recipient, reason, first_seen, expires FROM entries WHERE domain = ? ORDER BY recipient",
                "SELECT recipient, reason, first_seen, expires FROM suppressions WHERE domain = ?"):
        plan = " ".join(r[-1] for r in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}", ("d",)))
        assert "entry_details" not in plan and " d " not in f"{plan} ", plan


@pytest.mark.parametrize("evidence", [
    ("Bounce", "b72d729558e74286b69e2e09f1b5b6a1", 550, "5.1.1", "5.1.1 user unknown", "InvalidRecipient",
     "0b5e1b4e-9a55-11ee-8c90-0242ac120002"),
    ("Bounce", "B72D729558E74286B69E2E09F1B5B6A1", 550, None, "", "SomeFutureLabel",
     "0B5E1B4E-9A55-11EE-8C90-0242AC120002"),
    ("OOB", "0a " * 10 + "ab", None, None, None, None, "0b5e1b4e 9a55-11ee-8c90-0242ac120002"),
    ("manual", None, None, None, None, None, None),
    ("Feedback", "not-hex-at-all-but-32-chars-long", 250, None, "x", "Uncategorized", "node-1"),
])
def test_evidence_is_stored_compactly_and_read_back_exactly(store, evidence):
    """Message ids and node ids in kumod's shape take 16 bytes, known names one; every
    other value stays as it was; the API/CLI object shows the very strings."""
    from exporter.store import pack_evidence, unpack_evidence
    packed = pack_evidence(evidence)
    assert unpack_evidence(packed) == evidence
    store.conn.execute("INSERT INTO suppressions(domain, recipient, reason, source, first_seen, last_seen, count, "
                       "ev_type, ev_message_id, ev_code, ev_enhanced_code, ev_content, ev_classification, ev_nodeid) "
                       "VALUES ('example.com', 'u@example.net', 'bounce', 'log', 1, 1, 1, ?, ?, ?, ?, ?, ?, ?)", packed)
    got = store.get("u@example.net", "example.com", NOW)["evidence"]
    assert tuple(got.values()) == evidence
    if evidence[1] == "b72d729558e74286b69e2e09f1b5b6a1":
        # bytearrays: sqlite3 binds them directly (bytes go through its adapter registry)
        assert [type(v) for v in packed] == [bytearray, bytearray, int, str, str, bytearray, bytearray]
        assert len(packed[1]) == len(packed[6]) == 16 and len(packed[0]) == 1
