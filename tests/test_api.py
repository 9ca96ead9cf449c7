"""The HTTP API of section "HTTP API" in docs/http-api.md, over real loopback HTTP against
`kumo-suppress serve`: every route, scope and error. One server for the module (each test
uses its own recipients), and one without write tokens."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import Install  # noqa: E402
from test_webhook import TOKEN, Server  # noqa: E402

READ = "panel-token-0123456789"
WRITE = "support-token-0123456789"
TOKENS = [{"name": "panel", "token": READ, "scope": "read"},
          {"name": "support", "token": WRITE, "scope": "write"}]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    install = Install(tmp_path_factory.mktemp("api"))
    install.ok("init")
    install.configure(api={"tokens": TOKENS})
    srv = Server(install)
    yield srv
    assert srv.stop() == 0


def call(srv: Server, method: str, path: str, body=None, token: str | None = WRITE):
    data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
    status, raw, resp = srv.request(method, path, data, token=token)
    answer = json.loads(raw) if raw and resp.getheader("Content-Type", "").startswith("application/json") else raw
    return status, answer


def pair(domain: str, recipient: str) -> str:
    return f"/v1/suppressions/{quote(domain, safe='')}/{quote(recipient, safe='')}"


# ---------------------------------------------------------------------------- one pair
def test_put_get_delete_and_history(api):
    path = pair("Example.COM.", "<Round@Example.NET>")
    status, entry = call(api, "PUT", path, {"note": "ticket 4711"})
    assert status == 200, entry
    assert entry["recipient"] == "round@example.net" and entry["domain"] == "example.com"
    assert entry["reason"] == "manual" and entry["source"] == "api" and entry["expires"] is None
    status, got = call(api, "GET", pair("example.com", "round@example.net"), token=READ)
    assert status == 200 and got == entry
    r = api.install.subprocess("check", "round@example.net", "--domain", "example.com", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["source"] == "api"

    status, answer = call(api, "DELETE", path, {"note": "customer asked"})
    assert status == 200 and answer["removed"] is True and answer["recipient"] == "round@example.net"
    status, answer = call(api, "GET", path, token=READ)
    assert status == 404 and answer["error"] == "not suppressed"
    status, answer = call(api, "DELETE", path)
    assert status == 404, "a second remove finds nothing and writes nothing"

    status, history = call(api, "GET", pair("example.com", "round@example.net") + "/history", token=READ)
    assert status == 200
    items = history["items"]
    assert [i["action"] for i in items] == ["add", "remove"]
    assert [i["actor"] for i in items] == ["support", "support"]
    assert [i["note"] for i in items] == ["ticket 4711", "customer asked"]
    assert items[0]["at"] <= items[1]["at"]
    # a tombstone: an older event does not re-add the pair
    old = {"type": "Bounce", "id": "m-old", "sender": "b@example.com", "recipient": "round@example.net",
           "timestamp": int(time.time()) - 3600, "response": {"code": 550, "content": "5.1.1 unknown"},
           "headers": {"From": "news@example.com"}, "queue": "example.net"}
    assert api.post(old)[0] == 200
    assert call(api, "GET", path, token=READ)[0] == 404


def test_put_refresh_ttl_and_reason(api):
    path = pair("example.com", "ttl@example.net")
    before = int(time.time())
    status, entry = call(api, "PUT", path, {"reason": "complaint", "ttl": "30d"})
    assert status == 200, entry
    assert entry["reason"] == "complaint"
    assert before + 30 * 86400 <= entry["expires"] <= int(time.time()) + 30 * 86400
    status, entry = call(api, "PUT", path, {"ttl": "never"})
    assert status == 200 and entry["expires"] is None
    status, entry = call(api, "PUT", pair("example.com", "default-ttl@example.net"), {"reason": "bounce"})
    assert status == 200 and entry["expires"] - entry["first_seen"] == 365 * 86400, "[rules.ttl] bounce"
    status, entry = call(api, "PUT", pair("example.com", "@whole.example"))
    assert status == 200 and entry["recipient"] == "@whole.example"
    status, got = call(api, "GET", pair("example.com", "anyone@whole.example"), token=READ)
    assert status == 200 and got["recipient"] == "@whole.example"


@pytest.mark.parametrize("path_parts, body, field", [
    (("example.com", "bad-reason@example.net"), {"reason": "because"}, "reason"),
    (("example.com", "zero-ttl@example.net"), {"ttl": 0}, "ttl"),
    (("example.com", "neg-ttl@example.net"), {"ttl": "-5d"}, "ttl"),
    (("example.com", "junk-ttl@example.net"), {"ttl": "soon"}, "ttl"),
    (("example.com", "list-ttl@example.net"), {"ttl": [1]}, "ttl"),
    (("example.com", "note@example.net"), {"note": 42}, "note"),
    (("example.com", "colour@example.net"), {"colour": "red"}, "colour"),
    (("example.com", "Some One <x@example.net>"), {}, "recipient"),
    (("example.com", "no-at-sign"), {}, "recipient"),
    (("*", "star@example.net"), {}, "domain"),
    (("example.com", "array@example.net"), [1, 2], "body"),
    (("example.com", "notjson@example.net"), b"{nope", "not JSON"),
])
def test_put_refuses_and_writes_nothing(api, path_parts, body, field):
    status, answer = call(api, "PUT", pair(*path_parts), body)
    assert status == 400, answer
    assert field in answer["error"]
    with_ok_key = "star@example.net" if path_parts[0] == "*" else None
    if with_ok_key is None and "@" in path_parts[1] and "<" not in path_parts[1]:
        assert call(api, "GET", pair(*path_parts), token=READ)[0] == 404
        assert call(api, "GET", pair(*path_parts) + "/history", token=READ)[0] == 404


def test_read_routes_refuse_bad_keys(api):
    assert call(api, "GET", pair("example.com", "not-an-address"), token=READ)[0] == 400
    assert call(api, "GET", pair("exa mple.com", "a@example.net"), token=READ)[0] == 400
    assert call(api, "GET", pair("example.com", "x@example.net") + "/history", token=READ)[0] == 404
    assert call(api, "DELETE", pair("example.com", "Some One <x@example.net>"))[0] == 400


# ---------------------------------------------------------------------------- tokens and scopes
def test_scopes(api):
    path = pair("example.com", "scope@example.net")
    status, answer = call(api, "PUT", path, token=READ)
    assert status == 403 and "scope" in answer["error"]
    assert call(api, "PUT", path, token=None)[0] == 401
    assert call(api, "PUT", path, token="not-a-token-at-all")[0] == 403
    assert call(api, "PUT", path, token=TOKEN)[0] == 403, "the webhook token does not write"
    assert call(api, "DELETE", path, token=READ)[0] == 403
    assert call(api, "POST", "/v1/suppressions/bulk", [], token=READ)[0] == 403
    assert call(api, "GET", path, token=READ)[0] == 404          # nothing was written
    assert call(api, "PUT", path)[0] == 200
    for token in (READ, WRITE, TOKEN):
        assert call(api, "GET", path, token=token)[0] == 200
        assert call(api, "GET", "/v1/summary", token=token)[0] == 200
        assert call(api, "GET", "/v1/suppressions?limit=1", token=token)[0] == 200
    for route in (path, path + "/history", "/v1/summary", "/v1/suppressions"):
        assert call(api, "GET", route, token=None)[0] == 401
        assert call(api, "GET", route, token="wrong-wrong-wrong")[0] == 403
    # kumod's hook posts with the webhook token only
    assert api.post([], token=READ)[0] == 403
    assert api.post([])[0] == 200


def test_no_token_is_ever_stored_or_logged(api):
    assert call(api, "PUT", pair("example.com", "secret@example.net"), {"note": "x"})[0] == 200
    assert call(api, "GET", pair("example.com", "secret@example.net"), token=READ)[0] == 200
    output = api.output()
    stored = b"".join(p.read_bytes() for p in api.install.db.parent.glob(api.install.db.name + "*"))
    for token in (READ, WRITE, TOKEN):
        assert token not in output
        assert token.encode() not in stored


def test_writes_need_a_configured_write_token(tmp_path):
    install = Install(tmp_path)
    install.ok("init")
    srv = Server(install)            # [webhook] token only
    try:
        status, answer = call(srv, "PUT", pair("example.com", "w@example.net"), token=TOKEN)
        assert status == 403 and "none is configured" in answer["error"]
        assert call(srv, "PUT", pair("example.com", "w@example.net"), token=None)[0] == 403
        assert call(srv, "GET", pair("example.com", "w@example.net"), token=TOKEN)[0] == 404
    finally:
        assert srv.stop() == 0


# ---------------------------------------------------------------------------- many
def test_bulk_is_all_or_none(api):
    items = [{"recipient": f"bulk{i}@example.net", "domain": "bulk.example"} for i in range(5)]
    bad = [*items[:2], {"recipient": "bulk-bad@example.net", "domain": "bulk.example", "ttl": "0s"}, *items[2:]]
    status, answer = call(api, "POST", "/v1/suppressions/bulk", bad)
    assert status == 400 and "items[2].ttl" in answer["error"], answer
    assert call(api, "GET", pair("bulk.example", "bulk0@example.net"), token=READ)[0] == 404
    status, answer = call(api, "POST", "/v1/suppressions/bulk",
                          [items[0], {"recipient": "x@example.net"}])
    assert status == 400 and "items[1].domain" in answer["error"]
    status, answer = call(api, "POST", "/v1/suppressions/bulk", {"recipient": "x@example.net"})
    assert status == 400 and "array" in answer["error"]
    assert call(api, "POST", "/v1/suppressions/bulk", b"")[0] == 400
    items[4]["reason"], items[4]["ttl"], items[4]["note"] = "complaint", "never", "imported"
    status, answer = call(api, "POST", "/v1/suppressions/bulk", items)
    assert status == 200 and answer == {"added": 5}
    status, entry = call(api, "GET", pair("bulk.example", "bulk4@example.net"), token=READ)
    assert entry["reason"] == "complaint" and entry["source"] == "api"
    status, history = call(api, "GET", pair("bulk.example", "bulk4@example.net") + "/history", token=READ)
    assert history["items"][-1]["actor"] == "support"


def test_listing_pages_through_everything_once(api):
    domains = ["page-a.example", "page-b.example", "page-c.example"]
    items = [{"recipient": f"p{i:02d}@example.net", "domain": d} for d in domains for i in range(9)]
    items.append({"recipient": "everywhere@example.org", "domain": "page-a.example", "reason": "bounce"})
    items.append({"recipient": "everywhere@example.org", "domain": "page-c.example"})
    assert call(api, "POST", "/v1/suppressions/bulk", items)[0] == 200

    seen, cursor, pages = [], None, 0
    while pages < 20:
        query = "limit=4" + (f"&cursor={quote(cursor)}" if cursor else "")
        status, page = call(api, "GET", f"/v1/suppressions?domain=page-b.example&{query}", token=READ)
        assert status == 200, page
        seen += [(e["domain"], e["recipient"]) for e in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == [("page-b.example", f"p{i:02d}@example.net") for i in range(9)] and pages == 3

    status, page = call(api, "GET", "/v1/suppressions?recipient=Everywhere%40Example.org", token=READ)
    assert [e["domain"] for e in page["items"]] == ["page-a.example", "page-c.example"]
    assert page["next"] is None
    status, page = call(api, "GET", "/v1/suppressions?recipient=everywhere%40example.org&reason=bounce", token=READ)
    assert [e["domain"] for e in page["items"]] == ["page-a.example"]
    status, page = call(api, "GET", "/v1/suppressions?domain=page-a.example&source=api&limit=1000", token=READ)
    assert len(page["items"]) == 10 and page["next"] is None


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"), ("cursor=nonsense", "cursor"),
    ("reason=because", "reason"), ("domain=a%20b", "domain"), ("recipient=Some%20One", "recipient"),
    ("source=somewhere", "source"), ("colour=red", "colour"), ("limit=1&limit=2", "limit"),
])
def test_listing_refuses_bad_parameters(api, query, field):
    status, answer = call(api, "GET", f"/v1/suppressions?{query}", token=READ)
    assert status == 400 and field in answer["error"], answer


def test_summary_counts_active_entries(api):
    before = call(api, "GET", "/v1/summary", token=READ)[1]
    assert call(api, "PUT", pair("summary.example", "s1@example.net"), {"reason": "complaint"})[0] == 200
    assert call(api, "PUT", pair("summary.example", "s2@example.net"))[0] == 200
    status, after = call(api, "GET", "/v1/summary", token=READ)
    assert status == 200
    assert after["total"] == before["total"] + 2
    assert after["domains"]["summary.example"] == 2
    assert after["reasons"]["complaint"] == before["reasons"].get("complaint", 0) + 1


# ---------------------------------------------------------------------------- description
def test_openapi_describes_every_route(api):
    status, spec = call(api, "GET", "/v1/openapi.json", token=None)
    assert status == 200 and spec["openapi"].startswith("3.")
    paths = spec["paths"]
    assert set(paths["/v1/suppressions/{domain}/{recipient}"]) >= {"get", "put", "delete"}
    for route in ("/v1/suppressions", "/v1/suppressions/bulk", "/v1/suppressions/{domain}/{recipient}/history",
                  "/v1/summary", "/v1/events", "/healthz", "/metrics"):
        assert route in paths


def test_errors_are_json_everywhere(api):
    for method, path in (("GET", "/nope"), ("PATCH", pair("example.com", "a@example.net")),
                         ("GET", "/v1/events")):
        status, answer = call(api, method, path, token=READ)
        assert status in (404, 405) and isinstance(answer, dict) and answer["error"]
