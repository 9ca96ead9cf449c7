"""An Event -> a Decision: suppress or not, with which reason and lifetime
(docs/rules.md).

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

import bisect
import functools
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


@functools.lru_cache(maxsize=1024)
def _decision(reason: str, ttl: int | None, threshold: int = 1, window: int = 0) -> Decision:
    """The (immutable) Decision of these values, made once: a frozen dataclass costs more
    to build than the rest of decide()."""
    return Decision(reason, ttl, threshold, window)


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
            return _decision(reason, rules.ttl[reason], rules.expiration_threshold, rules.expiration_window)
        return None
    elif kind == "Feedback":
        enabled = rules.feedback and (event.feedback_type or "").lower() in rules.feedback_types
    else:
        enabled = rules.admin_bounce
    return _decision(reason, rules.ttl[reason]) if enabled else None


# ---------------------------------------------------------------------- entries
# What one more event, manual add or import does to a pair's entry. Pure functions of the
# entry as it is and the event: the store only loads entries, calls these and writes back.

@dataclass(slots=True)
class Entry:
    """A pair's entry as the store keeps it (the pair itself is the key)."""
    reason: str
    source: str
    first_seen: int
    last_seen: int
    expires: int | None      # None = never
    count: int               # events seen
    evidence: tuple          # the last evidence, in the store's column order
    note: str | None
    updated_at: int


def expiry(when: int, ttl: int | None) -> int | None:
    """When a suppression that began at `when` ends (None = never)."""
    return None if ttl is None else when + ttl


def is_active(expires: int | None, now: int) -> bool:
    """An entry suppresses until its expiry; once passed it is gone, even before prune."""
    return expires is None or expires > now


def tombstoned(event_time: int, removed_at: int | None) -> bool:
    """An operator removed the pair at or after this event happened: the event must not
    re-add it (replaying old logs never undoes a removal); a later event does."""
    return removed_at is not None and event_time <= removed_at


def stale(expires: int | None, now: int) -> bool:
    """The suppression this event would start is already over: nothing to record."""
    return not is_active(expires, now)


def threshold_reached(times: list[int], ts: int, threshold: int, window: int) -> int | None:
    """The latest strike of a run of `threshold` strikes, all within `window` of each
    other, that includes the strike at `ts`; None if there is none. `times`: the pair's
    strikes of this reason within `window` of `ts`, ascending. Any window holding `ts`
    counts, not only the one ending at it: webhook retries and several nodes deliver
    events out of order, and the outcome must not depend on that order."""
    latest = None
    end = 0
    for start, first in enumerate(times):
        if first > ts:
            break
        while end < len(times) and times[end] < first + window:
            end += 1
        if end - start >= threshold and times[end - 1] >= ts:
            latest = times[end - 1]
    return latest


def _later(a: int | None, b: int | None) -> int | None:
    """The later of two expiry times, None meaning never."""
    if a is None or b is None:
        return None
    return max(a, b)


def _expiry_at_least(new: int | None, old: int | None) -> bool:
    if new is None:
        return True
    if old is None:
        return False
    return new >= old


# an operator's add or an import is not an event of the address: it counts once, as the
# entry's first; importing the same dump twice must not double the counts
_NOT_EVENTS = frozenset({"manual", "import"})


def record(entry: Entry | None, reason: str, source: str, when: int, expires: int | None,
           evidence: tuple, note: str | None, now: int) -> tuple[Entry, str, bool]:
    """One suppression of a pair that happened at `when`, on top of its entry (None, or
    one whose expiry has passed: it starts afresh). Returns (the new entry, the history
    action "add" or "refresh", whether what a snapshot shows changed).
    A refresh keeps the later expiry and the reason that brings it, the earliest
    first_seen, and the evidence of the newest event."""
    if entry is None or not is_active(entry.expires, now):
        return Entry(reason, source, when, when, expires, 1, evidence, note, now), "add", True
    new_expires = _later(entry.expires, expires)
    keep_reason = reason if _expiry_at_least(expires, entry.expires) else entry.reason
    first_seen = min(entry.first_seen, when)
    newer = when >= entry.last_seen
    refreshed = Entry(
        keep_reason, source if newer else entry.source, first_seen, max(entry.last_seen, when),
        new_expires, entry.count + (0 if source in _NOT_EVENTS else 1),
        evidence if newer else entry.evidence, entry.note if note is None else note, now)
    changed = (keep_reason, first_seen, new_expires) != (entry.reason, entry.first_seen, entry.expires)
    return refreshed, "refresh", changed


def qualifying_strikes(strikes: list[tuple[int, object]], key: object, ts: int, threshold: int,
                       window: int) -> list[int]:
    """A threshold rule: the entry is made of the *qualifying* strikes, those with at least
    `threshold` strikes (themselves included) in the `window` up to them. Each strike is
    applied once, when it first qualifies, so the same set of events gives the same entry
    in any arrival order (webhook retries, several nodes). `strikes`: (time, key) of the
    pair's strikes of this reason within `window` of the new one (`key` at `ts`),
    ascending. Returns the indexes of those that qualify because of the new one: only
    strikes at or after it can."""
    times = [at for at, _key in strikes]
    out = []
    for i, (at, strike_key) in enumerate(strikes):
        if at < ts:
            continue
        in_window = bisect.bisect_right(times, at) - bisect.bisect_right(times, at - window)
        # an older strike qualified before this one arrived unless it has just reached the count
        if in_window < threshold or (strike_key != key and in_window != threshold):
            continue
        out.append(i)
    return out
