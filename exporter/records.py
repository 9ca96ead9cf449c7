"""A kumod log record -> an Event: who (recipients), for which sending domain, when, and
the evidence an end user's panel shows.

Field shapes follow KumoMTA's JsonLogRecord (docs/reference/log_record.md). The sending
domain rules are PRODUCT.md section 4: the domain the Lua module stamped in meta comes
first; OOB and Feedback records describe an incoming report, so their own meta and
headers are never used for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from email.utils import getaddresses

import orjson

from .keys import domain_key, domain_of_address, recipient_key

# Types that can suppress; every other known type is counted and passed over.
SUPPRESSING_TYPES = frozenset({"Bounce", "OOB", "Expiration", "Feedback", "AdminBounce"})
KNOWN_TYPES = SUPPRESSING_TYPES | frozenset({
    "Reception", "Delivery", "TransientFailure", "Rejection", "AdminRebind",
    "DeferredInjectionRebind", "Delayed", "XferOut", "XferIn",
})
MAX_RECIPIENTS = 10_000


class MalformedRecord(ValueError):
    """A line or payload that is not a usable log record (the message says why)."""


class Skip(Exception):
    """A well-formed record that yields no event; `reason` is the counter it goes to."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class Event:
    type: str
    recipients: list[str]      # normalized recipient keys
    domain: str                # normalized sending-domain key
    timestamp: int             # the record's timestamp (unix seconds)
    message_id: str | None
    code: int | None
    enhanced_code: str | None  # "5.1.1"
    content: str | None
    classification: str | None
    nodeid: str | None
    feedback_type: str | None = None

    def key(self, recipient: str) -> int:
        """Identity of this event for one recipient: the same record seen twice (a file
        re-read, a webhook retry, the file AND the webhook) has the same key. 64 bits,
        signed, so the store keeps it as a rowid (no index beside the table): the first
        8 bytes of a 16-byte blake2b, which is what older stores kept whole."""
        material = "\x1f".join((self.type, self.message_id or "", recipient, self.domain,
                                str(self.timestamp), str(self.code)))
        digest = hashlib.blake2b(material.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def evidence(self) -> dict:
        return {"type": self.type, "message_id": self.message_id, "code": self.code,
                "enhanced_code": self.enhanced_code, "content": self.content,
                "classification": self.classification, "nodeid": self.nodeid}


def parse_line(line: bytes | str) -> dict:
    """One JSONL line -> a record dict, or MalformedRecord. orjson reads nearly every
    line, at a fraction of json's cost; what it refuses (lone surrogates, NaN, 1e400, a
    byte-order mark, deep nesting) goes to json, so what counts as malformed is json's
    call. (orjson reads an integer beyond 64 bits as a float: every number field is
    range-checked by _int, and such a value is out of range either way.)"""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = _json_loads(line)
    check_record(record)
    return record


def _json_loads(line: bytes | str):
    try:
        return json.loads(line)
    except RecursionError:
        raise MalformedRecord("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise MalformedRecord("not UTF-8") from None
    except ValueError as err:
        raise MalformedRecord(f"not JSON ({err.args[0].split(':')[0] if err.args else err})") from None


def check_record(record) -> None:
    if not isinstance(record, dict):
        raise MalformedRecord(f"a record must be a JSON object, not {type(record).__name__}")
    if not isinstance(record.get("type"), str):
        raise MalformedRecord("record has no string `type`")


def _str(value) -> str | None:
    return value if isinstance(value, str) else None


MAX_TIMESTAMP = 2**32       # 2106: beyond it a "timestamp" is milliseconds or garbage


def _int(value, limit: int) -> int | None:
    """A JSON number as an int in [0, limit), else None: an out-of-range value must never
    reach SQLite (OverflowError) or a date formatter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        value = int(value)
    return value if 0 <= value < limit else None


def _recipients(value) -> list[str]:
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list):
        items = value[:MAX_RECIPIENTS]
    else:
        return []
    out = []
    for item in items:
        if isinstance(item, dict):  # an EnvelopeAddress serialized as an object
            item = item.get("email") or item.get("address")
        key = recipient_key(item) if isinstance(item, str) else None
        if key and not key.startswith("@") and key not in out:
            out.append(key)
    return out


def _header(headers, name: str):
    """Header lookup, case-insensitive (kumod logs the name in the message's case)."""
    if not isinstance(headers, dict):
        return None
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        for k, v in headers.items():
            if isinstance(k, str) and k.lower() == lower:
                value = v
                break
    if isinstance(value, list):  # several instances of the header
        value = next((v for v in value if isinstance(v, str)), None)
    return value if isinstance(value, str) else None


# `Name <user@domain>` or a bare `user@domain` with nothing that needs the full parser
# (quotes, comments, groups, lists): nearly every From header, at a tenth of the cost
_SIMPLE_FROM = re.compile(r'\s*(?:[^"(),;:<>@\\]*<([^<>()",;:\s@]+@[^<>()",;:\s@]+)>|([^<>()",;:\s@]+@[^<>()",;:\s@]+))\s*')


def domain_of_header(value: str | None) -> str | None:
    """The domain of the (first) address of a From header value; comments and display
    names are the address parser's business (`a@b.example (Bob)` -> b.example)."""
    if not value:
        return None
    simple = _SIMPLE_FROM.fullmatch(value)
    if simple:
        return domain_of_address(simple.group(1) or simple.group(2))
    for _name, addr in getaddresses([value[:4096]]):
        if "@" in addr:
            return domain_of_address(addr)
    return None


_FROM_LINE = re.compile(rb"^from[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.I | re.M)


def from_of_message(message) -> str | None:
    """The From header domain inside an ARF report's original message (str or bytes)."""
    if isinstance(message, list):
        try:
            message = bytes(message[:65536])
        except (TypeError, ValueError):
            return None
    if isinstance(message, str):
        message = message[:65536].encode("utf-8", "replace")
    if not isinstance(message, bytes):
        return None
    head = re.split(rb"\r?\n\r?\n", message[:65536], maxsplit=1)[0]
    m = _FROM_LINE.search(head)
    if not m:
        return None
    value = re.sub(rb"\r?\n[ \t]+", b" ", m.group(1)).decode("utf-8", "replace").strip()
    return domain_of_header(value)


def _enhanced(value) -> str | None:
    if isinstance(value, dict):
        parts = [_int(value.get(k), 1000) for k in ("class", "subject", "detail")]
        if all(p is not None for p in parts):
            return "%d.%d.%d" % tuple(parts)
    if isinstance(value, str) and re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", value):
        return value
    return None


def _complainants(report: dict) -> list[str]:
    """The complaining user of an ARF report (never the record's own recipient)."""
    found = _recipients(report.get("original_rcpto_to") or report.get("original_rcpt_to"))
    if found:
        return found
    trace = report.get("supplemental_trace")
    if isinstance(trace, dict):
        found = _recipients(trace.get("recipient"))
        if found:
            return found
    ext = report.get("extensions")
    if isinstance(ext, dict):
        for name, value in ext.items():
            if isinstance(name, str) and name.lower() == "removal-recipient":
                return _recipients(value)
    return []


@dataclass(slots=True)
class DomainSource:
    """How to find the sending domain of records about mail this MTA sent."""
    sending_domain: str = "from_header"    # from_header | sender | meta:NAME
    domain_meta: str = "x_suppression_domain"
    aliases: dict | None = None            # return-path domain -> sending domain

    def alias(self, domain: str | None) -> str | None:
        if domain and self.aliases:
            return self.aliases.get(domain, domain)
        return domain


def sending_domain(record: dict, source: DomainSource) -> str | None:
    kind = record["type"]
    if kind == "OOB":
        # the DSN's envelope recipient: the original message's return path
        return source.alias(domain_of_address(_str(record.get("sender")) or ""))
    if kind == "Feedback":
        report = record.get("feedback_report")
        if not isinstance(report, dict):
            return None
        domain = from_of_message(report.get("original_message"))
        if domain:
            return domain
        mail_from = _str(report.get("original_mail_from"))
        domain = domain_of_address(mail_from) if mail_from else None
        if not domain:
            reported = report.get("reported_domain")
            if isinstance(reported, list) and reported and isinstance(reported[0], str):
                domain = domain_key(reported[0])
        return source.alias(domain)
    meta = record.get("meta")
    if isinstance(meta, dict):
        stamped = meta.get(source.domain_meta)
        if isinstance(stamped, str) and domain_key(stamped):
            return domain_key(stamped)
    how = source.sending_domain
    if how == "from_header":
        return domain_of_header(_header(record.get("headers"), "From"))
    if how == "sender":   # a return path: aliased, exactly as the Lua module keys it
        return source.alias(domain_of_address(_str(record.get("sender")) or ""))
    name = how[5:]
    value = meta.get(name) if isinstance(meta, dict) else None
    return domain_key(value) if isinstance(value, str) else None


def to_event(record: dict, source: DomainSource, own_queue: str) -> Event:
    """A suppressing-type record -> Event, or Skip(reason)."""
    kind = record["type"]
    if kind not in SUPPRESSING_TYPES:
        raise Skip("unknown_type" if kind not in KNOWN_TYPES else "not_suppressing")
    if record.get("queue") == own_queue:
        raise Skip("own_queue")  # our own suppression bounces must never feed themselves
    timestamp = _int(record.get("timestamp"), MAX_TIMESTAMP)
    if timestamp is None or timestamp <= 0:
        raise Skip("no_timestamp")
    report = record.get("feedback_report") if kind == "Feedback" else None
    if kind == "Feedback":
        if not isinstance(report, dict):
            raise Skip("no_feedback_report")
        recipients = _complainants(report)
    else:
        recipients = _recipients(record.get("recipient"))
    if not recipients:
        raise Skip("no_recipient")
    domain = sending_domain(record, source)
    if not domain:
        raise Skip("no_domain")
    response = record.get("response")
    if not isinstance(response, dict):
        response = {}
    content = _str(response.get("content"))
    return Event(
        type=kind, recipients=recipients, domain=domain, timestamp=timestamp,
        message_id=_str(record.get("id")), code=_int(response.get("code"), 1000),
        enhanced_code=_enhanced(response.get("enhanced_code")),
        content=content[:1000] if content else content,
        classification=_str(record.get("bounce_classification")),
        nodeid=_str(record.get("nodeid")),
        feedback_type=_str(report.get("feedback_type")) if report else None,
    )
