"""policy_lua/suppression.lua in the stand-in: actions, keys, stamps, multi-recipient
messages, @domain and expired entries, lookup, RCPT TO, the suppression queue."""

import pytest

from lua_support import DAY, NOW, QUEUE, Policy, entry, write_snapshot

TEXT = "5.7.1 recipient suppressed for example.com: bounce since 2026-11-16"


@pytest.fixture
def snap(tmp_path):
    d = tmp_path / "snapshots"
    write_snapshot(d, "example.com", {
        "user@example.net": entry("bounce", NOW - 10 * DAY, NOW + 300 * DAY),
        "forever@example.net": entry("manual", NOW - 10 * DAY),
        "old@example.net": entry("bounce", NOW - 400 * DAY, NOW - 1),
        "exact@example.net": entry("bounce", NOW - 400 * DAY, NOW),
        "@bad.example": entry("manual", NOW - 10 * DAY),
        "also@bad.example": entry("bounce", NOW - 99 * DAY, NOW - 5),
    })
    return d


def policy(snap, **options):
    return Policy({"snapshot_dir": str(snap), **options})


# ----------------------------------------------------------------------- defaults & actions

def test_http_default_is_reject_with_default_text(snap):
    p = policy(snap)
    result, msg = p.http("user@example.net")
    assert result.rejected and result.code == 550
    assert result.text == TEXT
    assert msg.meta["x_suppression_domain"] == "example.com"


def test_clean_recipient_and_other_domain_pass(snap):
    p = policy(snap)
    assert p.http("other@example.net")[0].ok
    assert p.http("user@example.net", from_domain="another.example")[0].ok


def test_smtp_default_is_bounce_via_own_queue(snap):
    p = policy(snap)
    txn, msg = p.smtp("user@example.net")
    assert txn.accepted
    assert msg.meta["queue"] == QUEUE
    out = p.k.deliver_via_queue(msg)
    assert (out.kind, out.code, out.text, out.protocol) == ("Bounce", 550, TEXT, "Lua")


def test_smtp_clean_message_untouched(snap):
    p = policy(snap)
    txn, msg = p.smtp("fine@example.net")
    assert txn.accepted and "queue" not in msg.meta
    assert p.k.deliver_via_queue(msg).kind == "Smtp"


def test_smtp_reject_rejects_transaction(snap):
    p = policy(snap, smtp_action="reject")
    txn, _ = p.smtp("user@example.net")
    assert txn.rejected and txn.code == 550 and txn.text == TEXT


def test_drop_action(snap):
    p = policy(snap, smtp_action="drop", http_action="drop")
    txn, msg = p.smtp("user@example.net")
    assert txn.accepted and msg.meta["queue"] == "null"
    assert p.k.deliver_via_queue(msg).kind == "Discarded"
    result, msg = p.http("user@example.net")
    assert result.ok and msg.meta["queue"] == "null"


def test_shadow_action_delivers_marks_and_logs(snap):
    p = policy(snap, smtp_action="shadow", http_action="shadow")
    result, msg = p.http("user@example.net")
    assert result.ok
    assert msg.meta["x_suppressed"] == "bounce"
    assert "queue" not in msg.meta and msg.recipients == ["user@example.net"]
    info = p.k.logged("info")
    assert len(info) == 1 and "user@example.net" in info[0] and "example.com" in info[0]
    result, msg = p.http("clean@example.net")
    assert result.ok and "x_suppressed" not in msg.meta
    assert len(p.k.logged("info")) == 1


def test_custom_code_and_text(snap):
    p = policy(snap, reject_code=554, reject_text="5.7.1 no mail to {recipient} from {domain} ({reason}, {since})")
    result, _ = p.http("User@Example.net")
    assert result.code == 554
    assert result.text == "5.7.1 no mail to User@Example.net from example.com (bounce, 2026-11-16)"


def test_custom_queue_and_domain_meta(snap):
    p = policy(snap, queue="held.mine", domain_meta="x_dom")
    txn, msg = p.smtp("user@example.net")
    assert msg.meta["queue"] == "held.mine" and msg.meta["x_dom"] == "example.com"
    out = p.k.deliver_via_queue(msg)
    assert out.kind == "Bounce" and out.code == 550


# ----------------------------------------------------------------------- keys and entries

def test_recipient_and_domain_normalized(snap):
    p = policy(snap)
    assert p.http("USER@Example.NET", from_domain="EXAMPLE.com.")[0].rejected
    msg = p.message("x@example.net", from_header="News <news@EXAMPLE.COM.>")
    p.k.http_inject(msg)
    assert msg.meta["x_suppression_domain"] == "example.com"


def test_domain_entry_suppresses_whole_recipient_domain(snap):
    p = policy(snap)
    result, _ = p.http("anyone@Bad.Example")
    assert result.rejected and "manual" in result.text
    # a recipient's own expired entry does not hide the domain entry
    assert p.http("also@bad.example")[0].rejected
    assert p.http("anyone@notbad.example")[0].ok
    assert p.http("anyone@sub.bad.example")[0].ok


def test_expired_entries_do_not_suppress(snap):
    p = policy(snap)
    assert p.http("old@example.net")[0].ok
    assert p.http("exact@example.net")[0].ok, "expires <= now is expired"
    assert p.http("forever@example.net")[0].rejected, "no expires = never"


def test_entry_expires_while_running(snap):
    p = policy(snap)
    write_snapshot(snap, "example.com", {"soon@example.net": entry("bounce", NOW - DAY, NOW + 60)})
    assert p.http("soon@example.net")[0].rejected
    p.clock.advance(61)
    assert p.http("soon@example.net")[0].ok, "expired entries stop suppressing before the next export"


# ----------------------------------------------------------------------- sending domain

def test_from_header_is_default_source(snap):
    p = policy(snap)
    result, msg = p.http("user@example.net", from_domain="example.com", sender="b@bounce.other.example")
    assert result.rejected
    result, msg = p.http("user@example.net", from_header="x@other.example", sender="b@example.com")
    assert result.ok and msg.meta["x_suppression_domain"] == "other.example"


def test_from_header_falls_back_to_sender(snap):
    p = policy(snap)
    result, msg = p.http("user@example.net", from_header=False, sender="b@Example.COM")
    assert result.rejected and msg.meta["x_suppression_domain"] == "example.com"
    # unparseable From raises in kumod: fall back, no error escapes
    result, msg = p.http("user@example.net", from_header="garbage without address", sender="b@example.com")
    assert result.rejected
    # several From addresses: .domain raises; fall back too
    result, msg = p.http("user@example.net", from_header="a@x.example, b@y.example", sender="b@example.com")
    assert result.rejected


def test_sender_source(snap):
    p = policy(snap, sending_domain="sender")
    assert p.http("user@example.net", from_domain="other.example", sender="b@example.com")[0].rejected
    assert p.http("user@example.net", from_domain="example.com", sender="b@other.example")[0].ok


def test_meta_source(snap):
    p = policy(snap, sending_domain="meta:tenant_domain")
    result, msg = p.http("user@example.net", from_domain="other.example", meta={"tenant_domain": "Example.com"})
    assert result.rejected and msg.meta["x_suppression_domain"] == "example.com"
    result, msg = p.http("user@example.net", from_domain="example.com")
    assert result.ok and "x_suppression_domain" not in msg.meta


@pytest.mark.parametrize("hostile", ["../snapshots/example.com", "example.com/../example.com", "a/b",
                                     ".example.com", "x\x00y", "ex_ample.com", "-x.example"])
def test_hostile_sending_domains_never_touch_files(snap, hostile):
    p = policy(snap, sending_domain="meta:d")
    # '../snapshots/example.com' would even reach a real snapshot if it were used as a path
    result, _ = p.http("user@example.net", meta={"d": hostile})
    assert result.ok
    assert p.k.io_paths == [], "no file IO for a sending domain that is not a plain hostname"
    assert p.k.errors_logged == []
    assert p.http("user@example.net", meta={"d": "example.com"})[0].rejected


# ----------------------------------------------------------------------- multi-recipient

def test_partial_suppression_removes_and_lists(snap):
    p = policy(snap)
    for action_flow in ("smtp", "http"):
        flow = getattr(p, action_flow)
        r, msg = flow(["ok1@example.net", "user@example.net", "x@bad.example", "ok2@example.net"])
        assert (r.accepted if action_flow == "smtp" else r.ok)
        assert msg.recipients == ["ok1@example.net", "ok2@example.net"]
        listed = msg.meta["x_suppressed_recipients"]
        assert [(e["recipient"], e["reason"]) for e in listed] == [
            ("user@example.net", "bounce"), ("x@bad.example", "manual")]
        assert "queue" not in msg.meta


def test_all_suppressed_applies_action(snap):
    p = policy(snap)
    result, msg = p.http(["user@example.net", "forever@example.net"])
    assert result.rejected and "bounce" in result.text
    txn, msg = p.smtp(["user@example.net", "forever@example.net"])
    assert txn.accepted and msg.meta["queue"] == QUEUE
    assert msg.recipients == ["user@example.net", "forever@example.net"]


def test_shadow_multi_keeps_recipients(snap):
    p = policy(snap, http_action="shadow")
    result, msg = p.http(["ok@example.net", "user@example.net"])
    assert result.ok and msg.recipients == ["ok@example.net", "user@example.net"]
    assert msg.meta["x_suppressed"] == "bounce"
    assert msg.meta["x_suppressed_recipients"][0]["recipient"] == "user@example.net"


# ----------------------------------------------------------------------- lookup

def test_lookup_api(snap):
    p = policy(snap)
    assert p.lookup("user@example.net", "example.com") == {
        "reason": "bounce", "since": NOW - 10 * DAY, "expires": NOW + 300 * DAY}
    assert p.lookup(" <FOREVER@example.net> ", "Example.COM.") == {"reason": "manual", "since": NOW - 10 * DAY}
    assert p.lookup("who@bad.example", "example.com")["reason"] == "manual"
    assert p.lookup("nobody@example.net", "example.com") is None
    assert p.lookup("old@example.net", "example.com") is None
    assert p.lookup("user@example.net", "../etc") is None
    assert p.lookup(None, "example.com") is None
    assert p.lookup("user@example.net", 42) is None


def test_lookup_returns_a_plain_table(snap):
    p = policy(snap)
    kind = p.k.eval("(function() local e = sup:lookup('user@example.net', 'example.com'); "
                    "e.reason = 'changed'; return type(e) .. ':' .. rawget(e, 'reason') end)()")
    assert kind == "table:changed"
    assert p.lookup("user@example.net", "example.com")["reason"] == "bounce"


# ----------------------------------------------------------------------- MAIL FROM / RCPT TO

def test_rcpt_to_rejects_only_that_recipient(snap):
    p = Policy({"snapshot_dir": str(snap), "sending_domain": "sender"}, rcpt_hooks=True)
    results, txn = p.k.smtp_session("bounces@Example.com", ["ok@example.net", "user@example.net", "a@bad.example"])
    assert [r.status for r in results] == ["accepted", "rejected", "rejected"]
    assert results[1].code == 550 and results[1].text == TEXT
    assert txn.accepted and txn.messages[0].recipients == ["ok@example.net"]


def test_rcpt_to_inactive_without_sender_source(snap):
    p = Policy({"snapshot_dir": str(snap)}, rcpt_hooks=True)
    results, txn = p.k.smtp_session("bounces@example.com", ["user@example.net"],
                                    from_header="News <news@example.com>")
    assert results[0].status == "accepted"
    assert txn.accepted and txn.messages[0].meta["queue"] == QUEUE  # check_smtp still acts


def test_rcpt_to_other_sender_domain_passes(snap):
    p = Policy({"snapshot_dir": str(snap), "sending_domain": "sender"}, rcpt_hooks=True)
    results, _ = p.k.smtp_session("bounces@other.example", ["user@example.net"])
    assert results[0].status == "accepted"
    results, _ = p.k.smtp_session("<>", ["user@example.net"])
    assert results[0].status == "accepted"


def test_rcpt_to_shadow_does_not_reject(snap):
    p = Policy({"snapshot_dir": str(snap), "sending_domain": "sender", "smtp_action": "shadow"},
               rcpt_hooks=True)
    results, _ = p.k.smtp_session("bounces@example.com", ["user@example.net"])
    assert results[0].status == "accepted"
    assert any("user@example.net" in line for line in p.k.logged("info"))


# ----------------------------------------------------------------------- the queue

def test_get_queue_config_chain_continues_for_other_queues(snap):
    after = """
    local kumo = require 'kumo'
    kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
      return kumo.make_queue_config { egress_pool = 'from-second-handler' }
    end)
    """
    p = Policy({"snapshot_dir": str(snap)}, after=after)
    # another queue: our handler must return NOTHING so the second handler answers
    out = p.k.deliver_via_queue(p.message("someone@gmail.com"))
    assert out.kind == "Smtp", out
    assert p.k.eval("require('kumo')") is not None
    # our queue still goes to our constructor
    txn, msg = p.smtp("user@example.net")
    assert p.k.deliver_via_queue(msg).kind == "Bounce"


def test_get_queue_config_handler_returns_no_value_for_other_queues(snap):
    p = policy(snap)
    count = p.k.eval("""(function()
      local kumo = require 'kumo'
      return 0 end)()""")
    assert count == 0
    # call the registered handler directly through the stand-in's chain
    status = p.k._S.fire_event("get_queue_config", "gmail.com", None, None, None)
    assert status == "none", "a non-owning handler must return nothing (not nil)"


def test_bounce_without_stashed_text_still_bounces(snap):
    p = policy(snap)
    msg = p.message("user@example.net", meta={"queue": QUEUE, "x_suppression_domain": "example.com"})
    out = p.k.deliver_via_queue(msg)
    assert out.kind == "Bounce" and out.code == 550 and "example.com" in out.text


def test_registers_only_its_own_events(snap):
    p = policy(snap)
    # init.lua registered message_received/http_generated; the module: queue + constructor
    assert p.k.handler_count("get_queue_config") == 1
    assert p.k.handler_count("make." + QUEUE) == 1
    assert p.k.handler_count("smtp_server_rcpt_to") == 0


def test_two_instances_need_distinct_names_and_queues(snap):
    p = policy(snap)
    with pytest.raises(Exception, match="already"):
        p.k.execute("require('suppression'):new{ snapshot_dir = '/tmp' }")
    with pytest.raises(Exception, match="queue"):
        p.k.execute("require('suppression'):new{ snapshot_dir = '/tmp', name = 'two' }")
    p.k.execute("sup2 = require('suppression'):new{ snapshot_dir = '/tmp', name = 'two', queue = 'held.two' }")
    assert p.k.handler_count("get_queue_config") == 2


# ----------------------------------------------------------------------- older kumod, aliases, limits

def test_kumod_without_recipient_list_still_checks(snap):
    """msg:recipient_list() exists since kumod 2025.12.02; before it, msg:recipient()."""
    p = policy(snap)
    check = p.k.eval("""function(msg)
      local legacy = setmetatable({}, {__index = function(_, key)
        if key == 'recipient_list' then error('attempt to get an unknown field') end
        return function(_, ...) return msg[key](msg, ...) end
      end})
      sup:check_smtp(legacy)
    end""")
    for _ in range(2):
        msg = p.message(["user@example.net"])
        outcome = p.k.pcall(check, msg.ud)
        assert outcome is True, outcome
        assert msg.meta["queue"] == QUEUE
    assert p.k.errors_logged == []


def test_aliases_map_the_return_path_like_the_exporter(snap):
    """With sending_domain = "sender", [keys.aliases] maps the return-path domain, as the
    exporter does for OOB records; the stamped meta carries the mapped key."""
    aliases = {"Bounce.Example.com": "example.com"}
    p = policy(snap, sending_domain="sender", aliases=aliases)
    result, msg = p.http("user@example.net", from_domain="x.example", sender="b@bounce.example.com")
    assert result.rejected and msg.meta["x_suppression_domain"] == "example.com"
    # From-header mode: a From domain is never mapped, the sender fallback is
    p = policy(snap, aliases=aliases)
    assert p.http("user@example.net", from_header="n@bounce.example.com")[0].ok
    assert p.http("user@example.net", from_header=False, sender="b@bounce.example.com")[0].rejected
    # and RCPT TO with the sender source
    r = Policy({"snapshot_dir": str(snap), "sending_domain": "sender", "aliases": aliases}, rcpt_hooks=True)
    results, _ = r.k.smtp_session("b@bounce.example.com", ["user@example.net"])
    assert results[0].status == "rejected"


def test_overlong_sending_domains_are_neither_cached_nor_stamped(snap):
    p = policy(snap, sending_domain="meta:d")
    for i in range(50):
        result, msg = p.http("user@example.net", meta={"d": f"{i}" + "x" * 20000})
        assert result.ok and "x_suppression_domain" not in msg.meta
    assert p.k.eval("sup.snapshots.npaths()") == 0


def test_reject_texts_follow_domain_reason_day_and_recipient(tmp_path):
    d = tmp_path / "snaps"
    write_snapshot(d, "example.com", {"a@example.net": entry("bounce", NOW - 10 * DAY),
                                      "b@example.net": entry("bounce", NOW - 3 * DAY),
                                      "c@example.net": entry("complaint", NOW - 3 * DAY)})
    write_snapshot(d, "shop.example", {"a@example.net": entry("bounce", NOW - 10 * DAY)})
    p = Policy({"snapshot_dir": str(d)})
    texts = [p.http(r, from_domain=dom)[0].text for r, dom in
             [("a@example.net", "example.com"), ("b@example.net", "example.com"),
              ("c@example.net", "example.com"), ("a@example.net", "shop.example"),
              ("a@example.net", "example.com")]]
    assert texts == ["5.7.1 recipient suppressed for example.com: bounce since 2026-11-16",
                     "5.7.1 recipient suppressed for example.com: bounce since 2026-11-23",
                     "5.7.1 recipient suppressed for example.com: complaint since 2026-11-23",
                     "5.7.1 recipient suppressed for shop.example: bounce since 2026-11-16",
                     "5.7.1 recipient suppressed for example.com: bounce since 2026-11-16"]
    p = Policy({"snapshot_dir": str(d), "reject_text": "5.1.1 {recipient} is suppressed ({reason})"})
    assert p.http("a@example.net")[0].text == "5.1.1 a@example.net is suppressed (bounce)"
    assert p.http("b@example.net")[0].text == "5.1.1 b@example.net is suppressed (bounce)"
