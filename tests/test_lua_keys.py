"""The Lua module's key normalization against the shared vectors (tests/vectors).
tests/test_keys.py checks the same file against exporter/keys.py."""

import json

import pytest

from kumo_standin import Kumod
from lua_support import POLICY_DIR, PROJECT, Policy

VECTORS = json.loads((PROJECT / "tests" / "vectors" / "normalization.json").read_text())


@pytest.fixture(scope="module")
def lua():
    k = Kumod(POLICY_DIR)
    k.execute("suppression = require 'suppression'")
    return k


def _call(lua, fn, *args):
    return lua.eval(f"suppression.{fn}")(*args)


@pytest.mark.parametrize("case", VECTORS["recipient_key"], ids=lambda c: repr(c["input"]))
def test_recipient_key(lua, case):
    assert _call(lua, "recipient_key", case["input"]) == case["expected"]


@pytest.mark.parametrize("case", VECTORS["domain_key"], ids=lambda c: repr(c["input"]))
def test_domain_key(lua, case):
    assert _call(lua, "domain_key", case["input"]) == case["expected"]


@pytest.mark.parametrize("case", VECTORS["snapshot_filename_json"], ids=lambda c: repr(c["input"])[:40])
def test_snapshot_filename(lua, case):
    assert _call(lua, "snapshot_filename", case["input"], "json") == case["expected"]


def test_vectors_cover_the_tricky_cases():
    inputs = {c["input"] for c in VECTORS["recipient_key"]}
    assert "<<user@example.net>>" in inputs and "ÜSER@Exämple.NET" in inputs


FALLBACK = "fallback.example"


@pytest.mark.parametrize("case", VECTORS["from_header"], ids=lambda c: repr(c["header"]))
def test_sending_domain_from_the_from_header(tmp_path, case):
    """`header` is the raw header kumod's msg:from_header() parses (RFC 2047 encoded
    words in it; `logged` is the same value as kumod logs it, decoded); `domain` is the
    sending-domain key, null when kumod gives no single From domain (several mailboxes,
    a group, a parse error): the module then keys by the envelope sender's domain."""
    p = Policy({"snapshot_dir": str(tmp_path)})
    result, msg = p.http("user@example.net", sender=f"bounces@{FALLBACK}", from_header=case["header"])
    assert result.ok
    assert msg.meta["x_suppression_domain"] == (case["domain"] or FALLBACK)


@pytest.mark.parametrize("case", VECTORS["sha256_shards"], ids=lambda c: repr(c["key"]))
def test_sha256_and_shard_of_key(lua, case):
    """The module hashes a key with kumo.digest and picks its shard from the digest; the
    exporter computes the same from the same key bytes."""
    digest = lua.eval("require('kumo').digest.sha256")(case["key"])
    assert lua.eval("function(d) return d.hex end")(digest) == case["sha256"]
    for shards, expected in case["shard_of"].items():
        assert _call(lua, "shard_of_digest", case["sha256"], int(shards)) == expected
