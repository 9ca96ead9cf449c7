"""The rules about entries, as the pure functions the store calls: what an event, an
operator's add or an import does to a pair's entry, tombstones, stale events, expiry and
thresholds. No store involved."""

from exporter import rules
from exporter.rules import Entry

NOW = 1_800_000_000
DAY = 86400
EVIDENCE = ("Bounce", "id-1", 550, "5.1.1", "user unknown", "InvalidRecipient", "node")
NEWER = ("Bounce", "id-2", 550, "5.1.1", "still unknown", "InvalidRecipient", "node")


def entry(**fields) -> Entry:
    base = dict(reason="bounce", source="log", first_seen=NOW - 10 * DAY, last_seen=NOW - 10 * DAY,
                expires=NOW + 355 * DAY, count=1, evidence=EVIDENCE, note=None, updated_at=NOW - 10 * DAY)
    return Entry(**{**base, **fields})


def test_first_event_adds():
    new, action, shown = rules.record(None, "bounce", "log", NOW - DAY, NOW + 364 * DAY, EVIDENCE, None, NOW)
    assert (action, shown) == ("add", True)
    assert new == entry(first_seen=NOW - DAY, last_seen=NOW - DAY, expires=NOW + 364 * DAY, updated_at=NOW)


def test_an_expired_entry_starts_afresh():
    old = entry(expires=NOW - 1, count=7)
    new, action, _shown = rules.record(old, "bounce", "log", NOW - DAY, NOW + 364 * DAY, NEWER, None, NOW)
    assert action == "add" and new.count == 1 and new.first_seen == NOW - DAY


def test_refresh_keeps_the_later_expiry_earliest_first_seen_and_newest_evidence():
    new, action, shown = rules.record(entry(), "bounce", "webhook", NOW - DAY, NOW + 364 * DAY, NEWER, None, NOW)
    assert (action, shown) == ("refresh", True)
    assert (new.first_seen, new.last_seen, new.expires, new.count) == (NOW - 10 * DAY, NOW - DAY, NOW + 364 * DAY, 2)
    assert (new.evidence, new.source) == (NEWER, "webhook")


def test_an_older_event_counts_but_changes_nothing_a_snapshot_shows():
    current = entry(last_seen=NOW - DAY, first_seen=NOW - 2 * DAY, expires=NOW + 364 * DAY)
    new, action, shown = rules.record(current, "bounce", "log", NOW - 2 * DAY + 5, NOW + 363 * DAY, NEWER, None, NOW)
    assert (action, shown) == ("refresh", False)
    assert (new.evidence, new.expires, new.count, new.last_seen) == (EVIDENCE, NOW + 364 * DAY, 2, NOW - DAY)


def test_never_expiring_reason_wins_and_a_shorter_one_does_not_take_over():
    complaint = entry(reason="complaint", expires=None)
    new, _action, _shown = rules.record(complaint, "bounce", "log", NOW - DAY, NOW + 364 * DAY, NEWER, None, NOW)
    assert (new.reason, new.expires) == ("complaint", None)
    new, _action, shown = rules.record(entry(), "complaint", "log", NOW - DAY, None, NEWER, None, NOW)
    assert (new.reason, new.expires, shown) == ("complaint", None, True)


def test_operator_adds_do_not_count_as_events_and_keep_or_set_the_note():
    new, _a, _s = rules.record(entry(note="first"), "manual", "import", NOW, None, ("import",) + (None,) * 6,
                               None, NOW)
    assert (new.count, new.note) == (1, "first")
    new, _a, _s = rules.record(entry(), "manual", "manual", NOW, None, ("manual",) + (None,) * 6, "ticket", NOW)
    assert (new.count, new.note) == (1, "ticket")


def test_tombstone_blocks_events_up_to_and_including_the_removal():
    assert rules.tombstoned(NOW - 1, NOW) and rules.tombstoned(NOW, NOW)
    assert not rules.tombstoned(NOW + 1, NOW)
    assert not rules.tombstoned(NOW - DAY, None)


def test_stale_and_active_at_the_expiry_second():
    assert rules.is_active(None, NOW) and rules.is_active(NOW + 1, NOW)
    assert not rules.is_active(NOW, NOW)
    assert rules.stale(rules.expiry(NOW - 31 * DAY, 30 * DAY), NOW)
    assert rules.expiry(NOW, None) is None


def test_threshold_any_window_holding_the_strike_counts():
    times = [NOW - 5 * DAY, NOW - 4 * DAY, NOW - 3 * DAY]
    assert rules.threshold_reached(times, NOW - 5 * DAY, 3, 10 * DAY) == NOW - 3 * DAY
    assert rules.threshold_reached(times, NOW - 3 * DAY, 3, 10 * DAY) == NOW - 3 * DAY
    assert rules.threshold_reached(times, NOW - 4 * DAY, 3, DAY) is None
    assert rules.threshold_reached(times[:2], NOW - 4 * DAY, 3, 10 * DAY) is None
