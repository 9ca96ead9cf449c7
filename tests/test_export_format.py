"""The export's fast path for entry keys (no json.dumps for a recipient that needs no
escaping) must write exactly the bytes json.dumps would: checked against the reference
formatting on tricky and random strings, JSON and TOML."""

from __future__ import annotations

import json
import random

from exporter.snapshot import _json_entry, _toml_entry


def _ref_json(recipient, reason, since, expires):
    tail = f',"expires":{expires}' if expires is not None else ""
    return f'{json.dumps(recipient, ensure_ascii=False)}:{{"reason":"{reason}","since":{since}{tail}}}'


def _ref_toml(recipient, reason, since, expires):
    key = json.dumps(recipient, ensure_ascii=False).replace("\x7f", "\\u007f")
    tail = f", expires = {expires}" if expires is not None else ""
    return f'{key} = {{ reason = "{reason}", since = {since}{tail} }}'


TRICKY = ["user@example.net", "@bad.example", "", "a\"b@x", "a\\b@x", "tab\there@x", "nl\n@x",
          "del\x7f@x", "é@x", "u\u2028@x", "\ud800@x", "\x00@x", "sp ace@x", "~!#$%&'*+/=?^_`{|}@x"]


def test_entry_keys_match_json_dumps():
    rng = random.Random(5)
    alphabet = [chr(i) for i in range(0, 130)] + ["é", "\u2028", "\ud800", "€", "\U0001f600"]
    samples = TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))
                        for _ in range(20_000)]
    for recipient in samples:
        for expires in (None, 1795636000):
            args = (recipient, "bounce", 1764100000, expires)
            assert _json_entry(*args) == _ref_json(*args), repr(recipient)
            assert _toml_entry(*args) == _ref_toml(*args), repr(recipient)
