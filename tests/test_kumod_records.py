"""Records as kumod itself writes them, each with the decision it must end in.

The corpus is written here from KumoMTA's sources, not copied from them:
- the JsonLogRecord shape of docs/reference/log_record.md;
- log-hook messages (crates/kumod/src/logging/hooks.rs, policy-extras/log_hooks.lua): the
  hook's message carries the ORIGINAL sender, recipients and meta, reception_protocol
  "LogRecord", queue `<hook name>.log_hook`, and a failed POST is `kumo.reject(500, ...)`,
  logged as a Bounce (or an Expiration after the queue's max_age);
- failures kumod raises itself ("KumoMTA internal: ...", crates/kumod/src/queue/manager.rs)
  and its internal queues (generator.kumomta.internal, deferred_smtp_inject.kumomta.internal);
- a policy's reject in smtp_server_message_deferred_inject: a Bounce with the reject's code,
  no enhanced code, delivery_protocol "DeferredSmtpInjection" (crates/kumod/src/smtp_server.rs);
- OOB records synthesized from RFC 3464 reports the way logging/disposition.rs does it
  (recipient = Original-Recipient else Final-Recipient, sender = the DSN's envelope
  recipient, code from an smtp Diagnostic-Code else 550, enhanced code from Status);
- Feedback records from RFC 5965 reports (crates/kumo-log-types/src/rfc5965.rs), with the
  supplemental trace kumod decodes from its X-KumoRef header;
- response texts of the kind KumoMTA's bounce classifier rules are written for.

Every record goes through the file path (zstd segments) and the webhook's ingest layer;
a real `serve` on 127.0.0.1 takes the corpus once.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

import logfactory as f
from exporter.config import ConfigError, build_config, load_config
from exporter.ingest import Ingestor
from exporter.mailbox import HostileHeader, mailbox_domain
from exporter.records import DomainSource, Skip, domain_of_header, to_event
from exporter.rules import decide
from exporter.store import Store

TS = int(time.time()) - 3600     # entries expire a year after their record
QUEUE = "suppressed.kumo_suppression"
VECTORS = json.loads((Path(__file__).parent / "vectors" / "normalization.json").read_text())


def enhanced(text: str | None):
    if text is None:
        return None
    c, s, d = (int(x) for x in text.split("."))
    return {"class": c, "subject": s, "detail": d}


def kumod(kind: str, recipient, *, sender: str = "bounces@mail.shop.example", queue: str | None = None,
          code: int = 550, enh: str | None = None, content: str = "", classification: str = "Uncategorized",
          meta: dict | None = None, headers: dict | None = None, reception_protocol: str | None = "ESMTP",
          delivery_protocol: str | None = "ESMTP", feedback_report: dict | None = None,
          site: str = "", timestamp: int = TS) -> dict:
    """A JsonLogRecord with every field kumod writes."""
    first = recipient if isinstance(recipient, str) else recipient[0]
    return {
        "type": kind, "id": uuid.uuid4().hex, "sender": sender, "recipient": recipient,
        "queue": queue if queue is not None else first.rpartition("@")[2],
        "site": site, "size": 2048,
        "response": {"code": code, "enhanced_code": enhanced(enh), "content": content, "command": None},
        "peer_address": None, "timestamp": timestamp, "event_time": "2025-11-24T16:00:00.000000000Z",
        "created": timestamp - 60, "created_time": "2025-11-24T15:59:00.000000000Z", "num_attempts": 1,
        "bounce_classification": classification, "egress_pool": None, "egress_source": None,
        "source_address": None, "feedback_report": feedback_report, "meta": meta or {},
        "headers": headers if headers is not None else {}, "delivery_protocol": delivery_protocol,
        "reception_protocol": reception_protocol, "nodeid": f.NODE_ID, "tls_cipher": None,
        "tls_protocol_version": None, "tls_peer_subject_name": None, "provider_name": None,
        "session_id": None,
    }


STAMPED = {"x_suppression_domain": "shop.example"}


def bounce(recipient, content: str, code: int = 550, enh: str | None = None, **kw) -> dict:
    kw.setdefault("meta", STAMPED)
    kw.setdefault("site", "mx.dest.example")
    return kumod("Bounce", recipient, code=code, enh=enh, content=content, **kw)


def hook_message(kind: str, recipient, content: str, code: int = 500, **kw) -> dict:
    """The log hook's own message (hooks.rs): the original sender, recipients and meta,
    no headers (its body is the JSON record), delivered by the hook's custom_lua queue."""
    return kumod(kind, recipient, queue="webhook.log_hook", code=code, content=content,
                 meta={**STAMPED, "log_record": {"type": "Bounce"}}, reception_protocol="LogRecord",
                 delivery_protocol="Lua", **kw)


def oob(recipient: str, status: str, diagnostic: str | None, return_path: str = "bounces@mail.shop.example"):
    """An OOB record as disposition.rs synthesizes it from one failed per-recipient block."""
    code, content = 550, ""
    if diagnostic is not None:
        head, _, rest = diagnostic.partition(" ")
        code, content = (int(head), rest) if head.isdigit() else (550, diagnostic)
    return kumod("OOB", recipient, sender=return_path, queue="mail.shop.example", code=code, enh=status,
                 content=content, meta={"x_suppression_domain": "dsn.example"},
                 headers={"From": "Mail Delivery Subsystem <MAILER-DAEMON@mx.dest.example>"},
                 delivery_protocol=None)


def arf(*, trace=None, rcpt_to=(), original_from="From: <offers@shop.example>", feedback_type="abuse"):
    """A Feedback record from an RFC 5965 report (kumo-log-types rfc5965.rs field names)."""
    message = f"Received: from mta.shop.example\nFrom: {original_from}\nTo: <Undisclosed Recipients>\n" \
              "Subject: Offers\n\nbody\n"
    report = {"feedback_type": feedback_type, "user_agent": "SomeGenerator/1.0", "version": "1",
              "arrival_date": "2025-11-24T15:00:00Z", "incidents": None, "original_envelope_id": None,
              "original_mail_from": "<bounces@mail.shop.example>", "reporting_mta": None,
              "source_ip": "192.0.2.1", "authentication_results": [], "original_rcpto_to": list(rcpt_to),
              "reported_domain": ["shop.example"], "reported_uri": [], "extensions": {},
              "original_message": message, "supplemental_trace": trace}
    return kumod("Feedback", "fbl@mail.shop.example", sender="abusedesk@provider.example",
                 queue="mail.shop.example", code=250, content="", delivery_protocol=None,
                 headers={"From": "<abusedesk@provider.example>"}, feedback_report=report)


HOSTILE_FROM = "(" * 300 + "x@evil.example"

# (name, record, expected (recipient, domain, reason) or None)
CORPUS = [
    # ---- point 1: kumod's own messages and failures never suppress
    ("hook POST refused 401", hook_message("Bounce", "alice@dest.example", "401 Unauthorized: bad token"), None),
    ("hook POST too large 413", hook_message("Bounce", ["bob@dest.example", "carol@dest.example"],
                                             "413 Payload Too Large: body over max_body"), None),
    ("hook message expired", hook_message("Expiration", "dave@dest.example", "Next delivery time 1d > 1d",
                                          code=551, enh="5.4.7"), None),
    ("LogRecord in a renamed hook queue", kumod("Bounce", "erin@dest.example", queue="audit", code=500,
                                                content="500 Internal Server Error: oops", meta=STAMPED,
                                                reception_protocol="LogRecord", delivery_protocol="Lua"), None),
    ("hook queue with tenant and campaign", kumod("Bounce", "frank@dest.example", queue="c:t@webhook.log_hook",
                                                  code=500, content="502 Bad Gateway: ", meta=STAMPED,
                                                  delivery_protocol="Lua"), None),
    ("insert failed during reception", bounce("gina@dest.example", "KumoMTA internal: QueueManager::insert failed "
                                              "during reception: no space left on device", code=500,
                                              site=""), None),
    ("delivery suspended, spool unhealthy", bounce("hal@dest.example", "KumoMTA internal: delivery suspended: "
                                                   "spool unhealthy", code=551, enh="5.4.0"), None),
    ("HTTP deferred generation queue", bounce("ivy@dest.example", "5.7.1 refused", queue="generator.kumomta.internal",
                                              enh="5.1.1"), None),
    ("deferred SMTP injection queue", bounce("jack@dest.example", "5.1.1 nope",
                                             queue="deferred_smtp_inject.kumomta.internal", enh="5.1.1"), None),
    ("xfer queue", bounce("kim@dest.example", "5.1.1 nope", queue="dest.example.xfer.kumomta.internal",
                          enh="5.1.1"), None),
    ("reject in smtp_server_message_deferred_inject",
     bounce("lee@dest.example", "5.7.1 recipient suppressed for shop.example: bounce since 2025-11-01",
            delivery_protocol="DeferredSmtpInjection", site="deferred_smtp_inject.kumomta.internal"), None),
    ("the module's own bounce queue", bounce("max@dest.example", "5.7.1 recipient suppressed for shop.example",
                                             queue=QUEUE, delivery_protocol="Lua"), None),
    # ---- point 4: the code table (every record says Uncategorized: no classifier in kumod)
    ("user unknown", bounce("nina@dest.example", "5.1.1 The email account that you tried to reach does not exist",
                            enh="5.1.1"), ("nina@dest.example", "shop.example", "bounce")),
    ("Microsoft dead mailbox 5.5.0", bounce("omar@dest.example", "Requested action not taken: mailbox unavailable",
                                            enh="5.5.0"), ("omar@dest.example", "shop.example", "bounce")),
    ("bare 550", bounce("pia@dest.example", "Requested action not taken: mailbox unavailable"),
     ("pia@dest.example", "shop.example", "bounce")),
    ("DNSBL text under 5.0.3 (no classifier)", bounce("quinn@dest.example", "5.0.3 DNSBL:RBL 521< 192.0.2.9 "
                                                      ">_is_blocked", code=553, enh="5.0.3"),
     ("quinn@dest.example", "shop.example", "bounce")),
    ("too many recipients 5.5.3", bounce("rob@dest.example", "Too many recipients", code=552, enh="5.5.3"), None),
    ("syntax error 5.5.2", bounce("sam@dest.example", "Syntax error in parameters", code=501, enh="5.5.2"), None),
    ("line too long 5.6.0", bounce("tina@dest.example", "Message rejected: LINE_TOO_LONG", code=552,
                                   enh="5.6.0"), None),
    ("kumod classified ProtocolErrors 5.5.3",
     bounce("uma@dest.example", "Too many recipients", code=552, enh="5.5.3", classification="ProtocolErrors"), None),
    ("kumod classified ProtocolErrors 5.5.0",
     bounce("vic@dest.example", "Requested action not taken: mailbox unavailable", enh="5.5.0",
            classification="ProtocolErrors"), ("vic@dest.example", "shop.example", "bounce")),
    ("spam block 5.7.1", bounce("wes@dest.example", "Service unavailable, Client host [192.0.2.9] blocked "
                                "using Spamhaus", code=554, enh="5.7.1"), None),
    # ---- point 2: the From header as kumod logs it (no stamped meta)
    ("decoded display name with @", bounce("xena@dest.example", "user unknown", enh="5.1.1", meta={},
                                           headers={"From": "Café @ Paris <news@cafe.example>"}),
     ("xena@dest.example", "cafe.example", "bounce")),
    ("decoded display name with a comma", bounce("yuri@dest.example", "user unknown", enh="5.1.1", meta={},
                                                 headers={"from": "Dupont, Jean <jean@cafe.example>"}),
     ("yuri@dest.example", "cafe.example", "bounce")),
    ("two mailboxes: the envelope sender's domain", bounce("zoe@dest.example", "user unknown", enh="5.1.1", meta={},
                                                           headers={"From": "a@one.example, b@two.example"}),
     ("zoe@dest.example", "mail.shop.example", "bounce")),
    ("hostile From", bounce("evil@dest.example", "user unknown", enh="5.1.1", meta={},
                            headers={"From": HOSTILE_FROM}), None),
    # ---- OOB (RFC 3464 reports)
    ("OOB user unknown", oob("louis@larry.example", "5.1.1", "550 5.1.1 <louis@larry.example>... User unknown"),
     ("louis@larry.example", "mail.shop.example", "oob")),
    ("OOB delayed 4.0.0 marked failed", oob("slow@larry.example", "4.0.0", "426 connection timed out"), None),
    ("OOB without a diagnostic: 550 + Status", oob("gone@larry.example", "5.2.1", None),
     ("gone@larry.example", "mail.shop.example", "oob")),
    ("OOB unknown-type recipient", oob("nair_s", "5.0.0", None), None),
    ("OOB content error 5.6.0", oob("mime@larry.example", "5.6.0", "554 5.6.0 message content rejected"), None),
    # ---- point 3: Feedback (RFC 5965 reports)
    ("ARF: kumod's trace wins over original_rcpto_to",
     arf(trace={"recipient": "Real.User@Dest.example"}, rcpt_to=["alias@forwarder.example"]),
     ("real.user@dest.example", "shop.example", "complaint")),
    ("ARF: original_rcpto_to without a trace", arf(rcpt_to=["<plain@dest.example>"]),
     ("plain@dest.example", "shop.example", "complaint")),
    ("ARF: display name with @ in the original From",
     arf(trace={"recipient": "fan@dest.example"}, original_from='"offers@other.example" <news@cafe.example>'),
     ("fan@dest.example", "cafe.example", "complaint")),
    ("ARF: trace carrying the module's stamped domain",
     arf(trace={"recipient": "meta@dest.example", "x_suppression_domain": "Tenant.Example"}),
     ("meta@dest.example", "tenant.example", "complaint")),
    ("ARF: multi-recipient trace, the provider names one",
     arf(trace={"recipient": ["one@dest.example", "two@dest.example"]}, rcpt_to=["two@dest.example"]),
     ("two@dest.example", "shop.example", "complaint")),
    ("ARF: multi-recipient trace and no one named", arf(trace={"recipient": ["one@dest.example",
                                                                        "two@dest.example"]}), None),
    ("ARF not-spam", arf(trace={"recipient": "ok@dest.example"}, feedback_type="not-spam"), None),
]
IDS = [name for name, _, _ in CORPUS]


def decision_of(record, **rules):
    cfg = build_config({"rules": rules}, base=Path("."), cfg_path=None)
    try:
        event = to_event(record, DomainSource(), QUEUE)
    except Skip:
        return None
    d = decide(event, cfg.rules)
    return [(r, event.domain, d.reason) for r in event.recipients] if d else None


@pytest.mark.parametrize("name,record,expected", CORPUS, ids=IDS)
def test_each_record_ends_in_its_decision(name, record, expected):
    got = decision_of(record)
    assert got == ([expected] if expected else None), name


def test_multi_recipient_hook_bounce_never_suppresses_any():
    rec = hook_message("Bounce", [f"u{i}@dest.example" for i in range(50)], "413 Payload Too Large: ")
    with pytest.raises(Skip, match="log_hook"):
        to_event(rec, DomainSource(), QUEUE)


def test_hostile_from_is_a_skipped_record_not_a_crash():
    with pytest.raises(Skip, match="malformed_header"):
        to_event(CORPUS[IDS.index("hostile From")][1], DomainSource(), QUEUE)
    with pytest.raises(HostileHeader):
        mailbox_domain(HOSTILE_FROM)
    # deep but balanced nesting within the limit, and long flat input, still parse
    assert mailbox_domain("(" * 60 + "c" + ")" * 60 + " news@cafe.example") == "cafe.example"
    assert mailbox_domain(", " * 20000 + "news@cafe.example") == "cafe.example"


# ---------------------------------------------------------------- the shared From vectors

@pytest.mark.parametrize("vector", VECTORS["from_header"], ids=lambda v: v["header"][:40] or "empty")
def test_from_header_vectors(vector):
    """Both the header as it stands in the message and as kumod logs it (decoded) give
    the domain msg:from_header().domain gives."""
    for form in ("header", "logged"):
        if form in vector:
            assert domain_of_header(vector[form]) == vector["domain"], form


@pytest.mark.parametrize("vector", VECTORS["from_header"], ids=lambda v: v["header"][:40] or "empty")
def test_from_header_fast_path_agrees_with_the_full_parser(vector, monkeypatch):
    import exporter.mailbox as mb
    fast = [domain_of_header(vector[k]) for k in ("header", "logged") if k in vector]
    monkeypatch.setattr(mb, "_SIMPLE", __import__("re").compile(r"(?!)"))
    assert [domain_of_header(vector[k]) for k in ("header", "logged") if k in vector] == fast


def test_ambiguous_decoded_display_name_is_not_guessed():
    # a display name that decoded to `<...>` itself: which one is the address is unknown
    assert domain_of_header("a <x@evil.example> <news@cafe.example>") is None


# ---------------------------------------------------------------- the classifier

IANA_LIKE = """\
# rules in kumod's bounce classifier format (written for these tests)
[rules]
InvalidRecipient = ["^(451|550) [45]\\\\.1\\\\.[1234] "]
ProtocolErrors = ["^\\\\d{3} [45]\\\\.5\\\\.\\\\d+ ", "^\\\\d{3} [45]\\\\.6\\\\.\\\\d+ "]
AuthenticationFailed = ["^5\\\\d{2} [45]\\\\.7\\\\.(0|1|26) "]
"""
LOCAL = """\
[rules]
SpamBlock = ["^553 5\\\\.0\\\\.3.+DNSBL", "^550.+blocked using"]
InvalidRecipient = ["^550.+mailbox unavailable", "^550 5\\\\.1\\\\.1 .+Spamhaus"]
"""


@pytest.fixture
def rule_files(tmp_path):
    (tmp_path / "local.toml").write_text(LOCAL)
    (tmp_path / "iana.toml").write_text(IANA_LIKE)
    return ["local.toml", "iana.toml"]


def classified(record, rule_files, tmp_path):
    cfg = build_config({"rules": {"classifier_files": rule_files}}, base=tmp_path, cfg_path=None)
    event = to_event(record, DomainSource(), QUEUE)
    d = decide(event, cfg.rules)
    return (d.reason if d else None), event.classification


def test_classifier_blocklist_text_no_longer_suppresses(rule_files, tmp_path):
    rec = CORPUS[IDS.index("DNSBL text under 5.0.3 (no classifier)")][1]
    assert classified(rec, rule_files, tmp_path) == (None, "SpamBlock")


def test_classifier_first_match_wins_in_file_then_rule_order(rule_files, tmp_path):
    # local.toml comes first: its InvalidRecipient rule wins over iana's ProtocolErrors
    rec = bounce("a@dest.example", "Requested action not taken: mailbox unavailable", enh="5.5.0")
    assert classified(rec, rule_files, tmp_path) == ("bounce", "InvalidRecipient")
    # within local.toml SpamBlock is written first
    rec = bounce("b@dest.example", "5.1.1 blocked using Spamhaus", enh="5.1.1")
    assert classified(rec, rule_files, tmp_path) == (None, "SpamBlock")
    # files in the other order: iana's InvalidRecipient now matches first
    assert classified(rec, list(reversed(rule_files)), tmp_path) == ("bounce", "InvalidRecipient")


def test_classifier_protocol_errors_are_decided_by_the_code_table(rule_files, tmp_path):
    tmr = bounce("c@dest.example", "Too many recipients", code=552, enh="5.5.3")
    assert classified(tmr, rule_files, tmp_path) == (None, "ProtocolErrors")
    dead = bounce("d@dest.example", "Requested action not taken: user gone", enh="5.5.0")
    assert classified(dead, rule_files, tmp_path) == ("bounce", "ProtocolErrors")


def test_classifier_leaves_labelled_records_alone(rule_files, tmp_path):
    rec = bounce("e@dest.example", "5.0.3 DNSBL listed", code=553, enh="5.0.3", classification="InvalidRecipient")
    assert classified(rec, rule_files, tmp_path) == ("bounce", "InvalidRecipient")


def test_classifier_unmatched_stays_uncategorized(rule_files, tmp_path):
    rec = bounce("f@dest.example", "no such user here", code=550, enh="5.4.1")
    assert classified(rec, rule_files, tmp_path) == ("bounce", "Uncategorized")


def test_classifier_line_is_kumods_single_line(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"rules": {"SpamBlock": ["^554 listed here$"],
                                                           "QuotaIssues": ["^552 5\\.2\\.2 full box$"]}}))
    cls = build_config({"rules": {"classifier_files": ["r.json"]}}, base=tmp_path, cfg_path=None).rules.classifier
    assert cls.classify(554, None, "listed\r\nhere") == "SpamBlock"
    assert cls.classify(552, "5.2.2", "full\nbox") == "QuotaIssues"
    assert cls.classify(550, None, "listed here") == "Uncategorized"


@pytest.mark.parametrize("content,why", [
    ('[rules]\nX = ["(unclosed"]\n', "not a usable regular expression"),
    ('[rules]\nX = ["[[:alpha:]]+"]\n', "Rust regex syntax"),
    ('[rules]\nX = ["a(?i)b"]\n', "not a usable regular expression"),
    ('[rules]\nX = "not a list"\n', "[rules] table"),
    ('rules = 1\n', "[rules] table"),
    ('[rules\n', "not a bounce classifier file"),
])
def test_unusable_rule_files_are_config_errors(tmp_path, content, why):
    (tmp_path / "bad.toml").write_text(content)
    cfg = tmp_path / "config.toml"
    cfg.write_text('[rules]\nclassifier_files = ["bad.toml"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "bad.toml" in str(err.value) and why in str(err.value)


def test_rule_file_must_be_toml_or_json(tmp_path):
    (tmp_path / "rules.txt").write_text("[rules]\n")
    with pytest.raises(ConfigError, match="must end in .toml or .json"):
        build_config({"rules": {"classifier_files": ["rules.txt"]}}, base=tmp_path, cfg_path=None)
    with pytest.raises(ConfigError, match="cannot read"):
        build_config({"rules": {"classifier_files": ["missing.toml"]}}, base=tmp_path, cfg_path=None)


def test_cli_refuses_a_bad_rule_file_with_exit_2(install):
    (install.root / "bad.toml").write_text('[rules]\nX = ["(oops"]\n')
    install.configure(rules={"classifier_files": ["bad.toml"]})
    r = install.run("init")
    assert r.exit_code == 2 and "bad.toml" in r.stderr + r.output


# ---------------------------------------------------------------- files and webhook

def expected_entries():
    return sorted(e for _, _, e in CORPUS if e)


def store_entries(db: Path) -> list:
    with Store.open(db, create=False) as store:
        rows = store.conn.execute("SELECT recipient, domain, reason FROM suppressions").fetchall()
    return sorted(tuple(r) for r in rows)


def test_corpus_through_zstd_segments(install):
    install.ok("init")
    records = [rec for _, rec, _ in CORPUS]
    install.segment(records[:20])
    install.segment(records[20:])
    r = install.ok("ingest")
    assert store_entries(install.db) == expected_entries(), r.output
    with Store.open(install.db, create=False) as store:
        counters = store.counters()
    assert counters.get("skipped_total:log_hook") == 5
    assert counters.get("skipped_total:kumod_internal") == 5
    assert counters.get("skipped_total:deferred_inject") == 1
    assert counters.get("skipped_total:own_queue") == 1
    assert counters.get("skipped_total:malformed_header") == 1
    # a second run changes nothing
    install.segment(records)
    install.ok("ingest")
    assert store_entries(install.db) == expected_entries()


def test_corpus_through_the_webhook_ingest_layer(install):
    install.ok("init")
    cfg = load_config(install.config_path)
    with Store.open(install.db, create=False) as store:
        Ingestor(store, cfg).ingest_records([rec for _, rec, _ in CORPUS])
    assert store_entries(install.db) == expected_entries()


def test_corpus_through_a_real_serve(install):
    from test_webhook import Server
    install.ok("init")
    server = Server(install)
    try:
        status, body, _ = server.post([rec for _, rec, _ in CORPUS])
        assert status == 200, body
        # one record per POST, as log_hooks:new_json sends them
        for _, rec, _ in CORPUS[:5]:
            status, body, _ = server.post(rec)
            assert status == 200, body
    finally:
        assert server.stop() == 0
    assert store_entries(install.db) == expected_entries()


def test_classifier_through_serve_and_files(install):
    """With the operator's rule files configured, the DNSBL 5.0.3 record stops suppressing
    on both paths."""
    (install.root / "local.toml").write_text(LOCAL)
    install.configure(rules={"classifier_files": ["local.toml"]})
    install.ok("init")
    rec = CORPUS[IDS.index("DNSBL text under 5.0.3 (no classifier)")][1]
    good = CORPUS[IDS.index("user unknown")][1]
    install.segment([rec, good])
    install.ok("ingest")
    from test_webhook import Server
    server = Server(install)
    try:
        status, body, _ = server.post([rec, good])
        assert status == 200, body
    finally:
        assert server.stop() == 0
    assert store_entries(install.db) == [("nina@dest.example", "shop.example", "bounce")]
    entry = install.check("nina@dest.example", "shop.example")
    assert entry["evidence"]["classification"] == "Uncategorized"
