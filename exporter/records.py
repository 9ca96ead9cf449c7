"""A kumod log record -> an Event: who (recipients), for which sending domain, when, and
the evidence an end user's panel shows.

Field shapes follow KumoMTA's JsonLogRecord (docs/reference/log_record.md). The sending
domain: the domain the Lua module stamped in meta comes first; OOB and Feedback records
describe an incoming report, so their own meta and headers are never used for it.

Records kumod writes about its OWN messages and failures never become events: a log
hook's messages (queue `<name>.log_hook`, reception_protocol "LogRecord") carry the
original recipient and meta, so a failed POST to a receiver would otherwise suppress
every recipient of every record in flight; likewise kumod's internal queues
(`*.kumomta.internal`), a policy's reject in smtp_server_message_deferred_inject
(delivery_protocol "DeferredSmtpInjection") and failures kumod raised itself without a
remote answer ("KumoMTA internal: ..."). None of them says anything about the recipient.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from itertools import compress, repeat
from operator import add, attrgetter

import msgspec
import orjson

from .keys import ascii_lower, domain_key, domain_of_address, recipient_key
from .mailbox import HostileHeader, mailbox_domain

# Types that can suppress; every other known type is counted and passed over.
SUPPRESSING_TYPES = frozenset({"Bounce", "OOB", "Expiration", "Feedback", "AdminBounce"})
KNOWN_TYPES = SUPPRESSING_TYPES | frozenset({
    "Reception", "Delivery", "TransientFailure", "Rejection", "AdminRebind",
    "DeferredInjectionRebind", "Delayed", "XferOut", "XferIn",
})
# Types that never suppress: a line that surely is one is counted, never fully parsed.
PASSED_OVER_TYPES = KNOWN_TYPES - SUPPRESSING_TYPES
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
        material = (f"{self.type}\x1f{self.message_id or ''}\x1f{recipient}\x1f{self.domain}"
                    f"\x1f{self.timestamp}\x1f{self.code}")
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


class _TypeOnly(msgspec.Struct, gc=False):
    type: str


_type_of = msgspec.json.Decoder(_TypeOnly).decode
_TYPE = attrgetter("type")
# A line shallower than this is read by parse_line whatever else it holds: orjson reads
# 1024 levels, and json (for what orjson refuses) this many from any sane stack depth.
_FAST_DEPTH = 500
_SHALLOW_LINE = 2 * _FAST_DEPTH     # a line this short cannot nest deeper


def _typed(lines: list[bytes]) -> list[str] | None:
    """The type of each of `lines`, when parse_line surely reads every one of them as a
    record; else None (then only parse_line can say). msgspec validates each whole line as
    JSON but builds only its `type` (the last one, as json keeps it, when a key repeats);
    what it checks less than parse_line is checked first: UTF-8 (its skipped strings are
    not decoded), integers longer than Python's int_max_str_digits (which json refuses)
    and nesting (json's depth is Python's recursion limit)."""
    lengths = list(map(len, lines))
    longest = max(lengths)
    digits = sys.get_int_max_str_digits()
    if digits and longest > digits:
        return None
    if longest > _SHALLOW_LINE:
        deep = list(compress(lines, map(_SHALLOW_LINE.__lt__, lengths)))
        if max(map(add, map(bytes.count, deep, repeat(b"[")), map(bytes.count, deep, repeat(b"{")))) > _FAST_DEPTH:
            return None
    if not all(map(bytes.isascii, lines)):
        try:
            b"\n".join(lines).decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        return list(map(_TYPE, map(_type_of, lines)))
    except Exception:  # noqa: BLE001 - whatever msgspec refuses, parse_line decides
        return None


_PASSED_OVER = {kind: kind for kind in PASSED_OVER_TYPES}


def line_types(lines: list[bytes]) -> list[str | None]:
    """For each of `lines` (complete lines of a log), the type of a record that never
    suppresses, when parse_line would surely read the line as one: such a line is counted
    by its type and never parsed. None for every other line, which parse_line must read:
    a broken line, whatever its first bytes, is left to parse_line and counted as
    malformed there. The usual block (ASCII lines, none long or deep, all JSON) is typed
    by one C-level pass; any other block line by line."""
    if not lines:
        return []
    types = _typed(lines)
    if types is None:
        types = [(_typed([line]) or (None,))[0] for line in lines]
    return list(map(_PASSED_OVER.get, types))


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
    if isinstance(value, str):     # the usual record: one recipient
        key = recipient_key(value)
        return [key] if key and not key.startswith("@") else []
    if isinstance(value, list):
        items = value[:MAX_RECIPIENTS]
    else:
        return []
    out: dict[str, None] = {}   # an ordered set: de-duplication stays linear in the count
    for item in items:
        if isinstance(item, dict):  # an EnvelopeAddress serialized as an object
            item = item.get("email") or item.get("address")
        key = recipient_key(item) if isinstance(item, str) else None
        if key and not key.startswith("@"):
            out[key] = None
    return list(out)


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


def domain_of_header(value: str | None) -> str | None:
    """The sending-domain key of a From header value as kumod logs it: the domain of its
    one mailbox, None when `msg:from_header().domain` would give none (several mailboxes,
    a group, unparseable). HostileHeader for absurd input."""
    if not value:
        return None
    if len(value) <= _CACHED_TEXT:
        return _domain_of_short_header(value)
    domain = mailbox_domain(value)
    return domain_key(domain) if domain else None


# a log repeats the same few From headers and queue names over and over: their keys are
# pure functions of the text, remembered for short texts (bounded memory)
_CACHED_TEXT = 256


@functools.lru_cache(maxsize=4096)
def _domain_of_short_header(value: str) -> str | None:
    domain = mailbox_domain(value)
    return domain_key(domain) if domain else None


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
        cls, subject, detail = (_int(value.get("class"), 1000), _int(value.get("subject"), 1000),
                                _int(value.get("detail"), 1000))
        if cls is not None and subject is not None and detail is not None:
            return "%d.%d.%d" % (cls, subject, detail)
    if isinstance(value, str) and _ENHANCED.fullmatch(value):
        return value
    return None


_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def _complainants(report: dict) -> list[str]:
    """The complaining user of an ARF report (never the record's own recipient).
    kumod's own trace comes first: supplemental_trace is decoded from the X-KumoRef header
    this MTA put on the message, so its recipient is the address this MTA actually sent
    to. original_rcpto_to is whatever the reporting provider chose to write (often
    nothing, a redacted or rewritten address, or a forwarding alias). A trace of a
    multi-recipient message lists every recipient, but one user complained: then only
    the provider's own account can say who, and without it no one is suppressed."""
    trace = report.get("supplemental_trace")
    traced = _recipients(trace.get("recipient")) if isinstance(trace, dict) else []
    reported = _recipients(report.get("original_rcpto_to") or report.get("original_rcpt_to"))
    if not reported:
        ext = report.get("extensions")
        if isinstance(ext, dict):
            for name, value in ext.items():
                if isinstance(name, str) and name.lower() == "removal-recipient":
                    reported = _recipients(value)
                    break
    if len(traced) == 1:
        return traced
    if traced:
        return [r for r in reported if r in traced]
    return reported


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
        # the domain the module stamped, when kumod's trace header carries that meta
        # (trace_headers include_meta_names): exactly the key the message was checked by
        trace = report.get("supplemental_trace")
        stamped = trace.get(source.domain_meta) if isinstance(trace, dict) else None
        if isinstance(stamped, str) and domain_key(stamped):
            return domain_key(stamped)
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
        value = _header(record.get("headers"), "From")
        if value is None:
            return None     # not logged (or no From): which domain the module used is unknown
        # a From without one mailbox: msg:from_header().domain raises and the module
        # falls back to the envelope sender, so that is the key
        return domain_of_header(value) or _return_path_domain(record, source)
    if how == "sender":   # a return path: aliased, exactly as the Lua module keys it
        return _return_path_domain(record, source)
    name = how[5:]
    value = meta.get(name) if isinstance(meta, dict) else None
    return domain_key(value) if isinstance(value, str) else None


def _return_path_domain(record: dict, source: DomainSource) -> str | None:
    return source.alias(domain_of_address(_str(record.get("sender")) or ""))


KUMOD_INTERNAL_PREFIX = "KumoMTA internal: "


def _queue_domains(queue: str) -> tuple[str, ...]:
    """The domain and routing domain of a kumod queue name
    (`campaign:tenant@domain!routing_domain`), ASCII-lowercased."""
    if len(queue) <= _CACHED_TEXT:
        return _short_queue_domains(queue)
    return _split_queue(queue)


@functools.lru_cache(maxsize=4096)
def _short_queue_domains(queue: str) -> tuple[str, ...]:
    return _split_queue(queue)


def _split_queue(queue: str) -> tuple[str, ...]:
    domain = queue.split("@", 1)[1] if "@" in queue else queue
    return tuple(ascii_lower(part) for part in domain.split("!", 1))


def internal_reason(record: dict, own_queue: str) -> str | None:
    """Why a record is about kumod's own doing rather than the recipient, or None.
    kumod's own queues: a log hook's (log_hooks.lua names it `<hook name>.log_hook`) and
    the ones kumod creates itself (generator.kumomta.internal for HTTP deferred
    generation, deferred_smtp_inject.kumomta.internal, `<...>.xfer.kumomta.internal`)."""
    if record.get("reception_protocol") == "LogRecord":
        return "log_hook"
    queue = record.get("queue")
    if isinstance(queue, str):
        domains = _queue_domains(queue)
        if _queue_domains(own_queue)[0] in domains:
            return "own_queue"   # our own suppression bounces must never feed themselves
        for domain in domains:
            if domain.endswith(".log_hook"):
                return "log_hook"
            if domain.endswith(".kumomta.internal"):
                return "kumod_internal"
    if record.get("delivery_protocol") == "DeferredSmtpInjection":
        return "deferred_inject"     # a policy's reject in smtp_server_message_deferred_inject
    response = record.get("response")
    content = response.get("content") if isinstance(response, dict) else None
    if isinstance(content, str) and content.startswith(KUMOD_INTERNAL_PREFIX):
        return "kumod_internal"
    return None


def to_event(record: dict, source: DomainSource, own_queue: str) -> Event:
    """A suppressing-type record -> Event, or Skip(reason)."""
    kind = record["type"]
    if kind not in SUPPRESSING_TYPES:
        raise Skip("unknown_type" if kind not in KNOWN_TYPES else "not_suppressing")
    internal = internal_reason(record, own_queue)
    if internal:
        raise Skip(internal)
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
    try:
        domain = sending_domain(record, source)
    except HostileHeader:
        raise Skip("malformed_header") from None
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
