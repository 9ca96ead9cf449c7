"""Hostile input (issue #6): the record parser, the rules and the config loader never crash
on random, truncated or adversarial input (only the documented MalformedRecord, Skip and
ConfigError), rejected input changes nothing, no sending domain can name a file outside
(or, unless a plain hostname, inside) the snapshot dir, and one huge line costs bounded
memory."""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomli_w
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import logfactory

from exporter.config import ConfigError, build_config, load_config
from exporter.records import DomainSource, MalformedRecord, Skip, parse_line, to_event
from exporter.rules import decide

RULES = build_config({}, Path("/nonexistent"), None).rules
SOURCES = [DomainSource("from_header"), DomainSource("sender"), DomainSource("meta:tenant"),
           DomainSource("from_header", aliases={"bounce.example.com": "example.com"})]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                      st.sampled_from(["", "@", "<>", "a@b", "<User@Example.NET>", "@bad.example",
                                       "x@../../etc", "x@a/b", "\x00", "\ud800", "5.1.1", "Bounce"]))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)), max_leaves=25)

FIELDS = ["type", "id", "sender", "recipient", "queue", "response", "timestamp", "bounce_classification",
          "feedback_report", "meta", "headers", "nodeid", "created"]
TYPES = ["Bounce", "OOB", "Expiration", "Feedback", "AdminBounce", "Delivery", "Reception",
         "TransientFailure", "FutureType", ""]


def _pipeline(line: bytes | str) -> None:
    """parse -> event -> decision, for every domain source: only the documented errors."""
    try:
        record = parse_line(line)
    except MalformedRecord:
        return
    for source in SOURCES:
        try:
            event = to_event(record, source, "suppressed.kumo_suppression")
        except Skip:
            continue
        decision = decide(event, RULES)
        assert decision is None or decision.reason in RULES.ttl
        for r in event.recipients:
            assert isinstance(r, str) and "@" in r
            event.key(r)
        assert isinstance(event.domain, str)


def _base_records() -> list[dict]:
    return [logfactory.bounce("u@dest.example", "example.com", meta={"tenant": "t.example"}),
            logfactory.oob("bounces@bounce.example.com", "u@dest.example"),
            logfactory.expiration(["a@d.example", "b@d.example"]),
            logfactory.admin_bounce("u@dest.example"),
            logfactory.feedback("c@dest.example", "News <n@example.com>")]


@FUZZ
@given(st.binary(max_size=400))
@example(b"[" * 100_000)
@example(b"{" * 100_000)
@example(b'{"type":"Bounce","recipient":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
@example(b"\xff\xfe\xfd")
@example(b'{"type":"Bounce","recipient":"\xc3\x28@x.example"}')
@example(b'{"type":"Bounce","recipient":"\\ud800@x.example","timestamp":1}')
def test_fuzz_random_bytes(data):
    _pipeline(data)


@FUZZ
@given(st.sampled_from(range(5)), st.lists(st.tuples(st.sampled_from(FIELDS), json_value), max_size=6),
       st.sampled_from(TYPES))
def test_fuzz_mutated_records(which, mutations, kind):
    """Real record shapes with fields replaced by arbitrary JSON values (nested objects,
    numbers, null, huge ints, NaN...)."""
    record = _base_records()[which]
    record["type"] = kind or record["type"]
    for name, value in mutations:
        record[name] = copy.deepcopy(value)
    if isinstance(record.get("feedback_report"), dict):
        for name, value in mutations[:2]:
            record["feedback_report"][name] = copy.deepcopy(value)
    _pipeline(json.dumps(record, allow_nan=True))


@FUZZ
@given(st.sampled_from(range(5)), st.floats(min_value=0, max_value=1))
def test_fuzz_truncated_records(which, cut):
    line = json.dumps(_base_records()[which]).encode()
    _pipeline(line[: int(len(line) * cut)])


@pytest.mark.parametrize("recipient", [
    "x" * 1_000_000 + "@dest.example",            # 1 MB
    ["u%d@dest.example" % i for i in range(50_000)],
    {"email": {"nested": ["u@dest.example"]}},
    [[["u@dest.example"]]],
    12345, 1e308, None, True, "", "@", "<>", "\x00@\x00",
])
def test_hostile_recipient_fields(recipient):
    record = logfactory.bounce("u@dest.example")
    record["recipient"] = recipient
    _pipeline(json.dumps(record))


# ---------------------------------------------------------------------- config

toml_key = st.sampled_from(["store", "ingest", "keys", "rules", "export", "schedule", "webhook", "metrics",
                            "policy", "path", "log_dirs", "include_open", "max_line", "batch_lines",
                            "sending_domain", "aliases", "ttl", "bounce", "expiration_window", "dir",
                            "format", "group", "listen", "token", "max_body", "queue", "busy_timeout",
                            "ingest_interval", "smtp_action", "reject_code", "bogus"])
toml_leaf = st.one_of(st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1),
                      st.floats(allow_nan=False), st.text(max_size=20),
                      st.sampled_from(["30d", "never", "12h", "1.5h", "10MB", "0", "-1", "99999999999999999999d",
                                       "127.0.0.1:8086", "0.0.0.0:1", ":", "[::1]:80", "meta:", "meta:x",
                                       "json", "toml", "reject", "9" * 400 + "s"]))
toml_value = st.recursive(toml_leaf, lambda inner: st.one_of(
    st.lists(toml_leaf, max_size=3), st.dictionaries(toml_key, inner, max_size=4)), max_leaves=15)


def _load(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.toml"
        path.write_bytes(text)
        try:
            load_config(path)
        except ConfigError as err:
            assert "\n" not in str(err).strip(), str(err)


@FUZZ
@given(st.dictionaries(toml_key, toml_value, max_size=6))
def test_fuzz_config_structured(raw):
    try:
        text = tomli_w.dumps(raw).encode()
    except (TypeError, ValueError):
        return
    _load(text)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
@example(b"[store]\npath = ''\n")
@example(b"[webhook]\nlisten = 'nope'\n")
@example(b"[rules.ttl]\nbounce = '" + b"9" * 5000 + b"d'\n")
@example(b"[ingest]\nmax_line = '99999999999999999999999GB'\n")
@example(b"a = " + b"[" * 10_000)
@example(b"\xff\xfe")
def test_fuzz_config_raw(data):
    _load(data)


# ---------------------------------------------------------------------- through the CLI

def _tables(db: Path) -> dict:
    conn = sqlite3.connect(db)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: conn.execute(f'SELECT * FROM "{n}" ORDER BY 1').fetchall() for n in names  # noqa: S608
                if n not in ("counters", "segments", "state")}
    finally:
        conn.close()


def test_rejected_input_changes_nothing_but_counters(install):
    install.ingest([logfactory.bounce("keep@dest.example")])
    before = _tables(install.db)
    ts = int(time.time()) - 60
    bad = [
        b"not json", b"\xff\xfe invalid utf-8 \xc3\x28", b"[" * 100_000, b"{" * 50_000, b"[]", b"42", b"null",
        b'{"type": 5}', b'{"type":"FutureType","recipient":"a@b.example"}',
        json.dumps(logfactory.transient("t@dest.example")).encode(),
        json.dumps(logfactory.bounce("q@dest.example", code=451, enhanced_code="4.2.2")).encode(),
        json.dumps(logfactory.bounce("s@dest.example", classification="SpamBlock")).encode(),
        json.dumps(dict(logfactory.bounce("n@dest.example"), timestamp=None)).encode(),
        json.dumps(dict(logfactory.bounce("n@dest.example"), recipient={"a": [1, 2]})).encode(),
        json.dumps(dict(logfactory.bounce("n@dest.example"), recipient=None)).encode(),
        json.dumps(dict(logfactory.bounce("n@dest.example", headers={}), timestamp=ts)).encode(),
        json.dumps(dict(logfactory.bounce("o@dest.example"), queue="suppressed.kumo_suppression")).encode(),
        json.dumps(logfactory.feedback("c@dest.example", "n@example.com", feedback_type="not-spam")).encode(),
    ]
    install.segment(b"\n".join(bad) + b"\n")
    r = install.ok("ingest")
    assert "malformed" in r.output
    assert _tables(install.db) == before
    counters = install.check("keep@dest.example")
    assert counters is not None


HOSTILE_DOMAINS = ["../../etc", "a/b", ".x", "x\u0000y", "a" * 300 + ".example", "ex\u0430mple.com",
                   "..", "/etc/passwd", "..\\..\\x", "x..y", "-x.example", "x-.example", "a.b/../c",
                   "manifest", ".export.lock", "exa mple.com", "xn--e1afmkfd.example/..", "ex\u0435mple.com",
                   "\u202eexample.com", "a" * 64 + ".example", ".".join(["a" * 60] * 5)]


def _outside(root: Path, *allowed: Path) -> set[str]:
    """Every path under `root` except those inside the `allowed` dirs."""
    return {str(p) for p in root.rglob("*")
            if not any(p == a or a in p.parents for a in allowed)}


def test_hostile_sending_domains_never_name_a_file(install, tmp_path):
    ts = int(time.time()) - 60
    records = [logfactory.bounce("u@dest.example", "good.example", timestamp=ts)]
    for i, dom in enumerate(HOSTILE_DOMAINS):
        records.append(logfactory.bounce(f"u{i}@dest.example", "good.example", timestamp=ts,
                                         meta={"x_suppression_domain": dom}))
        records.append(logfactory.bounce(f"v{i}@dest.example", "x", timestamp=ts,
                                         headers={"From": f"x <n@{dom}>"}))
    install.segment(records)
    install.ok("ingest")
    install.ok("add", "w@dest.example", "--domain", "ex\u0430mple.com")
    allowed = (install.snap_dir, install.db.parent)
    outside_before = _outside(tmp_path.parent, *allowed)
    r = install.run("export")
    assert r.exit_code == 0, r.stderr
    assert "not a plain hostname" in r.output + r.stderr
    names = sorted(p.name for p in install.snap_dir.iterdir() if not p.name.startswith("."))
    # only plain hostnames got a file
    from exporter.keys import is_plain_hostname
    assert "good.example.json" in names and "manifest.json" in names
    assert all(n == "manifest.json" or is_plain_hostname(n[:-5]) for n in names), names
    assert all(not Path(n).is_absolute() and "/" not in n for n in names)
    # nothing was created outside the snapshot dir
    assert _outside(tmp_path.parent, *allowed) == outside_before
    assert not (tmp_path / "etc").exists() and not (tmp_path / "a").exists()
    assert install.ok("validate").exit_code == 0
    # the stored hostile domains are reported through the read side intact
    assert install.check("w@dest.example", "ex\u0430mple.com") is not None


def _peak_rss_mb(cmd_args: list[str], cwd: Path) -> tuple[int, float, bytes]:
    """Run the CLI in a fresh interpreter and report its own peak RSS (VmHWM of its own
    address space, so the parent's memory never counts)."""
    launcher = ("import sys\n"
                "from exporter.cli import cli\n"
                "try:\n    cli(args=sys.argv[1:], prog_name='kumo-suppress')\n"
                "except SystemExit as e:\n    code = e.code\n"
                "else:\n    code = 0\n"
                "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
                "sys.stderr.write(f'\\nVMHWM {hwm}\\n')\n"
                "sys.exit(code)\n")
    p = subprocess.run([sys.executable, "-c", launcher, *cmd_args], capture_output=True, cwd=cwd, timeout=300)
    hwm = [ln for ln in p.stderr.decode().splitlines() if ln.startswith("VMHWM ")][0].split()[1]
    return p.returncode, int(hwm) / 1024, p.stderr


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for VmHWM")
def test_zstd_segment_with_a_50mb_line_is_bounded(install):
    ts = int(time.time()) - 60
    install.segment([logfactory.bounce("small@dest.example", timestamp=ts)])
    code, baseline, stderr = _peak_rss_mb(["-c", str(install.config_path), "ingest"], install.root)
    assert code == 0, stderr.decode()
    head = logfactory.to_jsonl([logfactory.bounce("before@dest.example", timestamp=ts)])
    tail = logfactory.to_jsonl([logfactory.bounce("after@dest.example", timestamp=ts)])
    install.log_dir.mkdir(parents=True, exist_ok=True)
    path = install.log_dir / "20261125-000000.000000000"
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    with open(path, "wb") as fh:      # written in pieces: the test itself stays small too
        fh.write(cobj.compress(head + b'{"type":"Bounce","recipient":"'))
        block = b"a" * (1 << 20)
        for _ in range(50):
            fh.write(cobj.compress(block))
        fh.write(cobj.compress(b'@dest.example"}\n' + tail))
        fh.write(cobj.flush())
    logfactory.mark_done(path)
    assert path.stat().st_size < 100_000     # a zstd bomb: tiny on disk
    code, peak, stderr = _peak_rss_mb(["-c", str(install.config_path), "ingest"], install.root)
    assert code == 0, stderr.decode()
    assert b"line over" in stderr
    assert peak < 150, f"peak RSS {peak:.0f} MB"
    # stricter: a 50 MB line must not be held even once (zstd expands ~20000:1 here, so
    # one unbounded decompress call would hand over the whole line at once)
    assert peak - baseline < 35, f"peak RSS {peak:.0f} MB vs {baseline:.0f} MB for a small segment"
    assert install.check("before@dest.example") and install.check("after@dest.example")
    stats = json.loads(install.ok("stats", "--json").output)
    assert stats["counters"]["malformed_total"] == 1


def test_plain_jsonl_with_a_50mb_line_is_bounded(install):
    ts = int(time.time()) - 60
    install.log_dir.mkdir(parents=True, exist_ok=True)
    path = install.log_dir / "plain.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"type":"Bounce","recipient":"' + b"b" * (50 << 20) + b'"}\n')
        fh.write(logfactory.to_jsonl([logfactory.bounce("after@dest.example", timestamp=ts)]))
    logfactory.mark_done(path)
    code, peak, stderr = _peak_rss_mb(["-c", str(install.config_path), "ingest"], install.root)
    assert code == 0, stderr.decode()
    assert peak < 150, f"peak RSS {peak:.0f} MB"
    assert install.check("after@dest.example")
