"""Key normalization: the vectors shared with the Lua suite, and file names that can
never escape the snapshot directory."""

import json
from pathlib import Path

import pytest

from exporter.keys import domain_key, domain_of_address, is_plain_hostname, recipient_key, snapshot_filename

VECTORS = json.loads((Path(__file__).parent / "vectors" / "normalization.json").read_text())


@pytest.mark.parametrize("case", VECTORS["recipient_key"], ids=lambda c: repr(c["input"]))
def test_recipient_key_vectors(case):
    assert recipient_key(case["input"]) == case["expected"]


@pytest.mark.parametrize("case", VECTORS["domain_key"], ids=lambda c: repr(c["input"]))
def test_domain_key_vectors(case):
    assert domain_key(case["input"]) == case["expected"]


@pytest.mark.parametrize("case", VECTORS["domain_of_address"], ids=lambda c: repr(c["input"]))
def test_domain_of_address_vectors(case):
    assert domain_of_address(case["input"]) == case["expected"]


@pytest.mark.parametrize("case", VECTORS["snapshot_filename_json"], ids=lambda c: repr(c["input"]))
def test_snapshot_filename_vectors(case):
    assert snapshot_filename(case["input"], "json") == case["expected"]


def test_lowercasing_is_ascii_only_like_lua():
    # Python's str.lower would turn "Ü" into "ü"; Lua's string.lower leaves the bytes alone
    assert recipient_key("ÜSER@EXAMPLE.NET") == "Üser@example.net"
    assert "İ".lower() != "İ" and recipient_key("İ@X.EXAMPLE") == "İ@x.example"


@pytest.mark.parametrize("name", ["../../etc", "a/b", ".x", "x\x00y", "a" * 64 + ".example", "-x.example",
                                  "x.example.", "", "exаmple.com", "a..b", "a" * 254])
def test_hostile_names_get_no_file(name):
    assert not is_plain_hostname(name)
    assert snapshot_filename(name, "json") is None


def test_lone_surrogates_are_not_keys():
    assert recipient_key("\ud800@example.net") is None
    assert domain_key("ex\udcffample.com") is None
