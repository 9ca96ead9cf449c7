"""The config file (docs/config.md): one TOML for the exporter and the Lua module.

Validated against schema/config.schema.json before anything runs: an unknown key or a
wrong type is a ConfigError naming the key. Relative paths are relative to the config
file's directory, so a config and its data can move together.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jsonschema

from .classifier import BounceClassifier, ClassifierError

DEFAULT_SEARCH = (Path("config.toml"), Path("/etc/kumo-suppression/config.toml"))



class ConfigError(Exception):
    """A config problem: exit 2 with this one-line message."""


_UNITS = {
    "": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
    "ms": 0.001, "msec": 0.001, "millis": 0.001,
}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_SIZE = re.compile(r"^\s*([0-9]+)\s*([A-Za-z]*)\s*$")
MAX_DURATION = 100 * 365 * 86400.0


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """"30s", "12h", "30d", "5 seconds" -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = _DURATION.match(str(text))
    unit = m and _UNITS.get(m.group(2).lower())
    if not m or unit is None:
        raise ConfigError(f"{what}: cannot read {text!r} as a duration (like \"30s\", \"12h\", \"30d\")")
    seconds = float(m.group(1)) * unit
    if not seconds <= MAX_DURATION:     # also inf: "9999...9d" would overflow timestamps
        raise ConfigError(f"{what}: {text!r} is longer than 100 years (use \"never\" for a lifetime)")
    return seconds


def parse_lifetime(text: str, what: str = "ttl") -> int | None:
    """A ttl: seconds, or None for "never"."""
    if str(text).strip().lower() == "never":
        return None
    return int(parse_duration(text, what))


def parse_size(text: str | int, what: str = "size") -> int:
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE.match(str(text))
    unit = m and _SIZE_UNITS.get(m.group(2).lower())
    if not m or unit is None:
        raise ConfigError(f"{what}: cannot read {text!r} as a size (like \"10MB\")")
    return int(m.group(1)) * unit


@lru_cache(maxsize=1)
def config_schema() -> dict:
    return json.loads(resources.files("exporter").joinpath("schema/config.schema.json").read_text())


def _defaults_of(node: dict) -> dict:
    found = {}
    for key, spec in node.get("properties", {}).items():
        if "default" in spec:
            found[key] = spec["default"]
        elif spec.get("type") == "object":
            found[key] = _defaults_of(spec)
    return found


def defaults() -> dict:
    """Every key's default as the TOML would write it, {section: {key: value}}. The schema's
    "default" annotations are the one place a default is written: build_config, the docs test
    and the example config test all read them from there."""
    return _defaults_of(config_schema())


REASONS = tuple(config_schema()["properties"]["rules"]["properties"]["ttl"]["properties"])


# The parsed config. No field has a default here: build_config fills every one from the
# file or from the schema's defaults.

@dataclass
class StoreConfig:
    path: Path
    busy_timeout: float
    history_retention: int | None     # prune trims older history; None = keep all


@dataclass
class IngestConfig:
    log_dirs: list[Path]
    include_open: bool
    max_line: int
    batch_lines: int          # lines per transaction (and checkpoint) when reading a file
    max_future_skew: float    # seconds: a record dated further ahead is malformed


@dataclass
class KeysConfig:
    sending_domain: str
    aliases: dict[str, str]


@dataclass
class RulesConfig:
    bounce: bool
    oob: bool
    expiration: bool
    feedback: bool
    admin_bounce: bool
    expiration_threshold: int
    expiration_window: int
    ignore_classifications: frozenset[str]
    feedback_types: frozenset[str]
    ttl: dict[str, int | None]
    # KumoMTA bounce classifier rule files; None when none are configured
    classifier: BounceClassifier | None


@dataclass
class ExportConfig:
    dir: Path
    format: str
    group: str | None
    shard_entries: int       # a domain with more active entries is written as shards
    hash_recipients: bool    # files hold sha256 digests of the keys, not addresses


@dataclass
class ScheduleConfig:
    ingest_interval: float
    export_interval: float
    prune_interval: float


@dataclass
class WebhookConfig:
    enabled: bool
    host: str
    port: int
    token: str
    max_body: int


@dataclass(frozen=True)
class ApiToken:
    name: str          # the actor recorded in the history of every change the token makes
    token: str = field(repr=False)
    scope: str         # "read" (every GET) or "write" (GET and the writes)


@dataclass
class ApiConfig:
    tokens: tuple[ApiToken, ...]


@dataclass
class MetricsConfig:
    textfile: Path | None


@dataclass
class PolicyConfig:
    """What the exporter needs of [policy] (the Lua module reads the rest); check_interval
    is read here too so a value the module would refuse fails `kumo-suppress` first."""
    queue: str
    domain_meta: str
    check_interval: float


@dataclass
class Config:
    path: Path | None
    store: StoreConfig
    ingest: IngestConfig
    keys: KeysConfig
    rules: RulesConfig
    export: ExportConfig
    schedule: ScheduleConfig
    webhook: WebhookConfig
    api: ApiConfig
    metrics: MetricsConfig
    policy: PolicyConfig


def find_config_path(explicit: str | os.PathLike | None) -> Path | None:
    """-c PATH, else $KUMO_SUPPRESS_CONFIG, else ./config.toml, else /etc/kumo-suppression/config.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("KUMO_SUPPRESS_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_SEARCH:
        if candidate.is_file():
            return candidate
    return None


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts = parts + extra[:1]
    if not parts:
        return "(top level)"
    section = [p for p in parts[:-1]]
    return (f"[{'.'.join(section)}] " if section else "") + parts[-1]


def _validate(raw: dict, where: str) -> None:
    validator = jsonschema.Draft202012Validator(config_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    err = errors[0]
    key = _key_path(err)
    if err.validator == "additionalProperties":
        raise ConfigError(f"{where}: unknown key {key}")
    shown = json.dumps(err.instance, default=str)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    if err.validator in ("type",):
        problem = f"must be of type {err.validator_value}, not {shown}"
    elif err.validator in ("enum", "const"):
        problem = f"must be one of {', '.join(map(json.dumps, err.validator_value))}, not {shown}"
    elif err.validator in ("pattern", "anyOf"):
        problem = f"has an unreadable value {shown}"
    else:
        problem = err.message
    raise ConfigError(f"{where}: {key} {problem}")


def load_config(path: str | os.PathLike | None) -> Config:
    """Read and validate the config at `path` (None: built-in defaults relative to cwd)."""
    raw: dict = {}
    base = Path.cwd()
    where = "defaults"
    cfg_path = None
    if path is not None:
        cfg_path = Path(path)
        where = str(cfg_path)
        try:
            data = cfg_path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{cfg_path}: config file not found") from None
        except OSError as err:
            raise ConfigError(f"{cfg_path}: cannot read config: {err.strerror}") from None
        try:
            raw = tomllib.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{cfg_path}: config is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{cfg_path}: invalid TOML: {err}") from None
        except RecursionError:
            raise ConfigError(f"{cfg_path}: invalid TOML: nested too deeply") from None
        # the directory of the path AS GIVEN, symlinks not followed: kumod's Lua cannot
        # realpath, and both sides must find the same snapshot dir
        base = cfg_path.absolute().parent
    _validate(raw, where)
    return build_config(raw, base, cfg_path, where)


def _classifier(paths: list[Path], where: str) -> BounceClassifier | None:
    if not paths:
        return None
    try:
        return BounceClassifier(paths)
    except ClassifierError as err:
        raise ConfigError(f"{where}: [rules] classifier_files: {err}") from None


def build_config(raw: dict, base: Path, cfg_path: Path | None, where: str = "config") -> Config:
    def path_of(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    default = defaults()

    def section(name: str) -> dict:
        return {**default[name], **raw.get(name, {})}

    store, ingest, keys, rules = section("store"), section("ingest"), section("keys"), section("rules")
    export, schedule, webhook = section("export"), section("schedule"), section("webhook")
    api, metrics, policy = section("api"), section("metrics"), section("policy")

    def dur(sec: dict, key: str, name: str) -> float:
        return parse_duration(sec[key], f"{where}: [{name}] {key}")

    ttl_raw = {**default["rules"]["ttl"], **rules["ttl"]}
    ttl = {reason: parse_lifetime(v, f"{where}: [rules.ttl] {reason}") for reason, v in ttl_raw.items()}

    listen = webhook["listen"]
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: [webhook] listen must be HOST:PORT, not {listen!r}")
    host = host.strip("[]")

    aliases = {}
    from .keys import domain_key
    for k, v in keys["aliases"].items():
        ak, av = domain_key(k), domain_key(v)
        if not ak or not av:
            raise ConfigError(f"{where}: [keys.aliases] {k!r} = {v!r} is not a domain mapping")
        aliases[ak] = av

    return Config(
        path=cfg_path,
        store=StoreConfig(path=path_of(store["path"]),
                          busy_timeout=dur(store, "busy_timeout", "store"),
                          history_retention=parse_lifetime(store["history_retention"],
                                                           f"{where}: [store] history_retention")),
        ingest=IngestConfig(log_dirs=[path_of(d) for d in ingest["log_dirs"]],
                            include_open=ingest["include_open"],
                            max_line=parse_size(ingest["max_line"], f"{where}: [ingest] max_line"),
                            batch_lines=ingest["batch_lines"],
                            max_future_skew=dur(ingest, "max_future_skew", "ingest")),
        keys=KeysConfig(sending_domain=keys["sending_domain"], aliases=aliases),
        rules=RulesConfig(
            bounce=rules["bounce"], oob=rules["oob"], expiration=rules["expiration"],
            feedback=rules["feedback"], admin_bounce=rules["admin_bounce"],
            expiration_threshold=rules["expiration_threshold"],
            expiration_window=int(dur(rules, "expiration_window", "rules")),
            ignore_classifications=frozenset(rules["ignore_classifications"]),
            feedback_types=frozenset(t.lower() for t in rules["feedback_types"]),
            ttl=ttl, classifier=_classifier([path_of(p) for p in rules["classifier_files"]], where)),
        export=ExportConfig(dir=path_of(export["dir"]), format=export["format"],
                            group=export["group"] or None, shard_entries=export["shard_entries"],
                            hash_recipients=export["hash_recipients"]),
        schedule=ScheduleConfig(
            ingest_interval=dur(schedule, "ingest_interval", "schedule"),
            export_interval=dur(schedule, "export_interval", "schedule"),
            prune_interval=dur(schedule, "prune_interval", "schedule")),
        webhook=WebhookConfig(enabled=webhook["enabled"], host=host, port=int(port), token=webhook["token"],
                              max_body=parse_size(webhook["max_body"], f"{where}: [webhook] max_body")),
        api=ApiConfig(tokens=_api_tokens(api["tokens"], where)),
        metrics=MetricsConfig(textfile=path_of(metrics["textfile"]) if metrics["textfile"] else None),
        policy=PolicyConfig(queue=policy["queue"], domain_meta=policy["domain_meta"],
                            check_interval=dur(policy, "check_interval", "policy")),
    )


def _api_tokens(items: list[dict], where: str) -> tuple[ApiToken, ...]:
    tokens = tuple(ApiToken(name=t["name"], token=t["token"], scope=t["scope"]) for t in items)
    names: set[str] = set()
    owner_of: dict[str, str] = {}           # token -> the name it was first given to
    for t in tokens:
        if t.name in names:
            raise ConfigError(f"{where}: [api] tokens: name {t.name!r} is used twice (it is the actor in the history)")
        if t.token in owner_of:
            raise ConfigError(f"{where}: [api] tokens: {t.name!r} has the same token as {owner_of[t.token]!r}")
        names.add(t.name)
        owner_of[t.token] = t.name
    return tokens
