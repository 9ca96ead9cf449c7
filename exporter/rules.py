"""An Event -> a Decision: suppress or not, with which reason and lifetime
(PRODUCT.md section 5).

The rule that matters most: a failure that blames the sender or a passing condition
(a mass spam block by one provider, a full mailbox, a DNS outage) must never suppress,
because it would suppress thousands of good addresses. kumod's classifier says which
failures those are; most installs run none, so every record says Uncategorized. Such a
5xx suppresses unless its enhanced status code (RFC 3463) itself blames the sender.
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


# RFC 3463 statuses that put the fault on the sender, the message or a passing condition,
# as the classification a classifier would have given them. Every other uncategorized
# 5xx suppresses (PRODUCT.md section 5), e.g. X.1.1 bad mailbox, X.2.1 disabled, X.4.4
# unroutable, and Microsoft's 5.4.1 "Recipient address rejected".
_SENDER_SIDE = {
    ("1", "7"): "InvalidSender", ("1", "8"): "InvalidSender",   # bad sender address/domain
    ("2", "2"): "QuotaIssues",                                  # mailbox full
    ("2", "3"): "ContentRelated", ("3", "4"): "ContentRelated",  # message too big
    ("4", "7"): "MessageExpired",                               # delivery time expired
    ("5", "3"): "TooManyRecipients",
}


def classify_enhanced(enhanced: str | None) -> str | None:
    """The classification an RFC 3463 code implies for an Uncategorized 5xx, or None
    when it does not blame the sender: those suppress. X.7.x (security or policy: spam
    blocks, reputation, authentication) is the mass-block case and never suppresses."""
    if not enhanced:
        return None
    _cls, subject, detail = enhanced.split(".")
    if subject == "7":
        return "PolicyRelated"
    return _SENDER_SIDE.get((subject, detail))


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
