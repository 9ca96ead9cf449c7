"""The HTTP API for the panel and support tools: routes under /v1/suppressions and
/v1/summary, served by server.py's app."""

from __future__ import annotations

from aiohttp import web

from .keys import domain_key, recipient_key
from .server import SERVICE, Reject, json_response
from .store import now_ts

PAIR = "/v1/suppressions/{domain}/{recipient}"


def _pair(request: web.Request) -> tuple[str, str]:
    dom_raw, rcpt_raw = request.match_info["domain"], request.match_info["recipient"]
    dom, rcpt = domain_key(dom_raw), recipient_key(rcpt_raw)
    if dom is None:
        raise Reject(400, f"domain: {dom_raw!r} is not a domain")
    if rcpt is None:
        raise Reject(400, f"recipient: {rcpt_raw!r} is not an address or @domain")
    return dom, rcpt


async def get_pair(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.auth.read(request)
    dom, rcpt = _pair(request)
    entry = await service.stores.run(lambda store: store.get(rcpt, dom, now_ts()))
    if entry is None:
        raise Reject(404, "not suppressed", recipient=rcpt, domain=dom)
    return json_response(entry)


async def incomplete_pair(request: web.Request) -> web.Response:
    raise Reject(400, "expected /v1/suppressions/{domain}/{recipient}")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get(PAIR, get_pair, name="suppression")
    router.add_get("/v1/suppressions/{domain}", incomplete_pair, name="incomplete")
