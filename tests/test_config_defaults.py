"""One default per config key: the schema's "default" annotations. The loaded config, the
example config, the reference pages and the Lua module all agree with them."""

from __future__ import annotations

import re
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from exporter.config import config_schema, defaults, load_config, parse_duration, parse_lifetime, parse_size
from lua_support import Policy, entry, write_config, write_snapshot

ROOT = Path(__file__).resolve().parent.parent
# the one key where the example deliberately differs: it reads the demo's own logs
EXAMPLE_DIFFERS = {("ingest", "log_dirs")}


def schema_keys(node: dict = None, prefix: tuple = ()) -> dict[tuple, dict]:
    """(section, ..., key) -> that key's schema, for every leaf key."""
    node = config_schema() if node is None else node
    found = {}
    for key, spec in node.get("properties", {}).items():
        if "default" not in spec and spec.get("type") == "object":
            found.update(schema_keys(spec, prefix + (key,)))
        else:
            found[prefix + (key,)] = spec
    return found


def default_of(path: tuple):
    value = defaults()
    for part in path:
        value = value[part]
    return value


def test_every_key_has_exactly_one_default_in_the_schema():
    missing = [".".join(p) for p, spec in schema_keys().items() if "default" not in spec]
    assert missing == []


def test_every_default_is_valid_for_its_own_key():
    # a file that spells out every default loads, and means the same as an empty file
    spelled = load_config_from(defaults())
    assert spelled == load_config_from({})


def load_config_from(raw: dict, tmp=None):
    from exporter.config import build_config, _validate
    _validate(raw, "test")
    return build_config(raw, ROOT, None)


def test_loaded_config_uses_the_schema_defaults():
    c = load_config(None)
    d = defaults()
    assert c.store.busy_timeout == parse_duration(d["store"]["busy_timeout"])
    assert c.store.history_retention == parse_lifetime(d["store"]["history_retention"])
    assert c.ingest.max_line == parse_size(d["ingest"]["max_line"])
    assert c.ingest.batch_lines == d["ingest"]["batch_lines"]
    assert c.rules.ignore_classifications == frozenset(d["rules"]["ignore_classifications"])
    assert c.rules.ttl == {r: parse_lifetime(v) for r, v in d["rules"]["ttl"].items()}
    assert c.export.shard_entries == d["export"]["shard_entries"]
    assert f"{c.webhook.host}:{c.webhook.port}" == d["webhook"]["listen"]
    assert c.webhook.max_body == parse_size(d["webhook"]["max_body"])
    assert c.policy.queue == d["policy"]["queue"]
    assert c.policy.check_interval == parse_duration(d["policy"]["check_interval"])


def test_example_config_shows_every_key_with_its_default():
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    shown = {}

    def walk(node, prefix=()):
        for key, value in node.items():
            if isinstance(value, dict) and prefix + (key,) not in schema_keys():
                walk(value, prefix + (key,))
            else:
                shown[prefix + (key,)] = value
    walk(example)
    assert set(shown) == set(schema_keys())
    differs = {p for p, value in shown.items() if value != default_of(p)}
    assert differs == EXAMPLE_DIFFERS


def documented_defaults(page: str) -> dict[tuple, str]:
    """The default column of every key table in a docs page: {(section.., key): cell}."""
    found, section, default_col = {}, None, None
    for line in (ROOT / "docs" / page).read_text().splitlines():
        heading = re.match(r"^##+ .*\[([a-z_.]+)\]", line)
        if heading:
            section, default_col = tuple(heading.group(1).split(".")), None
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))] if line.startswith("|") else []
        if cells and cells[0] in ("key", "reason"):
            default_col = cells.index("default") if "default" in cells else None
        elif section and default_col is not None and cells and cells[0].startswith("`"):
            found[section + (cells[0].strip("`"),)] = cells[default_col]
    return found


def toml_value(cell: str):
    code = re.match(r"^`([^`]*)`", cell)
    text = code.group(1) if code else cell.split()[0]
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text              # the rules page writes lifetimes bare: 365d


def test_config_reference_gives_every_key_with_its_default():
    documented = documented_defaults("config.md")
    assert set(documented) == set(schema_keys())
    for path, cell in documented.items():
        if path == ("rules", "ignore_classifications"):
            assert f"{len(default_of(path))} labels" in cell
        else:
            assert toml_value(cell) == default_of(path), ".".join(path)


def test_rules_page_lists_the_default_ignore_list_and_lifetimes():
    page = (ROOT / "docs" / "rules.md").read_text()
    listed = page.split("Default `ignore_classifications`", 1)[1].split("Setting the key", 1)[0]
    assert re.findall(r"`(\w+)`", listed) == default_of(("rules", "ignore_classifications"))
    ttl = {p[-1]: toml_value(cell) for p, cell in documented_defaults("rules.md").items()
           if p[:2] == ("rules", "ttl")}
    assert ttl == default_of(("rules", "ttl"))


def test_lua_module_defaults_match_the_schema(tmp_path):
    """A config without [policy]: the module acts as the schema's [policy] defaults say."""
    d = defaults()["policy"]
    since = 1_700_000_000
    write_snapshot(tmp_path / "var" / "snapshots", "example.com",
                   {"user@example.net": entry("bounce", since=since)})
    cfg = write_config(tmp_path / "config.toml", export={"dir": "var/snapshots"})
    p = Policy({"config": str(cfg)})
    r, msg = p.http("user@example.net")
    day = datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%d")
    expected = d["reject_text"].format(domain="example.com", reason="bounce", since=day)
    assert d["http_action"] == "reject" and r.rejected
    assert (r.code, r.text) == (d["reject_code"], expected)
    assert d["smtp_action"] == "bounce"
    txn, msg = p.smtp("user@example.net")
    assert not txn.rejected and msg.meta["queue"] == d["queue"]
    assert msg.meta[d["domain_meta"]] == "example.com"
