"""The rules of docs/rules.md row by row: which records suppress, with which reason,
and which sending domain they are counted against."""

import pytest

import logfactory as f
from exporter.config import build_config
from exporter.records import DomainSource, Skip, to_event
from exporter.rules import classify_enhanced, decide

QUEUE = "suppressed.kumo_suppression"


def config(**rules):
    return build_config({"rules": rules}, base=__import__("pathlib").Path("."), cfg_path=None)


def outcome(record, source=DomainSource(), **rules):
    """(reason or None, event) for one record under the given rules."""
    event = to_event(record, source, QUEUE)
    decision = decide(event, config(**rules).rules)
    return (decision.reason if decision else None), event


# ---------------------------------------------------------------- Bounce

def test_invalid_recipient_bounce_suppresses_for_a_year():
    rec = f.bounce("user@example.net")
    event = to_event(rec, DomainSource(), QUEUE)
    decision = decide(event, config().rules)
    assert (decision.reason, decision.ttl) == ("bounce", 365 * 86400)
    assert event.domain == "example.com" and event.recipients == ["user@example.net"]
    assert event.timestamp == rec["timestamp"]
    assert event.evidence() == {"type": "Bounce", "message_id": rec["id"], "code": 550, "enhanced_code": "5.1.1",
                                "content": "5.1.1 user unknown", "classification": "InvalidRecipient",
                                "nodeid": f.NODE_ID}


@pytest.mark.parametrize("classification", ["SpamBlock", "SpamContent", "PolicyRelated", "AuthenticationFailed",
                                            "RelayDenied", "InvalidSender", "QuotaIssues", "MessageExpired",
                                            "BadConnection", "DNSFailure", "TooManyRecipients"])
def test_sender_side_classifications_never_suppress(classification):
    assert outcome(f.bounce("u@example.net", code=554, enhanced_code="5.7.1", classification=classification))[0] is None


def test_ignore_list_is_configurable():
    rec = f.bounce("u@example.net", classification="SpamBlock")
    assert outcome(rec, ignore_classifications=[])[0] == "bounce"
    rec = f.bounce("u@example.net", classification="InvalidRecipient")
    assert outcome(rec, ignore_classifications=["InvalidRecipient"])[0] is None


def test_4xx_bounce_never_suppresses():
    assert outcome(f.bounce("u@example.net", code=452, enhanced_code="4.2.2", classification="InvalidRecipient"))[0] is None


def test_uncategorized_5xx_without_enhanced_code_suppresses():
    rec = f.bounce("u@example.net", code=550, enhanced_code=None, content="no such user", classification="Uncategorized")
    assert outcome(rec)[0] == "bounce"


@pytest.mark.parametrize("enhanced,suppresses", [
    ("5.1.1", True), ("5.1.10", True), ("5.2.1", True), ("5.4.4", True), ("5.0.0", True), ("5.1.2", True),
    ("5.4.1", True), ("5.5.0", True), ("5.3.0", True),
    ("5.7.1", False), ("5.7.26", False), ("5.2.2", False), ("5.1.8", False), ("5.4.7", False),
    ("5.3.4", False), ("5.2.3", False), ("5.5.3", False),
])
def test_uncategorized_bounces_are_judged_by_enhanced_code(enhanced, suppresses):
    rec = f.bounce("u@example.net", code=550, enhanced_code=enhanced, classification="Uncategorized")
    assert (outcome(rec)[0] == "bounce") is suppresses


def test_classify_enhanced_names_the_cause():
    assert classify_enhanced("5.7.1") == "PolicyRelated"
    assert classify_enhanced("5.2.2") == "QuotaIssues"
    assert classify_enhanced("5.1.1") is None


def test_bounce_rule_can_be_disabled():
    assert outcome(f.bounce("u@example.net"), bounce=False)[0] is None


# ---------------------------------------------------------------- OOB

def test_oob_suppresses_original_recipient_for_return_path_domain():
    rec = f.oob("bounces@Mail.Example.com", "Frank@Example.NET", meta={"x_suppression_domain": "dsn.example"})
    reason, event = outcome(rec)
    assert reason == "oob"
    assert event.recipients == ["frank@example.net"]
    # the DSN's own meta and headers never name the sending domain
    assert event.domain == "mail.example.com"


def test_oob_follows_the_bounce_rule():
    assert outcome(f.oob("b@example.com", "u@example.net", code=550, enhanced_code="5.7.1",
                         classification="SpamBlock"))[0] is None
    assert outcome(f.oob("b@example.com", "u@example.net", code=450, enhanced_code="4.2.2"))[0] is None
    assert outcome(f.oob("b@example.com", "u@example.net"), oob=False)[0] is None


def test_aliases_map_return_path_domains():
    source = DomainSource(aliases={"bounce.example.com": "example.com"})
    _, event = outcome(f.oob("b@bounce.example.com", "u@example.net"), source)
    assert event.domain == "example.com"


# ---------------------------------------------------------------- Expiration

def test_expiration_suppresses_for_30_days_with_threshold():
    rec = f.expiration("u@example.net")
    event = to_event(rec, DomainSource(), QUEUE)
    decision = decide(event, config(expiration_threshold=3, expiration_window="7d").rules)
    assert (decision.reason, decision.ttl, decision.threshold, decision.window) == ("expiration", 30 * 86400, 3, 7 * 86400)
    assert decide(event, config(expiration=False).rules) is None


# ---------------------------------------------------------------- Feedback

@pytest.mark.parametrize("kind", ["abuse", "fraud", "virus", "other", "Abuse"])
def test_complaints_suppress_the_complainant(kind):
    rec = f.feedback("Grace@Example.net", "News <news@Example.COM>", feedback_type=kind, fbl_address="fbl@example.com")
    reason, event = outcome(rec)
    assert reason == "complaint"
    assert event.recipients == ["grace@example.net"], "the complainant, not the feedback-loop address"
    assert event.domain == "example.com"


@pytest.mark.parametrize("kind", ["not-spam", "auth-failure"])
def test_other_feedback_types_do_not_suppress(kind):
    assert outcome(f.feedback("g@example.net", "news@example.com", feedback_type=kind))[0] is None


def test_complainant_bracketed_and_fallbacks():
    _, event = outcome(f.feedback("g@example.net", "news@example.com", bracketed=True))
    assert event.recipients == ["g@example.net"]
    _, event = outcome(f.feedback(None, "news@example.com", trace_recipient="t@example.net"))
    assert event.recipients == ["t@example.net"]
    _, event = outcome(f.feedback(None, "news@example.com", removal_recipient=["r@example.net"]))
    assert event.recipients == ["r@example.net"]
    with pytest.raises(Skip, match="no_recipient"):
        to_event(f.feedback(None, "news@example.com"), DomainSource(), QUEUE)


def test_feedback_domain_fallbacks():
    _, event = outcome(f.feedback("g@example.net", None, original_mail_from="bounces@Mail.Example.org"))
    assert event.domain == "mail.example.org"
    _, event = outcome(f.feedback("g@example.net", None, reported_domain=["Reported.Example"]))
    assert event.domain == "reported.example"
    # the report's own headers/meta (From: the FBL) are never used
    rec = f.feedback("g@example.net", None, meta={"x_suppression_domain": "wrong.example"})
    with pytest.raises(Skip, match="no_domain"):
        to_event(rec, DomainSource(), QUEUE)


def test_feedback_original_message_as_bytes_and_folded_from():
    rec = f.feedback("g@example.net", None)
    rec["feedback_report"]["original_message"] = list(
        b"Subject: x\r\nFrom: \"News, Inc\"\r\n <news@Folded.Example>\r\n\r\nFrom: body@wrong.example\r\n")
    assert outcome(rec)[1].domain == "folded.example"


# ---------------------------------------------------------------- AdminBounce, others

def test_admin_bounce_is_opt_in():
    assert outcome(f.admin_bounce("u@example.net"))[0] is None
    assert outcome(f.admin_bounce("u@example.net"), admin_bounce=True)[0] == "admin"


@pytest.mark.parametrize("kind", ["Delivery", "Reception", "TransientFailure", "Rejection", "Delayed"])
def test_other_types_never_suppress(kind):
    with pytest.raises(Skip, match="not_suppressing"):
        to_event(f.record(kind, "b@example.com", "u@example.net"), DomainSource(), QUEUE)


def test_unknown_future_types_are_skipped_as_unknown():
    with pytest.raises(Skip, match="unknown_type"):
        to_event(f.record("QuantumTeleport", "b@example.com", "u@example.net"), DomainSource(), QUEUE)


def test_own_suppression_queue_never_feeds_itself():
    rec = f.bounce("u@example.net", queue=QUEUE, delivery_protocol="Lua", enhanced_code=None,
                   content="5.7.1 recipient suppressed for example.com: bounce since 2026-01-01")
    with pytest.raises(Skip, match="own_queue"):
        to_event(rec, DomainSource(), QUEUE)


def test_every_recipient_of_a_multi_recipient_record_counts():
    rec = f.bounce(["A@example.net", "b@example.net", "a@example.net"])
    assert isinstance(rec["recipient"], list)
    assert outcome(rec)[1].recipients == ["a@example.net", "b@example.net"]


# ---------------------------------------------------------------- sending domain (section 4)

def test_stamped_meta_comes_first():
    rec = f.bounce("u@example.net", meta={"x_suppression_domain": "Stamped.Example"})
    assert outcome(rec)[1].domain == "stamped.example"


def test_from_header_is_looked_up_case_insensitively():
    rec = f.bounce("u@example.net", headers={"FROM": '"Shop" <offers@Shop.Example>'})
    assert outcome(rec)[1].domain == "shop.example"
    # kumod's address parser refuses a trailing dot, so msg:from_header().domain raises
    # and the module keys the message by its envelope sender: so does ingestion
    rec = f.bounce("u@example.net", headers={"FROM": '"Shop" <offers@Shop.Example.>'})
    assert outcome(rec)[1].domain == "example.com"


def test_sender_and_meta_sources():
    rec = f.bounce("u@example.net", headers={}, meta={"tenant_domain": "Tenant.Example"})
    assert outcome(rec, DomainSource(sending_domain="sender"))[1].domain == "example.com"
    assert outcome(rec, DomainSource(sending_domain="meta:tenant_domain"))[1].domain == "tenant.example"


def test_record_without_derivable_domain_is_skipped_not_guessed():
    rec = f.bounce("u@example.net", headers={})
    with pytest.raises(Skip, match="no_domain"):
        to_event(rec, DomainSource(), QUEUE)


@pytest.mark.parametrize("recipient", [None, 42, {"nested": {"deep": 1}}, [], "not-an-address", "x" * 1_000_000])
def test_unusable_recipient_fields_are_skipped(recipient):
    rec = f.bounce("u@example.net")
    rec["recipient"] = recipient
    with pytest.raises(Skip, match="no_recipient"):
        to_event(rec, DomainSource(), QUEUE)


def test_sender_source_is_aliased_like_the_lua_module():
    """With sending_domain = "sender" the return path is the key on both sides, so
    [keys.aliases] applies to it, as to OOB records."""
    source = DomainSource(sending_domain="sender", aliases={"bounce.example.com": "example.com"})
    rec = f.bounce("u@example.net", headers={})
    rec["sender"] = "b@Bounce.Example.com"
    assert outcome(rec, source)[1].domain == "example.com"
    # a From header is never aliased
    rec = f.bounce("u@example.net", headers={"From": "n@bounce.example.com"})
    assert outcome(rec, DomainSource(aliases={"bounce.example.com": "example.com"}))[1].domain == "bounce.example.com"


@pytest.mark.parametrize("timestamp", [10**20, 1_764_100_000_000, -5, 2**63, float("inf"), "1764100000", None])
def test_unusable_timestamps_are_skipped(timestamp):
    """Out of range (milliseconds, overflow) or not a number: skipped, never stored."""
    rec = f.bounce("u@example.net")
    rec["timestamp"] = timestamp
    with pytest.raises(Skip, match="no_timestamp"):
        to_event(rec, DomainSource(), QUEUE)


def test_out_of_range_codes_are_no_codes():
    rec = f.expiration("u@example.net")
    rec["response"]["code"] = 10**20
    rec["response"]["enhanced_code"] = {"class": 5, "subject": 10**30, "detail": 1}
    event = to_event(rec, DomainSource(), QUEUE)
    assert event.code is None and event.enhanced_code is None


@pytest.mark.parametrize("header", ["news@Example.COM (The News)", "<news@example.com> (x)",
                                    "Team <news@example.com>;", '"Shop, Inc" <news@example.com>'])
def test_from_header_comments_and_trailing_tokens(header):
    rec = f.bounce("u@example.net", headers={"From": header})
    assert outcome(rec)[1].domain == "example.com"


@pytest.mark.parametrize("header,domain", [
    ("News <news@Example.com>", "example.com"), ("news@example.com.", None),
    ('"News, Inc" <n@example.com>', "example.com"), ("a@x.example, b@y.example", None),
    ("Undisclosed recipients:;", None), ("garbage", None)])
def test_from_header_fast_path_agrees_with_the_parser(header, domain):
    from exporter.records import domain_of_header
    assert domain_of_header(header) == domain
