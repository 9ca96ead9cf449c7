"""The HTTP server of `kumo-suppress serve` (and of `run` with [webhook].enabled).

Routes here: POST /v1/events (kumod's log hooks), GET /healthz, GET /metrics; the API of
the panel and support tools (/v1/suppressions..., /v1/summary, /v1/openapi.json) is in
api.py, the group commit behind /v1/events in writer.py.

Status codes of /v1/events, the contract a hook's retry logic relies on:
    200  committed (JSON summary)          400  never acceptable (the body says why)
    401  no or malformed Authorization     403  wrong token
    408  head or body not sent in time     411  no Content-Length (chunked is refused)
    413  Content-Length over max_body, answered BEFORE the body is read
    503  cannot commit now (Retry-After), retry later

Stack: aiohttp's server on one asyncio loop in a thread of its own (see
WebhookService). It was chosen over an ASGI framework on uvicorn because it is one
well-kept package with the HTTP/1.1 keep-alive a kumod hook pool wants, and it exposes its
connection protocol, which is what the limits below need (uvicorn has no head timeout,
and its one connection limit answers 503 while still holding every descriptor). aiohttp's
keep-alive timer runs from a connection's start (or its last answer) until a complete
request head, so it is also the head timeout. The limits (Limits):
- a request head must be complete within head_timeout (15 s) of the connection's start
  or of the previous answer, whatever trickles in meanwhile (slowloris); an idle
  keep-alive connection is closed after the same time;
- a body must be complete within body_timeout (30 s) of its head (408, connection closed);
- at most max_connections open at once, fewer when RLIMIT_NOFILE asks, so that accept()
  never runs out of file descriptors: when full, a new connection displaces the oldest one
  that is not in the middle of a request (one still sending its head, or idle), so a
  thousand half-open connections cannot lock an authenticated client out. Only when every
  connection is busy with a request is the new one answered 503.
Reads and API writes run in a small thread pool, each thread with its own store
connection; the event loop itself never touches SQLite.

The token is compared with hmac.compare_digest and never logged (no access log is kept).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import ipaddress
import json
import logging
import resource
import signal
import socket
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import orjson
from aiohttp import web

from . import metrics
from .config import Config, ConfigError
from .records import MalformedRecord, check_record
from .store import Store, StoreError
from .writer import Outcome, Writer

log = logging.getLogger("kumo_suppress.server")

EVENTS_PATH = "/v1/events"
RETRY_AFTER = 5                   # seconds, in a 503's Retry-After
WAIT_MARGIN = 15.0                # a post waits busy_timeout + this for its commit
READ_THREADS = 4                  # store connections for reads and API writes
DISCARD_LIMIT = 65536             # an unread body up to this is read away to keep the connection
SHUTDOWN_GRACE = 10.0             # seconds a stop waits for requests in flight
BACKLOG = 64                      # listen() queue, and the most connections one accept() round takes
ACCEPT_ROUNDS = 4                 # accept() rounds of descriptors kept free below RLIMIT_NOFILE
INLINE_BODY = 256 * 1024          # a post up to this is parsed on its loop, a bigger one in a thread


@dataclass(frozen=True)
class Limits:
    head_timeout: float = 15.0
    body_timeout: float = 30.0
    max_connections: int = 4096   # lowered to what RLIMIT_NOFILE allows

    def connection_cap(self) -> int:
        """max_connections, or fewer so that open connections, the store's files, the
        listening sockets and ACCEPT_ROUNDS accept() batches of connections about to be
        displaced always fit under the soft file-descriptor limit (a displaced
        connection's descriptor is freed only after its close lands, while the loop
        may already take the next batch)."""
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(16, min(self.max_connections, soft - ACCEPT_ROUNDS * BACKLOG - 128))


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(config: Config) -> None:
    """A receiver reachable from the network must ask for a token (exit 2 otherwise)."""
    wh = config.webhook
    if not wh.token and not is_loopback(wh.host):
        where = config.path or "config"
        raise ConfigError(f"{where}: [webhook] listen {wh.host}:{wh.port} is not a loopback address "
                          "and [webhook] token is empty; set a token (or listen on 127.0.0.1)")


# ---------------------------------------------------------------------- answers
class Reject(Exception):
    """An error answer: status, one line saying why, extra headers; `close` ends the
    connection after it (the rest of the request cannot be read in step)."""

    def __init__(self, status: int, message: str, *, close: bool = False, headers: dict | None = None,
                 **extra):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close
        self.headers = headers or {}
        self.extra = extra


def unavailable(what: str) -> Reject:
    return Reject(503, what, headers={"Retry-After": str(RETRY_AFTER)})


def json_response(obj, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(obj).encode() + b"\n", content_type="application/json",
                        headers=headers)


# ---------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class Caller:
    name: str | None      # the actor recorded for a change; None: no token configured or needed
    scope: str


class Auth:
    """[webhook].token: POST /v1/events and the GETs. [api].tokens: named, scope read (the
    GETs) or write (the GETs and the API's writes). Every configured token is compared, in
    constant time, with the one given."""

    def __init__(self, config: Config):
        self.webhook_token = config.webhook.token
        self.api_tokens = config.api.tokens
        self.write_configured = any(t.scope == "write" for t in self.api_tokens)

    @staticmethod
    def _bearer(request: web.Request) -> str:
        header = request.headers.get("Authorization")
        if header is None:
            raise Reject(401, "missing Authorization: Bearer token", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, given = header.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise Reject(401, "malformed Authorization header (expected: Bearer TOKEN)",
                         headers={"WWW-Authenticate": "Bearer"})
        return given

    def _identify(self, given: str) -> Caller | None:
        found = None
        given_bytes = given.encode()
        if self.webhook_token and hmac.compare_digest(given_bytes, self.webhook_token.encode()):
            found = Caller("webhook", "read")
        for t in self.api_tokens:
            if hmac.compare_digest(given_bytes, t.token.encode()):
                found = Caller(t.name, t.scope)
        return found

    def events(self, request: web.Request) -> None:
        if not self.webhook_token:
            return
        given = self._bearer(request)
        if not hmac.compare_digest(given.encode(), self.webhook_token.encode()):
            raise Reject(403, "wrong token")

    def read(self, request: web.Request) -> Caller:
        if not self.webhook_token and not self.api_tokens:
            return Caller(None, "read")
        caller = self._identify(self._bearer(request))
        if caller is None:
            raise Reject(403, "wrong token")
        return caller

    def write(self, request: web.Request) -> Caller:
        if not self.write_configured:
            raise Reject(403, "writes need a token of scope write, and none is configured ([api] tokens)")
        caller = self._identify(self._bearer(request))
        if caller is None:
            raise Reject(403, "wrong token")
        if caller.scope != "write":
            raise Reject(403, f"token {caller.name!r} has scope {caller.scope}; this request needs scope write")
        return caller


# ---------------------------------------------------------------------- connections
class ConnectionGate:
    """Counts open connections; over the cap, the oldest one not inside a request goes.
    Used from the event loop's thread only."""

    def __init__(self, cap: int):
        self.cap = cap
        self._open: dict[object, None] = {}     # insertion order: oldest first (re-inserted when idle)
        self._busy: set[object] = set()

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn, loop: asyncio.AbstractEventLoop) -> bool:
        if len(self._open) >= self.cap:
            victim = next((c for c in self._open if c not in self._busy), None)
            if victim is None:
                return False
            del self._open[victim]
            loop.call_soon(victim.force_close)     # after the new connection is set up
        self._open[conn] = None
        return True

    def release(self, conn) -> None:
        self._open.pop(conn, None)
        self._busy.discard(conn)

    def begin(self, conn) -> None:
        self._busy.add(conn)

    def end(self, conn) -> None:
        self._busy.discard(conn)
        if conn in self._open:               # idle again: now the youngest idle one
            self._open[conn] = self._open.pop(conn)


_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: %d\r\n"
         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")


class _GatedConnection(asyncio.Protocol):
    """aiohttp's connection protocol behind the gate: admitted, it gets every event."""

    __slots__ = ("gate", "inner", "loop", "admitted")

    def __init__(self, gate: ConnectionGate, inner, loop: asyncio.AbstractEventLoop):
        self.gate, self.inner, self.loop, self.admitted = gate, inner, loop, False

    def connection_made(self, transport) -> None:
        self.admitted = self.gate.admit(self.inner, self.loop)
        if not self.admitted:
            body = b'{"error": "too many connections busy with requests; retry later"}\n'
            transport.write(_FULL % (RETRY_AFTER, len(body), body))
            transport.close()
            return
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc) -> None:
        if self.admitted:
            self.gate.release(self.inner)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()


# ---------------------------------------------------------------------- store access
class ReadStores:
    """One store connection per pool thread, reopened when the file at the configured path
    is no longer the one it has open (deleted, restored from a backup)."""

    def __init__(self, config: Config):
        self.config = config
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Store] = []
        self.pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="webhook-read")

    def _identity(self):
        st = self.config.store.path.stat()
        return st.st_dev, st.st_ino

    def _store(self) -> Store:
        store = getattr(self._local, "store", None)
        try:
            identity = self._identity()
        except OSError as err:
            self._drop()
            raise StoreError(f"{self.config.store.path}: store not reachable: {err.strerror}") from None
        if store is not None and self._local.identity != identity:
            self._drop()
            store = None
        if store is None:
            cfg = self.config
            store = Store.open(cfg.store.path, create=False, busy_timeout=min(cfg.store.busy_timeout, 5.0))
            # an API write answered 200 must survive a power loss, as a webhook commit does
            store.conn.execute("PRAGMA synchronous=FULL")
            self._local.store, self._local.identity = store, identity
            with self._lock:
                self._opened.append(store)
        return store

    def _drop(self) -> None:
        store = getattr(self._local, "store", None)
        self._local.store = None
        if store is not None:
            with self._lock:
                self._opened.remove(store)
            store.close()

    def _call(self, work):
        store = self._store()
        try:
            return work(store)
        except (StoreError, sqlite3.Error):
            self._drop()
            raise

    async def run(self, work):
        """`work(store)` in a pool thread; a store that cannot answer is a 503."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self._call, work)
        except (StoreError, sqlite3.Error) as err:
            log.warning("store not reachable: %s", err)
            raise unavailable("store busy or unavailable; retry later") from None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        with self._lock:
            for store in self._opened:
                store.close()
            self._opened.clear()


# ---------------------------------------------------------------------- the app
def parse_payload(body: bytes) -> list[dict]:
    """One record or an array of records -> a list; Reject(400) saying why otherwise.
    orjson reads nearly every body at a fraction of json's cost; what it refuses (lone
    surrogates, NaN, 1e400, a byte-order mark, deep nesting) goes to json, so what is a
    400 stays json's call, as for a log line (records.parse_line)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = _json_payload(body)
    items = data if isinstance(data, list) else [data]
    for i, item in enumerate(items):
        try:
            check_record(item)
        except MalformedRecord as err:
            where = f"item {i}: " if isinstance(data, list) else ""
            raise Reject(400, f"{where}{err}") from None
    return items


def _json_payload(body: bytes):
    try:
        return json.loads(body)
    except RecursionError:
        raise Reject(400, "payload nested too deeply") from None
    except UnicodeDecodeError:
        raise Reject(400, "payload is not UTF-8") from None
    except ValueError as err:
        raise Reject(400, f"payload is not JSON: {err}") from None


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The body, or Reject: 411 without Content-Length, 413 over `limit` (before reading
    any of it), 408 when it does not arrive within `timeout`."""
    if "Transfer-Encoding" in request.headers:
        raise Reject(411, "chunked bodies are not accepted; send Content-Length", close=True)
    length = request.headers.get("Content-Length")
    if length is None:
        raise Reject(411, "Content-Length required", close=True)
    n = request.content_length
    if n > limit:
        raise Reject(413, f"body of {n} bytes is over the limit of {limit} bytes "
                          "(split the batch or raise [webhook] max_body)", close=True)
    try:
        async with asyncio.timeout(timeout):
            body = await request.content.readexactly(n)
    except TimeoutError:
        raise Reject(408, f"body not received within {timeout:g} s", close=True) from None
    except asyncio.IncompleteReadError:
        raise Reject(400, "body shorter than Content-Length", close=True) from None
    return body


class Service:
    """Everything a request handler needs: config, limits, auth, the writer, the stores."""

    def __init__(self, config: Config, limits: Limits):
        self.config = config
        self.limits = limits
        self.auth = Auth(config)
        self.writer = Writer(config)
        self.stores = ReadStores(config)
        self.stats = metrics.StatsCache(lambda: Store.open(config.store.path, create=False,
                                                           busy_timeout=config.store.busy_timeout))
        self.gate = ConnectionGate(limits.connection_cap())

    async def json_body(self, request: web.Request, *, required: bool) -> object:
        """A small JSON request body of the API; None when absent and not required."""
        if not required and not request.body_exists:
            return None
        body = await read_body(request, self.config.webhook.max_body, self.limits.body_timeout)
        if not body.strip() and not required:
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as err:
            raise Reject(400, f"body is not JSON: {err}") from None

    async def commit(self, records: list) -> Outcome:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()

        def settle(outcome: Outcome) -> None:
            if not done.done():
                done.set_result(outcome)

        self.writer.submit(records, lambda outcome: loop.call_soon_threadsafe(settle, outcome))
        try:
            async with asyncio.timeout(self.config.store.busy_timeout + WAIT_MARGIN):
                return await done
        except TimeoutError:
            return Outcome(error=StoreError("commit timed out"))


SERVICE = web.AppKey("service", Service)


async def post_events(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.auth.events(request)
    body = await read_body(request, service.config.webhook.max_body, service.limits.body_timeout)
    # a big body is parsed in a thread: its loop keeps serving its other connections meanwhile
    records = parse_payload(body) if len(body) <= INLINE_BODY else await asyncio.to_thread(parse_payload, body)
    outcome = await service.commit(records)
    if outcome.error is not None:
        log.warning("webhook: cannot commit %d record(s) now: %s", len(records), outcome.error)
        raise unavailable("store busy or unavailable; retry later")
    metrics.WEBHOOK_RECORDS.inc(outcome.committed)
    metrics.WEBHOOK_SKIPPED.inc(outcome.skipped)
    if outcome.skipped and not outcome.committed:
        raise Reject(400, f"no record of the post could be processed ({outcome.skipped} skipped; see the log)")
    answer = {"ok": True, "records": outcome.committed}
    if outcome.skipped:
        answer["skipped"] = outcome.skipped
    return json_response(answer)


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        await service.stores.run(lambda store: store.conn.execute("SELECT 1 FROM state LIMIT 1").fetchall())
    except Reject:
        return web.Response(status=503, text="store not reachable\n")
    return web.Response(text="ok\n")


async def get_metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    # the request counter includes this request
    metrics.HTTP_REQUESTS.labels(route="metrics", status="200").inc()
    request[COUNTED] = True
    body = await service.stores.run(lambda store: metrics.render(store, service.stats.stats))
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


def _route_name(request: web.Request) -> str:
    return getattr(request.match_info.route, "name", None) or "other"


def _error_response(request: web.Request, err: Exception) -> web.Response:
    if isinstance(err, Reject):
        response = json_response({"error": err.message, **err.extra}, err.status, err.headers)
        if err.close:
            response.force_close()
        return response
    if isinstance(err, web.HTTPException):       # aiohttp's own: no route, wrong method
        headers = {"Allow": err.headers["Allow"]} if "Allow" in err.headers else None
        message = {404: "not found", 405: f"method {request.method} not allowed here"}.get(
            err.status, (err.reason or "error").lower())
        return json_response({"error": message}, err.status, headers)
    log.error("%s %s failed: %s", request.method, request.path, err)
    response = json_response({"error": "internal error"}, 500)
    response.force_close()
    return response


COUNTED = web.RequestKey("counted", bool)   # the request counter already has this request
TIMED = web.RequestKey("timed", bool)       # counted and timed once, before the answer


def _count(request: web.Request, route: str, status: int, started: float) -> None:
    """Once per request, before its answer goes out: a client that reads the answer and
    scrapes at once on another connection sees it counted."""
    if request.get(TIMED):
        return
    request[TIMED] = True
    if not request.get(COUNTED):     # /metrics counts itself, to include itself
        metrics.HTTP_REQUESTS.labels(route=route, status=str(status)).inc()
    metrics.HTTP_LATENCY.labels(route=route).observe(time.perf_counter() - started)


@web.middleware
async def answer(request: web.Request, handler) -> web.StreamResponse:
    """Every answer: errors as {"error": ...}, counted and timed per route; the connection is
    busy (not to be displaced) until the answer is written."""
    service = request.app[SERVICE]
    started = time.perf_counter()
    route = _route_name(request)
    status = 500
    service.gate.begin(request.protocol)
    try:
        try:
            response = await handler(request)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:  # noqa: BLE001 - an answer, never a dropped connection
            response = _error_response(request, err)
        if not request.content.is_eof() and (request.content_length is None
                                             or request.content_length > DISCARD_LIMIT):
            response.force_close()   # an unread body too big to read away: end the connection
        status = response.status
        # counted before the answer goes out: a client that reads it and scrapes at once
        # on another connection sees its own request counted
        _count(request, route, status, started)
        await response.prepare(request)
        await response.write_eof()
        if not response.keep_alive and not request.content.is_eof():
            request.protocol.force_close()   # now, not after aiohttp's lingering read of the rest
        return response
    finally:
        service.gate.end(request.protocol)
        _count(request, route, status, started)    # no answer was prepared (the client went away)


def make_app(service: Service) -> web.Application:
    from . import api
    # client_max_size: bodies are read by read_body, which enforces max_body itself
    app = web.Application(middlewares=[answer], client_max_size=service.config.webhook.max_body + 1)
    app[SERVICE] = service
    app.router.add_post(EVENTS_PATH, post_events, name="events")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", get_metrics, name="metrics")
    api.add_routes(app.router)
    return app


# ---------------------------------------------------------------------- life cycle
def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as err:
        sock.close()
        raise OSError(err.errno, f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock


class WebhookService:
    """The server with its writer thread; start() serves in background threads, so `serve`
    and `run` drive it the same way.

    One event loop serves every connection. The GIL runs one piece of Python at a time,
    and the group-commit writer thread needs it for most of a post's work (records, rules,
    rows), so more loops only contend with it: measured on an idle 2-core machine
    (bench/webhook.py, three runs each, beside the old thread-per-connection server in the
    same run), batched records/s with one loop were ahead of the old server in all three
    runs (18.5k/17.7k, 21.6k/20.2k, 17.2k/16.7k), with four behind in all three
    (13.9k/15.4k, 22.3k/23.2k, 13.2k/14.3k)."""

    def __init__(self, config: Config, limits: Limits | None = None):
        check_listen(config)
        self.config = config
        self.service = Service(config, limits or Limits())
        try:
            self.sock = _listening_socket(config.webhook.host, config.webhook.port)
        except OSError:
            self.service.writer.store.close()
            raise
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="webhook-loop", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self.service.writer.start()
        self.service.stats.start()
        self._thread.start()
        self._ready.wait(10)
        # Everything alive now (modules, the app, the store connections) lives as long as
        # the server: out of the collector's reach, a full collection no longer walks it
        # while a post waits. bench/webhook.py, batches of 100: p99 15.5 ms instead of
        # 24-25 ms (the old server's: 19-20 ms in the same runs).
        gc.freeze()
        log.info("webhook receiver listening on http://%s%s (token %s, at most %d connections)", self.address,
                 EVENTS_PATH, "required" if self.config.webhook.token else "not required", self.service.gate.cap)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        runner = web.AppRunner(make_app(self.service), access_log=None, handle_signals=False,
                               keepalive_timeout=self.service.limits.head_timeout,
                               shutdown_timeout=SHUTDOWN_GRACE)
        await runner.setup()
        gate = self.service.gate
        # the server owns (and closes) a dup: self.sock stays open for `address`
        server = await loop.create_server(lambda: _GatedConnection(gate, runner.server(), loop),
                                          sock=self.sock.dup(), backlog=BACKLOG)
        self._loop, self._stopping = loop, stopping
        self._ready.set()
        await stopping.wait()
        server.close()                 # no new connections; requests in flight finish
        await runner.cleanup()

    def stop(self) -> None:
        """Stop accepting, answer the requests in flight, let the writer commit what it
        was handed, close."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread.ident is not None:
            self._thread.join(SHUTDOWN_GRACE + 5)
        self.sock.close()
        self.service.writer.stop()
        self.service.stats.stop()
        self.service.stores.close()


def on_stop_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set `stop` (installed before anything starts)."""
    def handler(signum, frame):
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def wait_for(stop: threading.Event) -> None:
    while not stop.wait(0.5):
        pass


def serve(config: Config) -> int:
    """`kumo-suppress serve`: the server until SIGTERM/SIGINT; 0 on a clean stop."""
    stop = threading.Event()
    on_stop_signals(stop)
    service = WebhookService(config)
    service.start()
    print(f"kumo-suppress serve: listening on http://{service.address}{EVENTS_PATH}", file=sys.stderr, flush=True)
    wait_for(stop)
    service.stop()
    print("kumo-suppress serve: stopped", file=sys.stderr, flush=True)
    return 0
