"""The library as a script or the HTTP API uses it: `from exporter import SuppressionList`."""

import io
import json

import pytest

import logfactory as f
from exporter import SuppressionList
from exporter.config import load_config
from exporter.store import SCHEMA_VERSION, StoreError

NOW = 1_790_000_000   # in the past: records from the future are malformed
DAY = 86400


@pytest.fixture
def sl(install):
    with SuppressionList.open(install.config_path) as opened:
        yield opened


def written(sl) -> dict:
    """Row counts of every table a write touches: "nothing written" means these stay."""
    return {t: sl.store.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            for t in ("suppressions", "tombstones", "history")}


def test_add_normalizes_keys_and_check_returns_the_entry(sl):
    entry = sl.add("User@Example.NET", "Example.COM", reason="manual", ttl="30d", note="ticket 4711", now=NOW)
    assert (entry["suppressed"], entry["recipient"], entry["domain"], entry["reason"], entry["source"]) == \
        (True, "user@example.net", "example.com", "manual", "manual")
    assert entry["expires"] == NOW + 30 * DAY and entry["note"] == "ticket 4711"
    assert sl.check("user@example.net", "example.com", now=NOW) == entry
    assert sl.check("<USER@example.net>", "example.com.", now=NOW) == entry
    assert sl.check("user@example.net", "other.example", now=NOW) is None
    assert sl.check("user@example.net", "example.com", now=NOW + 30 * DAY) is None, "expired"


def test_now_defaults_to_the_current_time(sl):
    entry = sl.add("u@example.net", "example.com", ttl=3600)
    assert sl.check("u@example.net", "example.com") == entry
    assert entry["expires"] - entry["first_seen"] == 3600


def test_ttl_defaults_to_the_reasons_lifetime(sl):
    assert sl.add("b@example.net", "example.com", reason="bounce", now=NOW)["expires"] == NOW + 365 * DAY
    assert sl.add("m@example.net", "example.com", now=NOW)["expires"] is None
    assert sl.add("n@example.net", "example.com", reason="bounce", ttl="never", now=NOW)["expires"] is None


@pytest.mark.parametrize("args,kwargs,argument", [
    (("Some One <x@y.example>", "example.com"), {}, "recipient"),
    (("no-at-sign", "example.com"), {}, "recipient"),
    (("u@*.example", "example.com"), {}, "recipient"),
    (("u@example.net", "not a domain"), {}, "domain"),
    (("u@example.net", "*"), {}, "domain"),
    (("u@example.net", "u@example.com"), {}, "domain"),
    (("u@example.net", "example.com"), {"reason": "bogus"}, "reason"),
    (("u@example.net", "example.com"), {"ttl": "0s"}, "ttl"),
    (("u@example.net", "example.com"), {"ttl": 0}, "ttl"),
    (("u@example.net", "example.com"), {"ttl": -60}, "ttl"),
    (("u@example.net", "example.com"), {"ttl": "soon"}, "ttl"),
    (("u@example.net", "example.com"), {"ttl": True}, "ttl"),
    (("u@example.net", "example.com"), {"note": 42}, "note"),
    (("u@example.net", "example.com"), {"note": "x" * 5000}, "note"),
    (("u@example.net", "example.com"), {"source": "log?"}, "source"),
])
def test_a_bad_argument_is_a_value_error_naming_it_and_nothing_is_written(sl, args, kwargs, argument):
    before = written(sl)
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        sl.add(*args, **kwargs)
    assert written(sl) == before


def test_remove_leaves_a_tombstone_only_when_it_removed_something(sl):
    sl.add("u@example.net", "example.com", now=NOW)
    assert sl.remove("U@Example.net", "example.com", note="customer asked", now=NOW + 10) is True
    assert sl.check("u@example.net", "example.com", now=NOW + 20) is None
    assert written(sl)["tombstones"] == 1
    before = written(sl)
    assert sl.remove("u@example.net", "example.com", now=NOW + 30) is False
    assert sl.remove("u@example.net", "exmaple.com", now=NOW + 30) is False, "a typo in the domain"
    assert written(sl) == before, "nothing written for a pair that is not suppressed"
    with pytest.raises(ValueError, match="^domain: "):
        sl.remove("u@example.net", "not a domain")


def test_history_says_who_did_what_and_why(sl, install):
    install.ingest([f.bounce("u@example.net", timestamp=NOW - DAY)])
    sl.add("u@example.net", "example.com", reason="complaint", note="ticket 7", actor="panel")
    sl.remove("u@example.net", "example.com", note="resolved", actor="support", source="api")
    rows = sl.history("U@example.net", "Example.com")
    assert [(h["action"], h["source"], h["actor"], h["note"]) for h in rows] == [
        ("add", "log", None, None), ("refresh", "manual", "panel", "ticket 7"), ("remove", "api", "support", "resolved")]
    assert rows[0]["at"] <= rows[1]["at"] <= rows[2]["at"]
    assert sl.history("nobody@example.net", "example.com") == []


def test_other_domains_that_suppress_the_recipient(sl):
    sl.add("u@example.net", "a.example", now=NOW)
    sl.add("@example.net", "b.example", now=NOW)
    sl.add("someone@else.example", "c.example", now=NOW)
    assert sl.other_domains("U@example.net", now=NOW) == ["a.example", "b.example"]
    assert sl.check("u@example.net", "a.example", now=NOW)["other_domains"] == ["b.example"]
    assert sl.lookup("u@example.net", "c.example", now=NOW) == {
        "suppressed": False, "recipient": "u@example.net", "domain": "c.example",
        "other_domains": ["a.example", "b.example"]}
    assert sl.other_domains("v@nowhere.example", now=NOW) == []


def test_entries_filter_and_page_through_everything_exactly_once(sl):
    for i in range(23):
        sl.add(f"u{i:02}@dest.example", f"d{i % 3}.example", reason="bounce" if i % 2 else "manual", now=NOW)
    everything = list(sl.entries(now=NOW))
    assert [(e["domain"], e["recipient"]) for e in everything] == \
        sorted((e["domain"], e["recipient"]) for e in everything)
    assert len(everything) == 23 and all(e["suppressed"] for e in everything)
    seen, cursor = [], None
    while True:
        items, cursor = sl.page(limit=5, cursor=cursor, now=NOW)
        seen += items
        if cursor is None:
            break
    assert seen == everything
    manual_d1 = sl.page(domain="D1.example", reason="manual", now=NOW)[0]
    assert {(e["domain"], e["reason"]) for e in manual_d1} == {("d1.example", "manual")}
    sl.add("u05@dest.example", "other.example", now=NOW)
    assert [e["domain"] for e in sl.entries(recipient="U05@dest.example", now=NOW)] == ["d2.example",
                                                                                       "other.example"]


@pytest.mark.parametrize("kwargs,argument", [
    ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "10"}, "limit"),
    ({"cursor": "garbage!"}, "cursor"), ({"cursor": "WzFd"}, "cursor"), ({"reason": "bogus"}, "reason"),
    ({"domain": "*"}, "domain"),
])
def test_page_refuses_bad_arguments(sl, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        sl.page(**kwargs)


def test_add_many_is_all_or_none(sl):
    good = [{"recipient": "A@example.net", "domain": "example.com"},
            {"recipient": "b@example.net", "domain": "example.com", "reason": "bounce", "ttl": "7d", "note": "n"},
            {"recipient": "c@example.net", "domain": "example.com", "since": NOW - DAY, "expires": None}]
    with pytest.raises(ValueError, match=r"^items\[3\]\.recipient: "):
        sl.add_many(good + [{"recipient": "Some One <d@example.net>", "domain": "example.com"}], now=NOW)
    assert written(sl)["suppressions"] == 0
    with pytest.raises(ValueError, match=r"^items\[0\]\.ttl: "):
        sl.add_many([{"recipient": "a@example.net", "domain": "example.com", "ttl": "0s"}], now=NOW)
    assert sl.add_many(good, source="api", actor="support", now=NOW) == 3
    b = sl.check("b@example.net", "example.com", now=NOW)
    assert (b["source"], b["expires"], b["note"]) == ("api", NOW + 7 * DAY, "n")
    assert sl.history("b@example.net", "example.com")[0]["actor"] == "support"
    assert sl.check("c@example.net", "example.com", now=NOW)["first_seen"] == NOW - DAY


def test_import_csv_takes_a_bom_and_a_header_and_reports_every_bad_row(sl):
    text = ("\ufeffrecipient,domain,reason\n"
            "a@example.net,example.com,bounce\n"
            "Some One <b@example.net>,example.com\n"
            "c@example.net,not a domain\n"
            "d@example.net,example.com,bogus\n")
    stream = io.StringIO(text)
    stream.name = "rows.csv"
    with pytest.raises(ValueError) as err:
        sl.import_csv(stream, now=NOW)
    lines = str(err.value).splitlines()
    assert [line.split(": ")[0] for line in lines] == ["rows.csv:3", "rows.csv:4", "rows.csv:5"]
    assert "recipient" in lines[0] and "domain" in lines[1] and "reason" in lines[2]
    assert written(sl)["suppressions"] == 0, "a bad row stores nothing"
    assert sl.import_csv(io.StringIO("\ufeffrecipient,domain\nA@example.net,example.com\n"), now=NOW) == 1
    assert sl.check("a@example.net", "example.com", now=NOW)["source"] == "import"


def test_dump_escapes_formula_cells_and_import_takes_them_back(sl, install):
    sl.add("@bad.example", "example.com", now=NOW)
    sl.add("=cmd|'/ccalc'!a0@x.example", "example.com", now=NOW)
    sl.add("-1+2@x.example", "example.com", now=NOW)
    sl.add("'=quoted@x.example", "example.com", now=NOW)
    sl.add("plain@x.example", "example.com", now=NOW)
    out = io.StringIO()
    assert sl.dump_csv(out, now=NOW) == 5
    cells = [line.split(",")[0] for line in out.getvalue().splitlines()[1:]]
    assert all(not c.lstrip('"')[:1] in "=+-@\t\r" for c in cells), cells
    assert "'@bad.example" in cells and "plain@x.example" in cells
    from conftest import Install
    (install.root / "copy").mkdir()
    with SuppressionList.open(Install(install.root / "copy").config_path) as copy:
        copy.import_csv(io.StringIO(out.getvalue()), now=NOW)
        assert [e["recipient"] for e in copy.entries(now=NOW)] == [e["recipient"] for e in sl.entries(now=NOW)]


def test_summary_counts_active_entries(sl):
    sl.add("a@example.net", "example.com", reason="bounce", now=NOW)
    sl.add("b@example.net", "shop.example", now=NOW)
    sl.add("c@example.net", "shop.example", ttl=60, now=NOW - 120)
    assert sl.summary(now=NOW) == {"total": 2, "domains": {"example.com": 1, "shop.example": 1},
                                   "reasons": {"bounce": 1, "manual": 1}}
    assert sl.stats(now=NOW)["expired_not_pruned"] == 1
    assert sl.prune(now=NOW) == 1


def test_ingest_export_and_records_from_the_webhook(sl, install):
    install.segment([f.bounce("u@example.net")])
    assert sl.ingest().applied.added == {"bounce": 1}
    assert sl.ingest_records([f.bounce("w@example.net")]).applied.added == {"bounce": 1}
    assert sl.export().written == ["example.com.json"]
    assert sl.export().unchanged == 1
    assert set(install.snapshot("example.com")["recipients"]) == {"u@example.net", "w@example.net"}
    with pytest.raises(ValueError, match="^paths: .*missing.jsonl"):
        sl.ingest([install.root / "missing.jsonl"])


def test_open_takes_a_config_and_create_false_refuses_a_missing_store(install, tmp_path):
    config = load_config(install.config_path)
    install.db.unlink()
    with pytest.raises(StoreError, match="init"):
        SuppressionList.open(config, create=False)
    with SuppressionList.open(config) as sl:
        assert sl.config is config and sl.store.path == config.store.path
    with SuppressionList.open(install.config_path, create=False) as sl:
        assert sl.check("u@example.net", "example.com") is None


def test_open_migrates_a_store_without_actor_and_note(install):
    import sqlite3
    with SuppressionList.open(install.config_path) as sl:
        sl.add("u@example.net", "example.com", note="from v1", now=NOW)
    with sqlite3.connect(install.db) as conn:   # what a store of schema 2 looked like
        conn.execute("CREATE TABLE one_row_entries AS SELECT * FROM suppressions")   # one table, no view
        conn.execute("DROP VIEW suppressions")
        conn.execute("DROP TABLE entries")
        conn.execute("DROP TABLE entry_details")
        conn.execute("ALTER TABLE one_row_entries RENAME TO suppressions")
        conn.execute("ALTER TABLE history RENAME COLUMN note TO detail")
        conn.execute("ALTER TABLE history DROP COLUMN actor")
        conn.execute("DROP INDEX history_pair")
        conn.execute("ALTER TABLE history DROP COLUMN indexed")
        conn.execute("CREATE INDEX history_pair ON history(domain, recipient)")
        conn.execute("DROP INDEX IF EXISTS suppressions_recipient")
        conn.execute("PRAGMA user_version=2")
    with SuppressionList.open(install.config_path) as sl:
        assert [(h["action"], h["actor"], h["note"]) for h in sl.history("u@example.net", "example.com")] == \
            [("add", None, "from v1")]
        sl.add("u@example.net", "example.com", actor="cli", now=NOW + 1)
        assert sl.history("u@example.net", "example.com")[-1]["actor"] == "cli"
        assert sl.store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION   # the current schema


def test_check_object_is_json_as_the_cli_and_api_print_it(sl):
    entry = sl.add("u@example.net", "example.com", now=NOW)
    assert json.loads(json.dumps(entry)) == entry and entry["other_domains"] == []
