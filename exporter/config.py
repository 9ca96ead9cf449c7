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

DEFAULT_IGNORE_CLASSIFICATIONS = (
    "SpamBlock", "SpamContent", "SpamRelated", "PolicyRelated", "ContentRelated",
    "VirusRelated", "ProhibitedAttachment", "AuthenticationFailed", "BadConfiguration",
    "RelayDenied", "RelayingIssues", "InvalidSender", "TooManyRecipients", "BadConnection",
    "NoAnswerFromHost", "DNSFailure", "MessageExpired", "TransientFailure", "QuotaIssues",
)
DEFAULT_FEEDBACK_TYPES = ("abuse", "fraud", "virus", "other")
DEFAULT_TTL = {"bounce": "365d", "oob": "365d", "expiration": "30d", "complaint": "never",
               "admin": "365d", "manual": "never"}
REASONS = tuple(DEFAULT_TTL)


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


@dataclass
class StoreConfig:
    path: Path
    busy_timeout: float = 30.0
    history_retention: int | None = 90 * 86400    # prune trims older history; None = keep all


@dataclass
class IngestConfig:
    log_dirs: list[Path]
    include_open: bool = False
    max_line: int = 1_000_000
    batch_lines: int = 50_000     # lines per transaction (and checkpoint) when reading a file
    max_future_skew: float = 3600.0   # seconds: a record dated further ahead is malformed


@dataclass
class KeysConfig:
    sending_domain: str = "from_header"
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class RulesConfig:
    bounce: bool = True
    oob: bool = True
    expiration: bool = True
    feedback: bool = True
    admin_bounce: bool = False
    expiration_threshold: int = 1
    expiration_window: int = 30 * 86400
    ignore_classifications: frozenset[str] = frozenset(DEFAULT_IGNORE_CLASSIFICATIONS)
    feedback_types: frozenset[str] = frozenset(DEFAULT_FEEDBACK_TYPES)
    ttl: dict[str, int | None] = field(default_factory=dict)
    # KumoMTA bounce classifier rule files; None when none are configured
    classifier: BounceClassifier | None = None


@dataclass
class ExportConfig:
    dir: Path
    format: str = "json"
    group: str | None = None
    shard_entries: int = 50_000      # a domain with more active entries is written as shards
    hash_recipients: bool = False    # files hold sha256 digests of the keys, not addresses


@dataclass
class ScheduleConfig:
    ingest_interval: float = 30.0
    export_interval: float = 60.0
    prune_interval: float = 86400.0


@dataclass
class WebhookConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8086
    token: str = ""
    max_body: int = 10_000_000


@dataclass(frozen=True)
class ApiToken:
    name: str          # the actor recorded in the history of every change the token makes
    token: str = field(repr=False)
    scope: str         # "read" (every GET) or "write" (GET and the writes)


@dataclass
class ApiConfig:
    tokens: tuple[ApiToken, ...] = ()


@dataclass
class MetricsConfig:
    textfile: Path | None = None


@dataclass
class PolicyConfig:
    """What the exporter needs of [policy] (the Lua module reads the rest); check_interval
    is read here too so a value the module would refuse fails `kumo-suppress` first."""
    queue: str = "suppressed.kumo_suppression"
    domain_meta: str = "x_suppression_domain"
    check_interval: float = 5.0


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

    def section(name: str) -> dict:
        return raw.get(name, {})

    store = section("store")
    ingest = section("ingest")
    keys = section("keys")
    rules = section("rules")
    export = section("export")
    schedule = section("schedule")
    webhook = section("webhook")
    api = section("api")
    metrics = section("metrics")
    policy = section("policy")

    ttl_raw = {**DEFAULT_TTL, **rules.get("ttl", {})}
    ttl = {reason: parse_lifetime(v, f"{where}: [rules.ttl] {reason}") for reason, v in ttl_raw.items()}

    listen = webhook.get("listen", "127.0.0.1:8086")
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: [webhook] listen must be HOST:PORT, not {listen!r}")
    host = host.strip("[]")

    aliases = {}
    from .keys import domain_key
    for k, v in keys.get("aliases", {}).items():
        ak, av = domain_key(k), domain_key(v)
        if not ak or not av:
            raise ConfigError(f"{where}: [keys.aliases] {k!r} = {v!r} is not a domain mapping")
        aliases[ak] = av

    def dur(sec: dict, key: str, default: str, name: str) -> float:
        return parse_duration(sec.get(key, default), f"{where}: [{name}] {key}")

    return Config(
        path=cfg_path,
        store=StoreConfig(path=path_of(store.get("path", "var/suppression.db")),
                          busy_timeout=dur(store, "busy_timeout", "30s", "store"),
                          history_retention=parse_lifetime(store.get("history_retention", "90d"),
                                                           f"{where}: [store] history_retention")),
        ingest=IngestConfig(log_dirs=[path_of(d) for d in ingest.get("log_dirs", ["/var/log/kumomta"])],
                            include_open=ingest.get("include_open", False),
                            max_line=parse_size(ingest.get("max_line", "1MB"), f"{where}: [ingest] max_line"),
                            batch_lines=ingest.get("batch_lines", 50_000),
                            max_future_skew=dur(ingest, "max_future_skew", "1h", "ingest")),
        keys=KeysConfig(sending_domain=keys.get("sending_domain", "from_header"), aliases=aliases),
        rules=RulesConfig(
            bounce=rules.get("bounce", True), oob=rules.get("oob", True),
            expiration=rules.get("expiration", True), feedback=rules.get("feedback", True),
            admin_bounce=rules.get("admin_bounce", False),
            expiration_threshold=rules.get("expiration_threshold", 1),
            expiration_window=int(dur(rules, "expiration_window", "30d", "rules")),
            ignore_classifications=frozenset(rules.get("ignore_classifications", DEFAULT_IGNORE_CLASSIFICATIONS)),
            feedback_types=frozenset(t.lower() for t in rules.get("feedback_types", DEFAULT_FEEDBACK_TYPES)),
            ttl=ttl, classifier=_classifier([path_of(p) for p in rules.get("classifier_files", [])], where)),
        export=ExportConfig(dir=path_of(export.get("dir", "var/snapshots")),
                            format=export.get("format", "json"), group=export.get("group") or None,
                            shard_entries=export.get("shard_entries", ExportConfig.shard_entries),
                            hash_recipients=export.get("hash_recipients", ExportConfig.hash_recipients)),
        schedule=ScheduleConfig(
            ingest_interval=dur(schedule, "ingest_interval", "30s", "schedule"),
            export_interval=dur(schedule, "export_interval", "60s", "schedule"),
            prune_interval=dur(schedule, "prune_interval", "24h", "schedule")),
        webhook=WebhookConfig(enabled=webhook.get("enabled", False), host=host, port=int(port),
                              token=webhook.get("token", ""),
                              max_body=parse_size(webhook.get("max_body", "10MB"), f"{where}: [webhook] max_body")),
        api=ApiConfig(tokens=_api_tokens(api.get("tokens", []), where)),
        metrics=MetricsConfig(textfile=path_of(metrics["textfile"]) if metrics.get("textfile") else None),
        policy=PolicyConfig(queue=policy.get("queue", "suppressed.kumo_suppression"),
                            domain_meta=policy.get("domain_meta", "x_suppression_domain"),
                            check_interval=dur(policy, "check_interval", "5 seconds", "policy")),
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
