"""The HTTP API for the panel and support tools, served by server.py's app.

    GET    /v1/suppressions/{domain}/{recipient}           read    the entry, 404 if not suppressed
    PUT    /v1/suppressions/{domain}/{recipient}           write   add or refresh (source "api")
    DELETE /v1/suppressions/{domain}/{recipient}           write   remove, leaving a tombstone
    GET    /v1/suppressions/{domain}/{recipient}/history   read    every change, oldest first
    GET    /v1/suppressions?domain=&recipient=&...         read    a page of entries and the next cursor
    POST   /v1/suppressions/bulk                           write   add many, all or none
    GET    /v1/summary                                     read    active entries by domain and reason
    GET    /v1/openapi.json                                -       the OpenAPI description (openapi.json)

Every route is a thin layer over exporter.SuppressionList, the library the CLI calls: it
normalizes and validates (its ArgumentError naming the argument, or the bulk item's
index, becomes a 400 and nothing is written), keeps tombstones and history. The actor of a change
is the name of the [api] token that made it. Work on the store runs in the server's pool
threads (ReadStores), never on the event loop.
"""

from __future__ import annotations

import json
from importlib import resources

from aiohttp import web

from .facade import ArgumentError, SuppressionList
from .keys import operator_domain, operator_recipient
from .server import SERVICE, Reject, json_response

PAIR = "/v1/suppressions/{domain}/{recipient}"
LIST_FILTERS = ("domain", "recipient", "reason", "source")
PUT_FIELDS = ("reason", "ttl", "note")
DEFAULT_LIMIT = 100


async def _in_pool(request: web.Request, work):
    """`work(SuppressionList)` in a pool thread; the library's ArgumentError is the 400 it
    names (any other error stays a 500: it is a bug, not bad input)."""
    service = request.app[SERVICE]
    config = service.config

    def call(store):
        try:
            return work(SuppressionList(config, store))
        except ArgumentError as err:
            raise Reject(400, str(err)) from None
    return await service.stores.run(call)


def _pair(request: web.Request) -> tuple[str, str]:
    return request.match_info["recipient"], request.match_info["domain"]


def _not_suppressed(recipient: str, domain: str) -> Reject:
    return Reject(404, "not suppressed", recipient=operator_recipient(recipient), domain=operator_domain(domain))


async def _object_body(request: web.Request, fields: tuple[str, ...]) -> dict:
    """An optional JSON object body with only `fields`; {} when there is none."""
    body = await request.app[SERVICE].json_body(request, required=False)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise Reject(400, f"body: must be a JSON object with any of {', '.join(fields)}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise Reject(400, f"{unknown[0]}: unknown field (expected any of {', '.join(fields)})")
    return body


async def get_pair(request: web.Request) -> web.Response:
    request.app[SERVICE].auth.read(request)
    recipient, domain = _pair(request)
    entry = await _in_pool(request, lambda sl: sl.check(recipient, domain))
    if entry is None:
        raise _not_suppressed(recipient, domain)
    return json_response(entry)


async def put_pair(request: web.Request) -> web.Response:
    caller = request.app[SERVICE].auth.write(request)
    recipient, domain = _pair(request)
    body = await _object_body(request, PUT_FIELDS)
    entry = await _in_pool(request, lambda sl: sl.add(
        recipient, domain, reason=body.get("reason", "manual"), ttl=body.get("ttl"), note=body.get("note"),
        source="api", actor=caller.name))
    return json_response(entry)


async def delete_pair(request: web.Request) -> web.Response:
    caller = request.app[SERVICE].auth.write(request)
    recipient, domain = _pair(request)
    body = await _object_body(request, ("note",))
    removed = await _in_pool(request, lambda sl: sl.remove(recipient, domain, body.get("note"), actor=caller.name,
                                                           source="api"))
    if not removed:
        raise _not_suppressed(recipient, domain)
    return json_response({"removed": True, "recipient": operator_recipient(recipient),
                          "domain": operator_domain(domain)})


async def get_history(request: web.Request) -> web.Response:
    request.app[SERVICE].auth.read(request)
    recipient, domain = _pair(request)
    items = await _in_pool(request, lambda sl: sl.history(recipient, domain))
    if not items:
        raise Reject(404, "no history for this pair", recipient=operator_recipient(recipient),
                     domain=operator_domain(domain))
    return json_response({"items": items})


async def list_entries(request: web.Request) -> web.Response:
    request.app[SERVICE].auth.read(request)
    query = request.query
    unknown = sorted(set(query) - {*LIST_FILTERS, "limit", "cursor"})
    if unknown:
        raise Reject(400, f"{unknown[0]}: unknown query parameter (expected any of "
                          f"{', '.join(LIST_FILTERS)}, limit, cursor)")
    for name in query:
        if len(query.getall(name)) > 1:
            raise Reject(400, f"{name}: given more than once")
    filters = {name: query[name] for name in LIST_FILTERS if name in query}
    raw_limit = query.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw_limit)
    except ValueError:
        raise Reject(400, f"limit: {raw_limit!r} is not a whole number") from None
    cursor = query.get("cursor") or None
    items, following = await _in_pool(request, lambda sl: sl.page(**filters, limit=limit, cursor=cursor))
    return json_response({"items": items, "next": following})


async def bulk_add(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    caller = service.auth.write(request)
    items = await service.json_body(request, required=True)
    if not isinstance(items, list):
        raise Reject(400, "body: must be a JSON array of {recipient, domain, reason?, ttl?, note?}")
    added = await _in_pool(request, lambda sl: sl.add_many(items, source="api", actor=caller.name))
    return json_response({"added": added})


async def get_summary(request: web.Request) -> web.Response:
    request.app[SERVICE].auth.read(request)
    return json_response(await _in_pool(request, lambda sl: sl.summary()))


OPENAPI = json.loads(resources.files("exporter").joinpath("schema/openapi.json").read_text())


async def get_openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


async def incomplete_pair(request: web.Request) -> web.Response:
    raise Reject(400, "expected /v1/suppressions/{domain}/{recipient}")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/openapi.json", get_openapi, name="openapi")
    router.add_get("/v1/summary", get_summary, name="summary")
    router.add_get("/v1/suppressions", list_entries, name="list")
    router.add_post("/v1/suppressions/bulk", bulk_add, name="bulk")
    pair = router.add_resource(PAIR, name="suppression")
    pair.add_route("GET", get_pair)
    pair.add_route("PUT", put_pair)
    pair.add_route("DELETE", delete_pair)
    router.add_get(PAIR + "/history", get_history, name="history")
    router.add_get("/v1/suppressions/{domain}", incomplete_pair, name="incomplete")
