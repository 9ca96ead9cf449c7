"""Snapshot loading: memoize + version check, reloads, manifest fallback, fail-open,
one log_error per bad file version, TOML, no file IO on the hot path."""

import json
import os

import pytest

from lua_support import (DAY, LARGE_SNAPSHOT_BYTES, NOW, SHARED_SNAPSHOT_TTL, Policy, entry,
                         large_recipients, snapshot_doc, write_manifest, write_snapshot)


@pytest.fixture
def snap(tmp_path):
    d = tmp_path / "snapshots"
    write_snapshot(d, "example.com", {"first@example.net": entry()})
    return d


def policy(snap, **kw):
    options = {"snapshot_dir": str(snap)}
    options.update(kw.pop("options", {}))
    return Policy(options, **kw)


def rejected(p, rcpt, domain="example.com"):
    return p.http(rcpt, from_domain=domain)[0].rejected


# ----------------------------------------------------------------------- reloads

def test_new_export_seen_after_check_interval_not_before(snap):
    p = policy(snap)
    assert rejected(p, "first@example.net") and not rejected(p, "second@example.net")
    write_snapshot(snap, "example.com", {"first@example.net": entry(), "second@example.net": entry()})
    p.clock.advance(4)
    assert not rejected(p, "second@example.net"), "version is memoized for check_interval"
    p.clock.advance(2)
    assert rejected(p, "second@example.net")


def test_custom_check_interval(snap):
    p = policy(snap, options={"check_interval": "1 minute"})
    assert rejected(p, "first@example.net")
    write_snapshot(snap, "example.com", {"second@example.net": entry()})
    p.clock.advance(30)
    assert not rejected(p, "second@example.net")
    p.clock.advance(31)
    assert rejected(p, "second@example.net") and not rejected(p, "first@example.net")


def test_file_removed_means_no_suppression(snap):
    p = policy(snap)
    assert rejected(p, "first@example.net")
    (snap / "example.com.json").unlink()
    p.clock.advance(6)
    assert not rejected(p, "first@example.net")
    assert p.k.errors_logged == []


def test_file_appearing_later_is_picked_up(tmp_path):
    d = tmp_path / "later"
    p = Policy({"snapshot_dir": str(d)})
    assert not rejected(p, "first@example.net")
    write_snapshot(d, "example.com", {"first@example.net": entry()})
    p.clock.advance(6)
    assert rejected(p, "first@example.net")


def test_unchanged_file_is_loaded_once(snap):
    p = policy(snap)
    for _ in range(3):
        for i in range(20):
            rejected(p, f"r{i}@example.net")
        p.clock.advance(6)
    stats = p.k.memo_stats("user.kumo_suppression.default.snapshots")
    assert stats["populated"] == 1, stats
    assert p.k.memo_stats("user.kumo_suppression.default.version")["populated"] == 3


def reexport(p, snap, versions, recipients_of):
    for i in range(versions):
        write_snapshot(snap, "example.com", recipients_of(i))
        os.utime(snap / "example.com.json", (1_700_000_000 + i, 1_700_000_000 + i))
        p.clock.advance(6)
        assert rejected(p, f"v{i}@example.net")


def test_a_large_snapshot_is_never_held_twice(snap):
    """A big domain re-exported every minute: its own capacity-1 cache, so loading a new
    version drops the old one at once."""
    p = policy(snap, options={"large_snapshot_bytes": LARGE_SNAPSHOT_BYTES})
    bulk = large_recipients()
    reexport(p, snap, 3, lambda i: {**bulk, f"v{i}@example.net": entry()})
    assert (snap / "example.com.json").stat().st_size >= LARGE_SNAPSHOT_BYTES
    stats = p.k.memo_stats("user.kumo_suppression.default.large_snapshot:example.com.json")
    assert stats["populated"] == 3 and stats["size"] == 1 and stats["evicted"] == 2, stats
    assert p.k.memo_stats("user.kumo_suppression.default.snapshots")["size"] == 0


def test_old_versions_of_small_snapshots_go_within_the_shared_ttl(snap):
    p = policy(snap)
    reexport(p, snap, 6, lambda i: {f"v{i}@example.net": entry()})
    stats = p.k.memo_stats("user.kumo_suppression.default.snapshots")
    assert stats["populated"] == 6 and stats["size"] <= 6
    p.clock.advance(SHARED_SNAPSHOT_TTL + 31)
    assert rejected(p, "v5@example.net")
    stats = p.k.memo_stats("user.kumo_suppression.default.snapshots")
    assert stats["size"] == 1 and stats["populated"] == 7, "the unchanged file is read again"


def test_caches_do_not_grow_with_domains(tmp_path):
    """kumod lists ~15 series per memoize cache and never removes them."""
    d = tmp_path / "many"
    for i in range(200):
        write_snapshot(d, f"d{i}.example", {"first@example.net": entry()})
    p = Policy({"snapshot_dir": str(d)})
    assert rejected(p, "first@example.net", "d0.example")
    series = p.k.metric_series()
    for i in range(200):
        assert rejected(p, "first@example.net", f"d{i}.example")
    assert p.k.metric_series() == series == 15 * 2, p.k.memo_names()


def test_a_failed_populate_is_not_retried_for_60s(snap):
    """kumod caches a populate error for 60 s; the module must not raise from its
    populate functions for a file that can be read again within that time."""
    p = policy(snap)
    assert rejected(p, "first@example.net")
    (snap / "example.com.json").write_text("{not json")
    p.clock.advance(6)
    assert not rejected(p, "first@example.net")
    write_snapshot(snap, "example.com", {"first@example.net": entry()})
    p.clock.advance(6)
    assert rejected(p, "first@example.net"), "a loader error is a cached false, not a raise"


def test_warm_checks_do_no_file_io(snap):
    p = policy(snap)
    rejected(p, "first@example.net")
    p.k.io_paths.clear()
    for i in range(50):
        rejected(p, f"r{i}@example.net")
        rejected(p, "first@example.net")
    assert p.k.io_paths == []
    p.clock.advance(6)
    rejected(p, "first@example.net")
    assert p.k.io_paths == [str(snap / "example.com.json")], "one stat per check_interval"


def test_warm_checks_make_no_memoize_call_until_the_version_check_is_due(snap):
    """A Lua state keeps its view of a domain's snapshot exactly as long as the memoized
    version check it came from: no memoize call per message, one of each per interval."""
    p = policy(snap)
    caches = ("user.kumo_suppression.default.version", "user.kumo_suppression.default.snapshots")

    def lookups():
        return [p.k.memo_stats(name)["lookups"] for name in caches]
    rejected(p, "first@example.net")
    before = lookups()
    for i in range(50):
        rejected(p, f"r{i}@example.net")
        rejected(p, "first@example.net")
    assert lookups() == before
    p.clock.advance(4.5)
    rejected(p, "first@example.net")
    assert lookups() == before, "still inside the interval of the version check"
    p.clock.advance(1)
    rejected(p, "first@example.net")
    rejected(p, "first@example.net")
    assert lookups() == [n + 1 for n in before]


def test_a_view_follows_a_version_checked_earlier_by_another_state(snap):
    """The version check may have been populated before this state asked (kumod shares
    memoize caches across its Lua states): a view expires with that check, so a new export
    is still seen within check_interval of it."""
    p = policy(snap)
    # another Lua state: the module loaded afresh, same instance name, so the same caches
    p.k.lua.globals()["SNAP"] = str(snap)
    other = p.k.execute("""package.loaded.suppression = nil
      local s = require('suppression'):new { snapshot_dir = SNAP, queue = 'other.kumo_suppression' }
      return function(r, d) return s:lookup(r, d) ~= nil end""")
    assert other("first@example.net", "example.com")                  # the check runs at t
    p.clock.advance(3)
    write_snapshot(snap, "example.com", {"second@example.net": entry()})
    assert not rejected(p, "second@example.net")                    # this state's view: t + 3
    p.clock.advance(2.5)                                            # t + 5.5: the check expired
    assert rejected(p, "second@example.net")


def test_memo_names_follow_instance_name(snap):
    p = policy(snap, options={"name": "node_a", "queue": "held.node_a"})
    rejected(p, "first@example.net")
    names = p.k.memo_names()
    assert "user.kumo_suppression.node_a.snapshots" in names
    assert "user.kumo_suppression.node_a.version" in names


# ----------------------------------------------------------------------- manifest fallback

def test_without_kumo_fs_manifest_gives_the_version(snap):
    write_manifest(snap)
    p = policy(snap, with_fs=False)
    assert p.k.eval("require('kumo').fs") is None
    assert rejected(p, "first@example.net")
    write_snapshot(snap, "example.com", {"second@example.net": entry()})
    p.clock.advance(6)
    assert not rejected(p, "second@example.net"), "manifest unchanged: old version still used"
    write_manifest(snap)
    p.clock.advance(6)
    assert rejected(p, "second@example.net") and not rejected(p, "first@example.net")
    assert p.k.errors_logged == []


def test_without_kumo_fs_no_manifest_fails_open_quietly(snap):
    p = policy(snap, with_fs=False)
    assert not rejected(p, "first@example.net")
    p.clock.advance(6)
    assert not rejected(p, "first@example.net")
    assert p.k.errors_logged == []


def test_without_kumo_fs_domain_missing_from_manifest(snap):
    write_manifest(snap)
    write_snapshot(snap, "other.example", {"first@example.net": entry()})  # not in the manifest
    p = policy(snap, with_fs=False)
    assert not rejected(p, "first@example.net", domain="other.example")


def test_without_kumo_fs_corrupt_manifest_logs_once(snap):
    (snap / "manifest.json").write_text("{not json")
    p = policy(snap, with_fs=False)
    for _ in range(5):
        assert not rejected(p, "first@example.net")
        p.clock.advance(6)
    assert len(p.k.errors_logged) == 1, p.k.errors_logged


def test_without_kumo_fs_manifest_read_once_per_interval(snap):
    write_manifest(snap)
    p = policy(snap, with_fs=False)
    rejected(p, "first@example.net")
    p.k.io_paths.clear()
    for i in range(30):
        rejected(p, f"r{i}@example.net")
    assert p.k.io_paths == []


# ----------------------------------------------------------------------- fail open

BAD_FILES = {
    "empty": b"",
    "corrupt_json": b'{"format": "kumo-suppression-snapshot", "version": 1',
    "not_an_object": b"[1, 2, 3]",
    "wrong_format": json.dumps({"format": "other", "version": 1, "recipients": {}}).encode(),
    "wrong_version": json.dumps({"format": "kumo-suppression-snapshot", "version": 2,
                                 "recipients": {"first@example.net": entry()}}).encode(),
    "recipients_not_table": json.dumps({"format": "kumo-suppression-snapshot", "version": 1,
                                        "recipients": "first@example.net"}).encode(),
    "wrong_domain": json.dumps({"format": "kumo-suppression-snapshot", "version": 1,
                                "domain": "evil.example",
                                "recipients": {"first@example.net": entry()}}).encode(),
    "binary": b"\xff\xfe\x00garbage",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_file_fails_open_with_one_error_per_version(snap, kind):
    (snap / "example.com.json").write_bytes(BAD_FILES[kind])
    p = policy(snap)
    for _ in range(3):
        for flow in ("http", "smtp"):
            r, msg = getattr(p, flow)("first@example.net")
            assert r.ok if flow == "http" else r.accepted
            assert "queue" not in msg.meta
        p.clock.advance(6)
    errors = p.k.errors_logged
    assert len(errors) == 1, errors
    assert "example.com.json" in errors[0]
    # a new bad version: one more error; then a good one: suppression is back
    (snap / "example.com.json").unlink()
    (snap / "example.com.json").write_bytes(BAD_FILES[kind] + b" ")
    p.clock.advance(6)
    rejected(p, "first@example.net")
    rejected(p, "first@example.net")
    assert len(p.k.errors_logged) == 2
    write_snapshot(snap, "example.com", {"first@example.net": entry()})
    p.clock.advance(6)
    assert rejected(p, "first@example.net")


def test_directory_where_file_should_be(snap):
    (snap / "example.com.json").unlink()
    (snap / "example.com.json").mkdir()
    p = policy(snap)
    assert not rejected(p, "first@example.net")
    p.clock.advance(6)
    assert not rejected(p, "first@example.net")
    assert len(p.k.errors_logged) == 1


def test_symlink_is_refused(snap, tmp_path):
    outside = tmp_path / "outside"
    write_snapshot(outside, "example.com", {"first@example.net": entry()})
    (snap / "example.com.json").unlink()
    os.symlink(outside / "example.com.json", snap / "example.com.json")
    p = policy(snap)
    assert not rejected(p, "first@example.net")
    assert len(p.k.errors_logged) == 1 and "regular file" in p.k.errors_logged[0]


def test_missing_dir_fails_open_quietly(tmp_path):
    p = Policy({"snapshot_dir": str(tmp_path / "nope")})
    r, msg = p.smtp("first@example.net")
    assert r.accepted and "queue" not in msg.meta
    assert p.http("first@example.net")[0].ok
    assert p.k.errors_logged == [] and p.lookup("first@example.net", "example.com") is None


BAD_ENTRIES = {
    "str": "bounce",
    "num": 42,
    "list": [1, 2],
    "noreason": {"since": NOW},
    "badreason": {"reason": 5, "since": NOW},
    "badsince": {"reason": "bounce", "since": "yesterday"},
    "badexpires": {"reason": "bounce", "since": NOW, "expires": "never"},
}


@pytest.mark.parametrize("bad", sorted(BAD_ENTRIES))
def test_wrong_entry_field_types_fail_open_and_are_reported_once(snap, bad):
    write_snapshot(snap, "example.com", {"good@example.net": entry(),
                                         f"{bad}@example.net": BAD_ENTRIES[bad]})
    p = policy(snap)
    for _ in range(3):
        assert not rejected(p, "good@example.net") and not rejected(p, f"{bad}@example.net")
    p.clock.advance(6)
    assert not rejected(p, "good@example.net")
    assert len(p.k.errors_logged) == 1, p.k.errors_logged
    assert f"{bad}@example.net" in p.k.errors_logged[0] and "wrong field type" in p.k.errors_logged[0]
    write_snapshot(snap, "example.com", {"good@example.net": entry()})
    p.clock.advance(6)
    assert rejected(p, "good@example.net"), "the next good version suppresses again"
    assert len(p.k.errors_logged) == 1


@pytest.mark.parametrize("recipients,needle", [
    (["a@example.net"], "recipients is an array"),
    ([{"reason": "bounce", "since": NOW}], "recipients is an array"),
    ("a@example.net", "recipients is a string"),
    (None, "recipients is a nil"),
])
def test_recipients_not_a_map_fails_open_and_is_reported_once(snap, recipients, needle):
    doc = snapshot_doc("example.com", {})
    doc["recipients"] = recipients
    (snap / "example.com.json").write_text(json.dumps(doc))
    p = policy(snap)
    for _ in range(3):
        assert not rejected(p, "a@example.net")
        p.clock.advance(6)
    assert len(p.k.errors_logged) == 1 and needle in p.k.errors_logged[0], p.k.errors_logged


@pytest.mark.parametrize("field,value", [("count", "12"), ("generated_at", 5), ("domain", 7)])
def test_wrong_top_level_field_type_fails_open_and_is_reported_once(snap, field, value):
    doc = snapshot_doc("example.com", {"first@example.net": entry()})
    doc[field] = value
    (snap / "example.com.json").write_text(json.dumps(doc))
    p = policy(snap)
    assert not rejected(p, "first@example.net") and not rejected(p, "first@example.net")
    assert len(p.k.errors_logged) == 1 and field in p.k.errors_logged[0], p.k.errors_logged


def test_inode_above_2_63_still_gives_a_version(snap):
    """mlua turns such an inode (u64) into a float; the domain must keep suppressing."""
    p = policy(snap)
    p.k.fake_inode = 2**64 - 5
    assert rejected(p, "first@example.net")
    write_snapshot(snap, "example.com", {"second@example.net": entry()})
    os.utime(snap / "example.com.json", (1_700_000_000, 1_700_000_000))
    p.clock.advance(6)
    assert rejected(p, "second@example.net") and not rejected(p, "first@example.net")
    assert p.k.errors_logged == []


def test_nothing_but_reject_escapes_a_broken_message(snap):
    p = policy(snap)
    # a message whose From is unparseable and whose sender has no domain
    msg = p.k.make_message("<>", ["first@example.net"], from_header="not an address")
    assert p.k.http_inject(msg).ok
    assert p.k.smtp_transaction([msg]).accepted


# ----------------------------------------------------------------------- TOML

def test_toml_snapshots(tmp_path):
    d = tmp_path / "toml"
    write_snapshot(d, "example.com", {"first@example.net": entry("complaint", NOW - DAY),
                                      "@bad.example": entry("manual", NOW - DAY)}, fmt="toml")
    write_snapshot(d, "example.com", {"json@example.net": entry()}, fmt="json")  # ignored
    p = Policy({"snapshot_dir": str(d), "format": "toml"})
    r, _ = p.http("first@example.net")
    assert r.rejected and "complaint" in r.text
    assert rejected(p, "a@bad.example")
    assert not rejected(p, "json@example.net")
    assert p.k.io_paths[0].endswith("example.com.toml") and all("json" not in x for x in p.k.io_paths)


@pytest.mark.parametrize("interval,seconds", [("90s", 90), ("1.5 minutes", 90), ("2M", 120), (90, 90)])
def test_check_interval_means_what_the_exporter_reads(tmp_path, interval, seconds):
    """Durations are turned into seconds here, with the exporter's units, so kumod's
    humantime parser (no decimals, case-sensitive: "2M" is two months there) never sees
    a string the exporter accepted."""
    d = tmp_path / "snaps"
    p = Policy({"snapshot_dir": str(d), "check_interval": interval})
    assert not rejected(p, "first@example.net")
    write_snapshot(d, "example.com", {"first@example.net": entry()})
    p.clock.advance(seconds - 1)
    assert not rejected(p, "first@example.net")
    p.clock.advance(2)
    assert rejected(p, "first@example.net")
