"""KumoMTA-shaped log records and kumod-style log segments, for the tests, the benchmarks
and the bundled example.

Shapes follow KumoMTA's JsonLogRecord (docs/reference/log_record.md): `recipient` is a
string, or an array for a multi-recipient message; `response` is {code, enhanced_code:
{class, subject, detail} | null, content, command}; OOB records carry the original return
path in `sender`; Feedback records carry the complainant in feedback_report.
Segments are named by start time like kumod's (%Y%m%d-%H%M%S.%f), zstd-compressed,
and marked done by clearing the write bits.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Iterable, Sequence

import zstandard

NODE_ID = "0b5e1b4e-9a55-11ee-8c90-0242ac120002"
_ids = itertools.count()


def message_id() -> str:
    return uuid.uuid4().hex


def enhanced(code: str | None) -> dict | None:
    if code is None:
        return None
    c, s, d = (int(x) for x in code.split("."))
    return {"class": c, "subject": s, "detail": d}


def record(kind: str, sender: str, recipient: str | Sequence[str], *, code: int = 250,
           enhanced_code: str | None = None, content: str = "", classification: str = "Uncategorized",
           timestamp: int | None = None, headers: dict | None = None, meta: dict | None = None,
           queue: str | None = None, feedback_report: dict | None = None, id: str | None = None,
           delivery_protocol: str | None = "ESMTP") -> dict:
    ts = int(time.time()) - 60 if timestamp is None else int(timestamp)
    first = recipient if isinstance(recipient, str) else recipient[0]
    rcpt = recipient if isinstance(recipient, str) else (list(recipient) if len(recipient) > 1 else recipient[0])
    return {
        "type": kind, "id": id or message_id(), "sender": sender, "recipient": rcpt,
        "queue": queue if queue is not None else first.rpartition("@")[2].lower(),
        "site": "", "size": 2048,
        "response": {"code": code, "enhanced_code": enhanced(enhanced_code), "content": content,
                     "command": None},
        "peer_address": None, "timestamp": ts,
        "event_time": dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000000000Z"),
        "created": ts, "num_attempts": 1, "bounce_classification": classification,
        "egress_pool": None, "egress_source": None, "source_address": None,
        "feedback_report": feedback_report, "meta": dict(meta or {}), "headers": dict(headers or {}),
        "delivery_protocol": delivery_protocol, "reception_protocol": "ESMTP", "nodeid": NODE_ID,
    }


def _from(domain: str, headers: dict | None) -> dict:
    return headers if headers is not None else {"From": f"News <news@{domain}>"}


def bounce(recipient, domain: str = "example.com", *, code: int = 550, enhanced_code: str | None = "5.1.1",
           content: str = "5.1.1 user unknown", classification: str = "InvalidRecipient",
           headers: dict | None = None, **kw) -> dict:
    return record("Bounce", f"bounces@{domain}", recipient, code=code, enhanced_code=enhanced_code,
                  content=content, classification=classification, headers=_from(domain, headers), **kw)


def transient(recipient, domain: str = "example.com", **kw) -> dict:
    return record("TransientFailure", f"bounces@{domain}", recipient, code=451, enhanced_code="4.7.1",
                  content="try again later", headers=_from(domain, None), **kw)


def delivery(recipient, domain: str = "example.com", **kw) -> dict:
    return record("Delivery", f"bounces@{domain}", recipient, code=250, enhanced_code="2.0.0",
                  content="OK", headers=_from(domain, None), **kw)


def reception(recipient, domain: str = "example.com", **kw) -> dict:
    return record("Reception", f"bounces@{domain}", recipient, headers=_from(domain, None),
                  delivery_protocol=None, **kw)


def expiration(recipient, domain: str = "example.com", **kw) -> dict:
    return record("Expiration", f"bounces@{domain}", recipient, code=551, enhanced_code="5.4.7",
                  content="Next delivery time would exceed the expiry time", headers=_from(domain, None),
                  delivery_protocol=None, **kw)


def admin_bounce(recipient, domain: str = "example.com", **kw) -> dict:
    return record("AdminBounce", f"bounces@{domain}", recipient, code=551, enhanced_code="5.7.1",
                  content="Administrator bounced with reason: purge", headers=_from(domain, None),
                  delivery_protocol=None, **kw)


def oob(return_path: str, original_recipient: str, *, code: int = 550, enhanced_code: str | None = "5.1.1",
        content: str = "5.1.1 user unknown", classification: str = "Uncategorized", **kw) -> dict:
    """An OOB record: sender = the original return path; headers/meta are the DSN's."""
    kw.setdefault("headers", {"From": "MAILER-DAEMON@mx.provider.example"})
    return record("OOB", return_path, original_recipient, code=code, enhanced_code=enhanced_code,
                  content=content, classification=classification, delivery_protocol=None,
                  queue=return_path.rpartition("@")[2].lower(), **kw)


def feedback(complainant: str | None, original_from: str | None, *, feedback_type: str = "abuse",
             fbl_address: str = "fbl@example.com", original_mail_from: str | None = None,
             reported_domain: Sequence[str] = (), bracketed: bool = False,
             trace_recipient: str | None = None, removal_recipient: Sequence[str] = (), **kw) -> dict:
    """A Feedback (ARF) record: `recipient` is the feedback-loop address, NOT the user."""
    def fmt(a: str) -> str:
        return f"<{a}>" if bracketed else a
    message = None
    if original_from:
        message = (f"From: {original_from}\r\nTo: <undisclosed>\r\nSubject: offers\r\n"
                   f"Message-ID: <x@sender.example>\r\n\r\nbody\r\n")
    report = {
        "feedback_type": feedback_type, "user_agent": "FBL/1.0", "version": "1",
        "arrival_date": "2026-11-25T10:00:00Z", "incidents": None, "original_envelope_id": None,
        "original_mail_from": fmt(original_mail_from) if original_mail_from else None,
        "reporting_mta": {"mta_type": "dns", "name": "fbl.provider.example"}, "source_ip": "192.0.2.1",
        "authentication_results": [],
        "original_rcpto_to": [fmt(complainant)] if complainant else [],
        "reported_domain": list(reported_domain), "reported_uri": [],
        "extensions": {"removal-recipient": list(removal_recipient)} if removal_recipient else {},
        "original_message": message,
        "supplemental_trace": {"recipient": trace_recipient} if trace_recipient else None,
    }
    kw.setdefault("headers", {"From": "Feedback Loop <fbl-noreply@provider.example>"})
    return record("Feedback", "fbl-noreply@provider.example", fbl_address, feedback_report=report,
                  delivery_protocol=None, **kw)


def to_jsonl(records: Iterable[dict]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)


def segment_name(when: float) -> str:
    whole = int(when)
    nanos = int((when - whole) * 1e9)
    return dt.datetime.fromtimestamp(whole, dt.timezone.utc).strftime("%Y%m%d-%H%M%S") + f".{nanos:09d}"


def mark_done(path: Path) -> None:
    """What kumod does when it closes a segment: clear every write bit."""
    path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)


_clock = [time.time()]


def write_segment(directory: Path, records: Iterable[dict] | bytes, *, done: bool = True,
                  compress: bool = True, name: str | None = None, truncate: bool = False,
                  torn: bool = False, level: int = 3) -> Path:
    """One segment as kumod writes it. `truncate` cuts the compressed stream in its last
    block (a crash); `torn` ends the data with half a line."""
    directory.mkdir(parents=True, exist_ok=True)
    if name is None:
        _clock[0] += 0.001
        name = segment_name(_clock[0])
    path = directory / name
    data = records if isinstance(records, bytes) else to_jsonl(records)
    if torn:
        data += b'{"type":"Bounce","id":"torn","sender":"bounces@exam'
    if compress:
        if truncate:
            cobj = zstandard.ZstdCompressor(level=level).compressobj()
            half = data.rfind(b"\n", 0, len(data) - 1) + 1   # the last line goes in its own block
            head = cobj.compress(data[:half]) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            rest = cobj.compress(data[half:]) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
            data = head + rest[: len(rest) // 2]
        else:
            data = zstandard.ZstdCompressor(level=level).compress(data)
    path.write_bytes(data)
    os.chmod(path, 0o644)
    if done:
        mark_done(path)
    return path
