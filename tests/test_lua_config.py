"""suppression:new{}: the shared config file, explicit overrides, validation at load time."""

import pytest

from kumo_standin import Kumod, LuaError
from lua_support import POLICY_DIR, QUEUE, Policy, entry, write_config, write_snapshot


@pytest.fixture
def world(tmp_path):
    root = tmp_path / "etc"
    write_snapshot(root / "var" / "snapshots", "example.com", {"user@example.net": entry()})
    cfg = write_config(root / "config.toml",
                       store={"path": "var/suppression.db"},
                       ingest={"log_dirs": ["/var/log/kumomta"], "include_open": False},
                       keys={"sending_domain": "from_header", "aliases": {"bounce.example.com": "example.com"}},
                       rules={"bounce": True, "ttl": {"bounce": "365d"}},
                       export={"dir": "var/snapshots", "format": "json"},
                       webhook={"enabled": False, "listen": "127.0.0.1:8086"},
                       policy={"check_interval": "5 seconds"})
    return root, cfg


def test_config_relative_export_dir_is_relative_to_config_file(world, tmp_path, monkeypatch):
    root, cfg = world
    monkeypatch.chdir(tmp_path)  # not the config's directory
    p = Policy({"config": str(cfg)})
    assert p.http("user@example.net")[0].rejected
    assert p.k.io_paths[1] == str(root / "var" / "snapshots" / "example.com.json")


def test_config_policy_section_is_used(world):
    root, cfg = world
    write_config(cfg, export={"dir": str(root / "var" / "snapshots")},
                 keys={"sending_domain": "sender"},
                 policy={"smtp_action": "reject", "http_action": "drop", "reject_code": 551,
                         "reject_text": "{domain} says no: {reason}", "queue": "held.q",
                         "domain_meta": "x_d", "check_interval": "30 seconds"})
    p = Policy({"config": str(cfg)})
    txn, _ = p.smtp("user@example.net", from_domain="other.example", sender="b@example.com")
    assert txn.rejected and txn.code == 551 and txn.text == "example.com says no: bounce"
    r, msg = p.http("user@example.net", sender="b@example.com")
    assert r.ok and msg.meta["queue"] == "null" and msg.meta["x_d"] == "example.com"
    assert p.k.handler_count("make.held.q") == 1


def test_explicit_options_override_config(world, tmp_path):
    root, cfg = world
    other = tmp_path / "other"
    write_snapshot(other, "example.com", {"other@example.net": entry("manual")}, fmt="toml")
    p = Policy({"config": str(cfg), "snapshot_dir": str(other), "format": "toml",
                "http_action": "shadow"})
    r, msg = p.http("other@example.net")
    assert r.ok and msg.meta["x_suppressed"] == "manual"
    assert not p.http("user@example.net")[1].meta.get("x_suppressed")


def test_older_kumod_without_kumo_serde(world):
    root, cfg = world
    p = Policy({"config": str(cfg)}, with_serde=False)
    assert p.k.eval("require('kumo').serde") is None
    assert p.http("user@example.net")[0].rejected


def test_defaults_without_config(world):
    root, _ = world
    p = Policy({"snapshot_dir": str(root / "var" / "snapshots") + "/"})
    assert p.http("user@example.net")[0].code == 550
    txn, msg = p.smtp("user@example.net")
    assert txn.accepted and msg.meta["queue"] == QUEUE
    assert msg.meta["x_suppression_domain"] == "example.com"


BAD_OPTIONS = [
    ({"snapshot_dir": "/x", "bogus": 1}, "unknown option bogus"),
    ({"snapshot_dir": 5}, "snapshot_dir"),
    ({"snapshot_dir": "/x", "format": "yaml"}, "format"),
    ({"snapshot_dir": "/x", "sending_domain": "header"}, "sending_domain"),
    ({"snapshot_dir": "/x", "sending_domain": "meta:"}, "sending_domain"),
    ({"snapshot_dir": "/x", "smtp_action": "block"}, "smtp_action"),
    ({"snapshot_dir": "/x", "http_action": True}, "http_action"),
    ({"snapshot_dir": "/x", "reject_code": "550"}, "reject_code"),
    ({"snapshot_dir": "/x", "reject_code": 450}, "reject_code"),
    ({"snapshot_dir": "/x", "reject_text": 7}, "reject_text"),
    ({"snapshot_dir": "/x", "check_interval": "soon"}, "check_interval"),
    ({"snapshot_dir": "/x", "check_interval": 0}, "check_interval"),
    ({"snapshot_dir": "/x", "queue": "a/b"}, "queue"),
    ({"snapshot_dir": "/x", "check_interval": "2 days"}, "check_interval: must be at most 86400"),
    ({"snapshot_dir": "/x", "check_interval": float("inf")}, "check_interval: must be at most"),
    ({"snapshot_dir": "/x", "check_interval": float("nan")}, "check_interval: must be positive"),
    ({"snapshot_dir": "/x", "check_interval": "99999999999999999999 days"}, "check_interval"),
    ({"snapshot_dir": "/x", "queue": "null"}, "queue: null is a queue kumod uses itself"),
    ({"snapshot_dir": "/x", "queue": "NULL"}, "queue: NULL is a queue kumod uses itself"),
    ({"snapshot_dir": "/x", "queue": "webhook.log_hook"}, "kumod uses itself"),
    ({"snapshot_dir": "/x", "queue": "generator.kumomta.internal"}, "kumod uses itself"),
    ({"snapshot_dir": "/x", "queue": "deferred_smtp_inject.kumomta.internal"}, "kumod uses itself"),
    ({"snapshot_dir": "/x", "queue": False}, "queue"),
    ({"snapshot_dir": "/x", "large_snapshot_bytes": 0}, "large_snapshot_bytes"),
    ({"snapshot_dir": "/x", "large_snapshot_bytes": "16MB"}, "large_snapshot_bytes"),
    ({"snapshot_dir": "/x", "name": "a.b"}, "name"),
    ({"snapshot_dir": "/x", "domain_meta": ""}, "domain_meta"),
    ({}, "snapshot"),
]


@pytest.mark.parametrize("options,needle", BAD_OPTIONS, ids=[n for _, n in BAD_OPTIONS])
def test_bad_options_fail_at_new(options, needle):
    with pytest.raises(LuaError, match=needle):
        Policy(options)


def test_bad_config_values_fail_at_new(world):
    root, cfg = world
    write_config(cfg, export={"dir": "var/snapshots"}, policy={"smtp_action": "nope"})
    with pytest.raises(LuaError, match="policy.smtp_action"):
        Policy({"config": str(cfg)})
    write_config(cfg, export={"dir": "var/snapshots"}, policy={"reject_code": "550"})
    with pytest.raises(LuaError, match="policy.reject_code"):
        Policy({"config": str(cfg)})


def test_config_queue_null_refused_at_new(world):
    root, cfg = world
    write_config(cfg, export={"dir": "var/snapshots"}, policy={"queue": "null"})
    with pytest.raises(LuaError, match="policy.queue: null is a queue kumod uses itself"):
        Policy({"config": str(cfg)})


def test_missing_config_file_fails_at_new(tmp_path):
    with pytest.raises(LuaError, match="cannot read config"):
        Policy({"config": str(tmp_path / "missing.toml")})


def test_numeric_check_interval_accepted(world):
    root, _ = world
    p = Policy({"snapshot_dir": str(root / "var" / "snapshots"), "check_interval": 2})
    p.http("user@example.net")
    write_snapshot(root / "var" / "snapshots", "example.com", {"new@example.net": entry()})
    p.clock.advance(3)
    assert p.http("new@example.net")[0].rejected


def test_new_must_run_at_load_time_not_in_handlers(world):
    root, _ = world
    k = Kumod(POLICY_DIR)
    k.execute(f"""
      local kumo = require 'kumo'
      kumo.on('http_message_generated', function(msg)
        require('suppression'):new{{ snapshot_dir = '{root}/var/snapshots' }}
      end)""")
    msg = k.make_message("b@example.com", ["user@example.net"], from_header="a@example.com")
    result = k.http_inject(msg)
    assert result.status == "failed" and "within the event handler" in result.error


def test_config_through_a_symlink_resolves_against_the_path_as_given(tmp_path):
    """kumod's Lua cannot realpath, so relative paths in the config are relative to the
    directory of the config path as given (symlinks not followed), on both sides."""
    from exporter.config import load_config

    real, given = tmp_path / "real", tmp_path / "etc"
    write_config(real / "config.toml", export={"dir": "var/snapshots"})
    write_snapshot(real / "var" / "snapshots", "example.com", {"target@example.net": entry()})
    write_snapshot(given / "var" / "snapshots", "example.com", {"given@example.net": entry()})
    link = given / "config.toml"
    link.symlink_to(real / "config.toml")

    assert load_config(link).export.dir == given / "var" / "snapshots"
    p = Policy({"config": str(link)})
    assert p.http("given@example.net")[0].rejected
    assert p.http("target@example.net")[0].ok
