"""An Event -> a Decision: suppress or not, with which reason and lifetime
(PRODUCT.md section 5).

The rule that matters most: a failure that blames the sender or a passing condition
(a mass spam block by one provider, a full mailbox, a DNS outage) must never suppress,
because it would suppress thousands of good addresses. kumod's classifier says which
failures those are; most installs run none, so every record says Uncategorized and the
enhanced status code (RFC 3463) is read instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import RulesConfig
from .records import Event

REASON_OF_TYPE = {"Bounce": "bounce", "OOB": "oob", "Expiration": "expiration",
                  "Feedback": "complaint", "AdminBounce": "admin"}


@dataclass(frozen=True, slots=True)
class Decision:
    reason: str
    ttl: int | None          # seconds, None = never expires
    threshold: int = 1       # events of this reason needed within `window`
    window: int = 0


def classify_enhanced(enhanced: str | None) -> str | None:
    """The classification an RFC 3463 code implies for an Uncategorized 5xx, or None
    when it blames the address (or says nothing): those suppress."""
    if not enhanced:
        return None
    _cls, subject, detail = enhanced.split(".")
    if subject == "1":          # addressing: bad mailbox/domain suppress, bad sender does not
        return "InvalidSender" if detail in ("7", "8") else None
    if subject == "2":          # mailbox: disabled suppresses, full or too big does not
        return {"2": "QuotaIssues", "3": "ContentRelated", "4": "BadConfiguration"}.get(detail)
    if subject == "3":          # the receiving system's own trouble
        return "BadConfiguration" if detail != "4" else "ContentRelated"
    if subject == "4":          # routing: "unable to route" is a dead domain
        if detail == "4":
            return None
        return "MessageExpired" if detail == "7" else "BadConnection"
    if subject == "5":          # protocol
        return "TooManyRecipients" if detail == "3" else "BadConfiguration"
    if subject == "6":
        return "ContentRelated"
    if subject == "7":          # security or policy: blocks, auth, reputation
        return "PolicyRelated"
    return None


def _failure_suppresses(event: Event, rules: RulesConfig) -> bool:
    code = event.code
    enhanced_class = event.enhanced_code[0] if event.enhanced_code else None
    if code is not None:
        if not 500 <= code <= 599:
            return False        # 4xx never suppresses, nor anything else that is not 5xx
    elif enhanced_class != "5":
        return False
    if enhanced_class in ("2", "4"):
        return False
    classification = event.classification
    if not classification or classification == "Uncategorized":
        classification = classify_enhanced(event.enhanced_code)
    return classification is None or classification not in rules.ignore_classifications


def decide(event: Event, rules: RulesConfig) -> Decision | None:
    kind = event.type
    reason = REASON_OF_TYPE.get(kind)
    if reason is None:
        return None
    if kind == "Bounce":
        enabled = rules.bounce and _failure_suppresses(event, rules)
    elif kind == "OOB":
        enabled = rules.oob and _failure_suppresses(event, rules)
    elif kind == "Expiration":
        if rules.expiration:
            return Decision(reason, rules.ttl[reason], rules.expiration_threshold, rules.expiration_window)
        return None
    elif kind == "Feedback":
        enabled = rules.feedback and (event.feedback_type or "").lower() in rules.feedback_types
    else:
        enabled = rules.admin_bounce
    return Decision(reason, rules.ttl[reason]) if enabled else None
