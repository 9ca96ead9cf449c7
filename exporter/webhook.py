"""The webhook receiver (`kumo-suppress serve`, and inside `run` when [webhook].enabled).

kumod's log hooks POST log records here (PRODUCT.md section 7): one JSON record, or a JSON
array of them from a batched hook. Routes:

    POST /v1/events                          records in; 200 only after they are committed
    GET  /healthz                            "ok" when the store is reachable (no token)
    GET  /metrics                            Prometheus text (store figures + request counters)
    GET  /v1/suppressions/{domain}/{rcpt}    the `check --json` object, 404 when not suppressed

Status codes, the contract a hook's retry logic relies on:
    200  committed (JSON summary)          400  never acceptable (the body says why)
    401  no or malformed Authorization     403  wrong token
    411  no Content-Length (chunked is refused)
    413  Content-Length over max_body, answered BEFORE the body is read
    404/405  other paths / methods         503  cannot commit now (Retry-After), retry later

Server library: the standard library's ThreadingHTTPServer with protocol_version
"HTTP/1.1". It adds no dependency, gives keep-alive (a kumod hook reuses its connection
pool) and a thread per connection, which is what a few dozen kumod nodes need; the
expensive part of a request is the SQLite commit, not HTTP parsing, and that is handled
by group commit: request threads validate and parse their payload, then hand the records
to ONE writer thread, which takes everything queued at that moment and commits it in a
single transaction, answering each request only after that commit. One writer also
means no SQLite lock contention between request threads (separate connections in one
process would otherwise sleep in SQLite's busy handler). Reads (read API, healthz,
metrics) use a Store connection owned by the connection's thread.

The token is compared with hmac.compare_digest and never logged.
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import logging
import queue
import signal
import socket
import sys
import sqlite3
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .config import Config, ConfigError
from .ingest import Ingestor
from .keys import domain_key, recipient_key
from .records import MalformedRecord, check_record
from .store import Store, StoreError, now_ts

log = logging.getLogger("kumo_suppress.webhook")

EVENTS_PATH = "/v1/events"
READ_PREFIX = "/v1/suppressions/"
RETRY_AFTER = 5                   # seconds, in a 503's Retry-After
GROUP_MAX_RECORDS = 20_000        # records the writer puts in one transaction at most
WAIT_MARGIN = 15.0                # a request waits busy_timeout + this for its commit
IDLE_TIMEOUT = 60.0               # seconds a connection may stay silent


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


# ---------------------------------------------------------------------- group commit
@dataclass
class _Job:
    records: list
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None


class Writer:
    """One thread, one Store connection: commits queued record lists in groups."""

    def __init__(self, config: Config):
        self.config = config
        self.queue: queue.Queue[_Job] = queue.Queue()
        self._stop = threading.Event()
        self.store = Store.open(config.store.path, create=False, busy_timeout=config.store.busy_timeout)
        # a 2xx tells kumod it may forget the record: the commit must survive a power
        # loss too, not only a crash of this process (WAL + NORMAL would not fsync it)
        self.store.conn.execute("PRAGMA synchronous=FULL")
        self.ingestor = Ingestor(self.store, config)
        self.thread = threading.Thread(target=self._loop, name="webhook-writer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self, records: list) -> None:
        """Returns once `records` are committed; StoreError if they could not be."""
        if self._stop.is_set():
            raise StoreError("receiver is shutting down")
        job = _Job(records)
        self.queue.put(job)
        if not job.done.wait(self.config.store.busy_timeout + WAIT_MARGIN):
            raise StoreError("commit timed out")
        if job.error is not None:
            raise job.error

    def _loop(self) -> None:
        while True:
            try:
                job = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    break
                continue
            group, count = [job], len(job.records)
            while count < GROUP_MAX_RECORDS:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                group.append(more)
                count += len(more.records)
            self._commit(group)
        self.store.close()

    def _commit(self, group: list[_Job]) -> None:
        try:
            records = [r for job in group for r in job.records] if len(group) > 1 else group[0].records
            self.ingestor.ingest_records(records, source="webhook")
        except Exception as err:  # noqa: BLE001 - every waiter must get an answer
            if len(group) > 1 and not isinstance(err, (StoreError, sqlite3.Error)):
                for job in group:          # one bad request must not fail its neighbours
                    self._commit([job])
                return
            for job in group:
                job.error = _as_store_error(err)
            if not isinstance(err, (StoreError, sqlite3.Error)):
                log.error("webhook commit failed: %s", err)
        for job in group:
            job.done.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then end the thread."""
        self._stop.set()
        self.thread.join(timeout)


def _as_store_error(err: Exception) -> Exception:
    if isinstance(err, (StoreError, MalformedRecord)):
        return err
    if isinstance(err, sqlite3.Error):
        return StoreError(f"store error: {err}")
    return err


# ---------------------------------------------------------------------- counters
class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_status: dict[tuple[str, int], int] = {}
        self.records = 0

    def count(self, route: str, status: int) -> None:
        with self.lock:
            key = (route, status)
            self.by_status[key] = self.by_status.get(key, 0) + 1

    def add_records(self, n: int) -> None:
        with self.lock:
            self.records += n

    def render(self) -> str:
        with self.lock:
            items = sorted(self.by_status.items())
            records = self.records
        out = ["# HELP kumo_suppression_webhook_requests_total Webhook HTTP requests answered, by route and status.",
               "# TYPE kumo_suppression_webhook_requests_total counter"]
        out += [f'kumo_suppression_webhook_requests_total{{route="{r}",status="{s}"}} {n}' for (r, s), n in items]
        out += ["# HELP kumo_suppression_webhook_records_committed_total Records committed from webhook posts.",
                "# TYPE kumo_suppression_webhook_records_committed_total counter",
                f"kumo_suppression_webhook_records_committed_total {records}"]
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- HTTP
class _Reject(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers or {}


def _safe(method):
    """An unexpected error answers 500 (one log line), never a dropped connection."""
    def wrapper(self):
        try:
            method(self)
        except (ConnectionError, socket.timeout):
            self.close_connection = True
        except Exception as err:  # noqa: BLE001
            log.error("%s %s failed: %s", self.command, urlsplit(self.path).path, err)
            self.close_connection = True
            try:
                self._json(500, {"error": "internal error"}, "other")
            except OSError:
                pass
    wrapper.__name__ = method.__name__
    return wrapper


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # a socket read that waits longer ends the connection: an idle keep-alive connection,
    # or a client that sends less body than its Content-Length, cannot pin a thread
    timeout = IDLE_TIMEOUT
    server_version = "kumo-suppress"
    server: "WebhookServer"

    # one read connection per connection thread, opened on first use
    _store: Store | None = None

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._store is not None:
                self._store.close()
                self._store = None

    def log_message(self, fmt, *args) -> None:   # request line only: never headers, never the token
        log.debug("%s %s", self.address_string(), fmt % args)

    def log_error(self, fmt, *args) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def read_store(self) -> Store:
        if self._store is None:
            cfg = self.server.config
            self._store = Store.open(cfg.store.path, create=False, busy_timeout=min(cfg.store.busy_timeout, 5.0))
        return self._store

    # ------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes | str, content_type: str = "application/json",
              headers: dict | None = None, route: str = "other") -> None:
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.server.counters.count(route, status)

    def _json(self, status: int, obj, route: str, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj) + "\n", headers=headers, route=route)

    def _error(self, err: _Reject, route: str) -> None:
        if err.close:
            self.close_connection = True
        self._json(err.status, {"error": err.message}, route, headers=err.headers)

    def _discard_body(self) -> None:
        """Keep a keep-alive connection in step after refusing a request: read a small body
        away, or close the connection when it is large, unknown or chunked."""
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            return
        if length is None:
            return
        try:
            n = int(length)
        except ValueError:
            self.close_connection = True
            return
        if 0 < n <= 65536:
            self.rfile.read(n)
        elif n:
            self.close_connection = True

    def _auth(self) -> None:
        token = self.server.config.webhook.token
        if not token:
            return
        header = self.headers.get("Authorization")
        if header is None:
            raise _Reject(401, "missing Authorization: Bearer token", headers={"WWW-Authenticate": "Bearer"})
        scheme, _, given = header.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise _Reject(401, "malformed Authorization header (expected: Bearer TOKEN)",
                          headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise _Reject(403, "wrong token")

    # ------------------------------------------------------------------ routes
    def _route(self) -> tuple[str, str]:
        path = urlsplit(self.path).path
        if path == EVENTS_PATH:
            return "events", path
        if path == "/healthz":
            return "healthz", path
        if path == "/metrics":
            return "metrics", path
        if path.startswith(READ_PREFIX):
            return "read", path
        return "other", path

    def _not_allowed(self, route: str, allow: str) -> None:
        self._discard_body()
        self._json(405, {"error": f"method {self.command} not allowed here"}, route, headers={"Allow": allow})

    @_safe
    def do_POST(self) -> None:
        route, _ = self._route()
        if route == "other":
            self._discard_body()
            self._json(404, {"error": "not found"}, route)
            return
        if route != "events":
            self._not_allowed(route, "GET, HEAD")
            return
        try:
            self._auth()
            body = self._read_body()
            records = parse_payload(body)
        except _Reject as err:
            if err.status in (401, 403):
                self._discard_body()
            self._error(err, route)
            return
        try:
            self.server.writer.submit(records)
        except MalformedRecord as err:
            self._json(400, {"error": str(err)}, route)
            return
        except (StoreError, sqlite3.Error) as err:
            log.warning("webhook: cannot commit %d record(s) now: %s", len(records), err)
            self._json(503, {"error": "store busy or unavailable; retry later"}, route,
                       headers={"Retry-After": RETRY_AFTER})
            return
        except Exception as err:  # noqa: BLE001
            log.error("webhook: %d record(s) not committed: %s", len(records), err)
            self._json(500, {"error": "internal error"}, route)
            return
        self.server.counters.add_records(len(records))
        self._json(200, {"ok": True, "records": len(records)}, route)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise _Reject(411, "chunked bodies are not accepted; send Content-Length", close=True)
        length = self.headers.get("Content-Length")
        if length is None:
            raise _Reject(411, "Content-Length required", close=True)
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise _Reject(400, "bad Content-Length", close=True) from None
        limit = self.server.config.webhook.max_body
        if n > limit:
            raise _Reject(413, f"body of {n} bytes is over the limit of {limit} bytes "
                               "(split the batch or raise [webhook] max_body)", close=True)
        body = self.rfile.read(n)
        if len(body) != n:
            raise _Reject(400, "body shorter than Content-Length", close=True)
        return body

    @_safe
    def do_GET(self) -> None:
        route, path = self._route()
        if route == "events":
            self._not_allowed(route, "POST")
        elif route == "healthz":
            self._healthz()
        elif route == "metrics":
            self._metrics()
        elif route == "read":
            self._read(path)
        else:
            self._json(404, {"error": "not found"}, route)

    do_HEAD = do_GET

    @_safe
    def _other_method(self) -> None:
        route, _ = self._route()
        if route == "other":
            self._discard_body()
            self._json(404, {"error": "not found"}, route)
        else:
            self._not_allowed(route, "POST" if route == "events" else "GET, HEAD")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method

    def _healthz(self) -> None:
        try:
            self.read_store().conn.execute("SELECT 1 FROM state LIMIT 1").fetchall()
        except (StoreError, sqlite3.Error) as err:
            log.warning("healthz: store not reachable: %s", err)
            self._drop_store()
            self._send(503, "store not reachable\n", "text/plain; charset=utf-8", route="healthz")
            return
        self._send(200, "ok\n", "text/plain; charset=utf-8", route="healthz")

    def _metrics(self) -> None:
        from .metrics import render
        try:
            text = render(self.read_store())
        except (StoreError, sqlite3.Error) as err:
            self._drop_store()
            self._json(503, {"error": f"store not reachable: {err}"}, "metrics", headers={"Retry-After": RETRY_AFTER})
            return
        # the request counter includes this request
        self.server.counters.count("metrics", 200)
        text += self.server.counters.render()
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read(self, path: str) -> None:
        route = "read"
        try:
            self._auth()
        except _Reject as err:
            self._error(err, route)
            return
        parts = path[len(READ_PREFIX):].split("/")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            self._json(400, {"error": "expected /v1/suppressions/{domain}/{recipient}"}, route)
            return
        try:
            dom_raw, rcpt_raw = (unquote(p, errors="strict") for p in parts)
        except UnicodeDecodeError:
            self._json(400, {"error": "path is not UTF-8 after percent-decoding"}, route)
            return
        dom, rcpt = domain_key(dom_raw), recipient_key(rcpt_raw)
        if dom is None:
            self._json(400, {"error": f"{dom_raw!r} is not a domain"}, route)
            return
        if rcpt is None:
            self._json(400, {"error": f"{rcpt_raw!r} is not an address or @domain"}, route)
            return
        try:
            entry = self.read_store().get(rcpt, dom, now_ts())
        except (StoreError, sqlite3.Error) as err:
            self._drop_store()
            log.warning("read API: store not reachable: %s", err)
            self._json(503, {"error": "store not reachable"}, route, headers={"Retry-After": RETRY_AFTER})
            return
        if entry is None:
            self._json(404, {"error": "not suppressed", "recipient": rcpt, "domain": dom}, route)
            return
        self._json(200, entry, route)

    def _drop_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            finally:
                self._store = None


def parse_payload(body: bytes) -> list[dict]:
    """One record or an array of records -> a list; _Reject(400) saying why otherwise."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise _Reject(400, "payload nested too deeply") from None
    except UnicodeDecodeError:
        raise _Reject(400, "payload is not UTF-8") from None
    except ValueError as err:
        raise _Reject(400, f"payload is not JSON: {err}") from None
    items = data if isinstance(data, list) else [data]
    for i, item in enumerate(items):
        try:
            check_record(item)
        except MalformedRecord as err:
            where = f"item {i}: " if isinstance(data, list) else ""
            raise _Reject(400, f"{where}{err}") from None
    return items


class WebhookServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, config: Config, writer: Writer):
        self.config = config
        self.writer = writer
        self.counters = Counters()
        host = config.webhook.host
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, config.webhook.port), Handler)


class WebhookService:
    """The receiver with its writer thread; start() binds and serves in the background."""

    def __init__(self, config: Config):
        check_listen(config)
        self.config = config
        self.writer = Writer(config)
        try:
            self.server = WebhookServer(config, self.writer)
        except OSError as err:
            self.writer.store.close()
            raise OSError(err.errno, f"cannot listen on {config.webhook.host}:{config.webhook.port}: "
                                     f"{err.strerror}") from None
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="webhook-server", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def start(self) -> None:
        self.writer.start()
        self.thread.start()
        log.info("webhook receiver listening on http://%s%s (token %s)", self.address, EVENTS_PATH,
                 "required" if self.config.webhook.token else "not required")

    def stop(self) -> None:
        """Stop accepting, let the writer commit what was queued, close."""
        self.server.shutdown()
        self.server.server_close()
        self.writer.stop()


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
    """`kumo-suppress serve`: the receiver until SIGTERM/SIGINT; 0 on a clean stop."""
    stop = threading.Event()
    on_stop_signals(stop)
    service = WebhookService(config)
    service.start()
    print(f"kumo-suppress serve: listening on http://{service.address}{EVENTS_PATH}", file=sys.stderr, flush=True)
    wait_for(stop)
    service.stop()
    print("kumo-suppress serve: stopped", file=sys.stderr, flush=True)
    return 0
