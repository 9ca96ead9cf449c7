"""An Event -> a Decision: suppress or not, with which reason and lifetime
(README, "What suppresses").

The rule that matters most: a failure that blames the sender or a passing condition
(a mass spam block by one provider, a full mailbox, a DNS outage) must never suppress,
because it would suppress thousands of good addresses. kumod's classifier says which
failures those are; most installs run none, so every record says Uncategorized. Such a
record is classified with the operator's kumod rule files when [rules].classifier_files
names them; one still Uncategorized (or labelled ProtocolErrors, which says nothing
about the mailbox) suppresses unless its enhanced status code (RFC 3463) blames the
sender, the message or the SMTP dialogue.
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


# RFC 3463 statuses that put the fault on the sender, the message, the SMTP dialogue or a
# passing condition, named by the classification a classifier would have given them.
# A record judged by its code (no classification, or one that says nothing about the
# mailbox) with one of these never suppresses; every other 5xx does, e.g. X.1.1 bad mailbox, X.2.1 disabled, X.4.4 unroutable, Microsoft's
# 5.4.1 "Recipient address rejected" and 5.5.0 "mailbox unavailable", and a bare 550.
_SENDER_SIDE = {
    ("1", "7"): "InvalidSender", ("1", "8"): "InvalidSender",   # bad sender address/domain
    ("2", "2"): "QuotaIssues",                                  # mailbox full
    ("2", "3"): "ContentRelated", ("3", "4"): "ContentRelated",  # message too big
    ("4", "7"): "MessageExpired",                               # delivery time expired
    ("5", "3"): "TooManyRecipients",                            # a batch limit, not the mailbox
    # the SMTP dialogue (command, syntax, sequence, parameters, protocol version): the
    # sending software's fault. X.5.0 ("other protocol status") is NOT here: Microsoft
    # answers a dead mailbox with 550 5.5.0.
    ("5", "1"): "ProtocolErrors", ("5", "2"): "ProtocolErrors", ("5", "4"): "ProtocolErrors",
    ("5", "5"): "ProtocolErrors", ("5", "6"): "ProtocolErrors",
}
# Labels that say nothing about the mailbox: the record is judged by its code instead.
# kumod's iana.toml gives ProtocolErrors to EVERY X.5.x and X.6.x code, 5.5.0 included.
_JUDGED_BY_CODE = frozenset({"Uncategorized", "ProtocolErrors"})


def classify_enhanced(enhanced: str | None) -> str | None:
    """The classification an RFC 3463 code implies for a 5xx that has no telling label,
    or None when the code does not blame the sender (the record suppresses). X.7.x
    (security or policy: spam blocks, reputation, authentication) is the mass-block case;
    X.6.x is the message's media or content (a broken template, LINE_TOO_LONG)."""
    if not enhanced:
        return None
    _cls, subject, detail = enhanced.split(".")
    if subject == "7":
        return "PolicyRelated"
    if subject == "6":
        return "ContentRelated"
    return _SENDER_SIDE.get((subject, detail))


def classification_of(event: Event, rules: RulesConfig) -> str:
    """The record's label; an Uncategorized one classified with [rules].classifier_files
    first, as kumod would have classified it (the event keeps the result as evidence)."""
    label = event.classification or "Uncategorized"
    if label == "Uncategorized" and rules.classifier is not None:
        label = rules.classifier.classify(event.code, event.enhanced_code, event.content)
        event.classification = label
    return label


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
    classification = classification_of(event, rules)
    if classification in _JUDGED_BY_CODE:
        return classify_enhanced(event.enhanced_code) is None
    return classification not in rules.ignore_classifications


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
