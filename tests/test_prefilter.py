"""The ingest prefilter (records.line_types) never changes an outcome: a store filled
with it is equal, table by table and row by row, to one filled by parsing every line
with parse_line, for a corpus full of lines built to fool a cheap type check; and no
line is ever passed over as a type parse_line would not give it (a differential fuzz)."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import logfactory as f
from exporter import ingest as ingest_module
from exporter import store as store_module
from exporter.config import load_config
from exporter.ingest import Ingestor
from exporter.records import PASSED_OVER_TYPES, MalformedRecord, line_types, parse_line
from exporter.store import Store

NOW = 1_796_000_000
TS = NOW - 3600


def _line(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def _hostile_lines() -> list[bytes]:
    """Lines whose type a prefix, a substring or a careless parser gets wrong, and lines
    that are broken in every way a log line breaks."""
    d = f.delivery("d@mx.example", "send.example", timestamp=TS, id="d1")
    b = f.bounce("b@mx.example", "send.example", timestamp=TS, id="b1")
    d_text = _line(d)
    b_text = _line(b)
    pad = f.delivery("long@mx.example", "send.example", timestamp=TS, id="long")
    pad["headers"]["X-Pad"] = "p" * 3000                     # a long line, no deeper
    deep_ok = d_text[:-1] + b',"x":' + b"[" * 499 + b"1e400" + b"]" * 499 + b"}"  # json reads it
    lines = [
        # the word Bounce inside a Delivery's strings and keys
        _line({**d, "response": {**d["response"], "content": '{"type":"Bounce"} 550 5.1.1 Bounce'}}),
        _line({**d, "id": '{"type":"Bounce","recipient":"x@mx.example"}'}),
        _line({**d, "meta": {"type": "Bounce"}}),
        # a suppressing record that does not start with its type, or spaced out
        b'{"recipient":"k1@mx.example",' + b_text[1:].replace(b'"recipient":"b@mx.example",', b""),
        json.dumps({**b, "recipient": "k2@mx.example", "id": "k2"}, indent=None).encode(),
        b'  { "type" : "Bounce" ,' + b_text[len(b'{"type":"Bounce",'):-1].replace(b"b@mx", b"k3@mx") + b" }  ",
        # the last of repeated keys is the type
        _line({"type": "Delivery", **{k: v for k, v in b.items() if k != "type"}, "recipient": "k7@mx.example",
               "id": "k7"})[:-1] + b',"type":"Bounce"}',
        d_text[:-1] + b',"type":"Bounce"}',
        b_text[:-1].replace(b"b@mx", b"k4@mx") + b',"type":"Delivery"}',
        d_text[:-1] + b',"type":null}',
        d_text[:-1] + b',"type":7}',
        # escapes that spell a type
        d_text.replace(b'"Delivery"', b'"Deli\\u0076ery"', 1),
        b_text.replace(b'"Bounce"', b'"Bou\\u006ece"', 1).replace(b"b@mx", b"k5@mx"),
        d_text.replace(b'"type"', b'"t\\u0079pe"', 1),
        # truncated lines, at every kind of place
        d_text[:40], d_text[:len(d_text) // 2], d_text[:-1], b_text[:-1], b_text[:len(b_text) // 3],
        # bytes that are not UTF-8, and some that json reads all the same
        d_text.replace(b"News", b"N\xffws"),
        d_text.replace(b"News", b"N\xc0\x80ws"),
        d_text.replace(b"News", b"N\xed\xa0\x80ws"),              # UTF-8 surrogate: json reads it
        d_text.replace(b"News", "Nëws 📨".encode()),
        b_text.replace(b"News", "Nëws".encode()).replace(b"b@mx", b"k6@mx"),
        b"\xef\xbb\xbf" + d_text,                                  # a byte-order mark: json reads it
        b"\xff\xfe garbage",
        # numbers and literals only json reads, and ones nothing reads
        d_text[:-1] + b',"n":NaN}',
        d_text[:-1] + b',"n":1e400}',
        d_text[:-1] + b',"n":' + b"7" * 400 + b"}",
        d_text[:-1] + b',"n":' + b"7" * 5000 + b"}",
        d_text[:-1] + b',"n":01}',
        d_text[:-1] + b',"s":"\\ud800"}',
        d_text[:-1] + b',"s":"\\x41"}',
        # nesting: what json still reads, and what nothing reads
        deep_ok,
        d_text[:-1] + b',"x":' + b"[" * 3000 + b"]" * 3000 + b"}",
        d_text[:-1] + b',"x":' + b'{"a":' * 1500 + b"1" + b"}" * 1500 + b"}",
        _line(pad),
        # control characters, odd whitespace, blank lines, not-objects
        d_text.replace(b"News", b"N\x01ws"),
        d_text + b"\x0b",
        d_text + b"\r",
        b"", b"   ", b"\t\r",
        b"[1, 2]", b'"Delivery"', b"null", b'{"no_type":1}', b'{"type":"FutureType","x":1}',
        b'{"type":"Delivery"}{"type":"Bounce"}', b'{"type":"Delivery",}', b"{'type':'Delivery'}",
    ]
    return lines


def _corpus() -> bytes:
    records = []
    for i in range(300):
        rcpt, dom = f"u{i % 40}@mx{i % 3}.example", f"send{i % 4}.example"
        kind = i % 10
        if kind < 5:
            records.append(f.delivery(rcpt, dom, timestamp=TS + i, id=f"d{i}"))
        elif kind < 7:
            records.append(f.reception(rcpt, dom, timestamp=TS + i, id=f"r{i}"))
        elif kind == 7:
            records.append(f.transient(rcpt, dom, timestamp=TS + i, id=f"t{i}"))
        elif kind == 8:
            records.append(f.bounce(rcpt, dom, timestamp=TS + i, id=f"b{i}"))
        else:
            records.append(f.oob(f"bounces@{dom}", rcpt, timestamp=TS + i, id=f"o{i}"))
    good = [_line(r) for r in records]
    hostile = _hostile_lines()
    out = []
    for i, line in enumerate(good):   # hostile lines spread among good ones
        out.append(line)
        if i % 6 == 0 and hostile:
            out.append(hostile.pop(0))
    out += hostile
    return b"\n".join(out) + b"\n" + b"\r\n".join(good[:30]) + b"\r\n" + good[0][:25]   # CRLF, a torn end


def _ingest(install, tmp_path, monkeypatch, name: str, prefilter: bool, caplog) -> tuple[dict, list[str]]:
    monkeypatch.setattr(store_module, "now_ts", lambda: NOW)
    monkeypatch.setattr(ingest_module, "now_ts", lambda: NOW)
    cfg = load_config(install.config_path)
    cfg.store.path = tmp_path / f"{name}.db"
    caplog.clear()
    with Store.open(cfg.store.path) as store:
        ingestor = Ingestor(store, cfg)
        ingestor.prefilter = prefilter
        with caplog.at_level(logging.WARNING, logger="kumo_suppress"):
            result = ingestor.ingest_configured()
    messages = sorted(r.getMessage() for r in caplog.records)
    return _dump(cfg.store.path), messages, result


def _dump(path) -> dict:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                                             "ORDER BY name")]
        out = {}
        for table in tables:
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            if table == "state":
                rows = [r for r in rows if r[0] != "store_id"]
            out[table] = sorted(rows, key=repr)
        return out
    finally:
        conn.close()


def test_store_with_prefilter_equals_store_parsing_every_line(install, tmp_path, monkeypatch, caplog):
    data = _corpus()
    f.write_segment(install.log_dir, data)                       # zstd, as kumod writes
    f.write_segment(install.log_dir, data, compress=False)       # plain JSONL
    f.write_segment(install.log_dir, data[:len(data) // 2], truncate=True)
    fast, fast_log, fast_result = _ingest(install, tmp_path, monkeypatch, "fast", True, caplog)
    slow, slow_log, slow_result = _ingest(install, tmp_path, monkeypatch, "slow", False, caplog)
    assert fast == slow
    assert fast_log == slow_log
    assert fast_result == slow_result
    counters = dict(fast["counters"])
    # the corpus does what it was built to do: suppressions learnt, hostile lines malformed,
    # repeated-key and escaped Bounces found, the lines only json reads counted as records
    assert counters["malformed_total"] >= 3 * 20
    assert counters["records_total:Bounce"] > 0 and counters["records_total:other"] > 0
    keys = {(r[0], r[1]) for r in fast["suppressions"]}
    for k in ("k1", "k2", "k3", "k5", "k6", "k7"):    # k7: `{"type":"Delivery",...,"type":"Bounce"}`
        assert ("send.example", f"{k}@mx.example") in keys, k
    assert ("send.example", "k4@mx.example") not in keys     # its last type is Delivery
    assert ("send.example", "d@mx.example") not in keys


GENERAL_ERRORS = (MalformedRecord,)


def _general_type(line: bytes) -> str | None:
    try:
        return parse_line(line)["type"]
    except GENERAL_ERRORS:
        return None


SEEDS = [_line(f.delivery("a@mx.example", "s.example", timestamp=TS)),
         _line(f.transient("a@mx.example", "s.example", timestamp=TS)),
         _line({**f.reception("é@mx.example", "s.example", timestamp=TS), "x": [1, {"y": [2.5, None, True]}]}),
         b'{"type":"Delivery","a":"\\u00e9\\n","b":-0.5e-3}']
ALPHABET = list(b'{}[]",:\\ ntruefalsenull0123456789.-+eE\x00\x01\x0b\r\t\x7f\xc3\xa9\xff\xed\xa0\x80u')


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["insert", "delete", "replace"]),
                                st.sampled_from(ALPHABET)), min_size=1, max_size=4))
def test_no_line_is_passed_over_as_a_type_parse_line_would_not_give_it(seed, edits):
    line = bytearray(seed)
    for at, how, byte in edits:
        at %= len(line) + 1
        if how == "insert":
            line[at:at] = bytes([byte])
        elif at < len(line):
            if how == "delete":
                del line[at]
            else:
                line[at] = byte
    line = bytes(line)
    if b"\n" in line:
        return
    kind, = line_types([line + b"\n"])
    if kind is not None:
        assert kind in PASSED_OVER_TYPES
        assert _general_type(line) == kind, line


def test_every_hostile_line_alone_is_passed_over_only_as_its_parse_line_type():
    lines = [line + b"\n" for line in _hostile_lines()]
    for line, kind in zip(lines, line_types(lines)):
        assert kind is None or kind == _general_type(line[:-1]), line
    for line in lines:
        kind, = line_types([line])
        assert kind is None or kind == _general_type(line[:-1]), line


def test_json_only_numbers_and_depth_are_read_by_parse_line():
    """What the prefilter's guards lean on: parse_line (orjson, then json) reads these."""
    base = _line(f.delivery("a@mx.example", "s.example", timestamp=TS))[:-1]
    assert _general_type(base + b',"x":' + b"[" * 499 + b"1e400" + b"]" * 499 + b"}") == "Delivery"
    digits = sys.get_int_max_str_digits()
    if digits:
        assert _general_type(base + b',"n":' + b"7" * digits + b"}") == "Delivery"
        assert _general_type(base + b',"n":' + b"7" * (digits + 1) + b"}") is None


@pytest.mark.parametrize("block, expected", [([], []), ([b"\n"], [None]),
                                             ([b'{"type":"Delivery"}\n'] * 2, ["Delivery"] * 2),
                                             ([b'{"type":"Bounce"}\n', b'{"type":"Reception"}\r\n'], [None, "Reception"])])
def test_line_types_of_small_blocks(block, expected):
    assert line_types(block) == expected
