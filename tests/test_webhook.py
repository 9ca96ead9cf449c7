"""The webhook receiver, driven from outside: `kumo-suppress -c CONFIG serve` as a real
process on a free 127.0.0.1 port, spoken to with http.client. Bounded request counts,
timeouts everywhere."""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import logfactory  # noqa: E402
from conftest import Daemon, Install, free_port  # noqa: E402

from exporter.store import Store  # noqa: E402

TOKEN = "t0ken-for-tests"
TIMEOUT = 10


class Server:
    """`kumo-suppress serve` in its own process group."""

    def __init__(self, install: Install, token: str = TOKEN, max_body: str = "64KB", listen: str | None = None,
                 wait: bool = True, fd_limit: int | None = None):
        self.install = install
        self.port = free_port()
        self.token = token
        install.configure(webhook={"enabled": True, "listen": listen or f"127.0.0.1:{self.port}",
                                   "token": token, "max_body": max_body})
        self.daemon = Daemon(install, "serve", fd_limit=fd_limit)
        self.proc = self.daemon.proc
        if wait:
            self.wait_listening()

    def wait_listening(self) -> None:
        self.daemon.wait_listening(self.port)

    def output(self) -> str:
        return self.daemon.output()

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)

    def request(self, method: str, path: str, body: bytes | str | None = None, *, token: str | None = "default",
                conn: http.client.HTTPConnection | None = None, headers: dict | None = None):
        own = conn is None
        conn = conn or self.conn()
        tok = self.token if token == "default" else token
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if tok:
            hdrs["Authorization"] = f"Bearer {tok}"
        if isinstance(body, str):
            body = body.encode()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data, resp
        finally:
            if own:
                conn.close()

    def post(self, payload, **kw):
        body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
        return self.request("POST", "/v1/events", body, **kw)

    def stop(self) -> int:
        return self.daemon.stop()


@pytest.fixture
def server(tmp_path):
    install = Install(tmp_path)
    install.ok("init")
    srv = Server(install)
    yield srv
    srv.stop()


def store_of(install: Install) -> Store:
    return Store.open(install.db, create=False)


def bounce(rcpt: str, domain: str = "example.com", **kw) -> dict:
    return logfactory.bounce(rcpt, domain, **kw)


# ---------------------------------------------------------------------------- ingestion
def test_single_and_batched_posts_commit(server):
    status, body, _ = server.post(bounce("one@example.net"))
    assert status == 200, body
    assert json.loads(body)["records"] == 1
    batch = [bounce(f"b{i}@example.net") for i in range(20)] + [logfactory.delivery("ok@example.net")]
    status, body, _ = server.post(batch)
    assert status == 200, body
    assert json.loads(body)["records"] == 21
    with store_of(server.install) as st:
        now = int(time.time())
        assert st.get("one@example.net", "example.com", now)["source"] == "webhook"
        assert all(st.get(f"b{i}@example.net", "example.com", now) for i in range(20))
        assert st.get("ok@example.net", "example.com", now) is None
    # an empty array is harmless
    assert server.post([])[0] == 200


def test_auth(server):
    rec = bounce("auth@example.net")
    assert server.post(rec, token=None)[0] == 401
    status, _, resp = server.request("POST", "/v1/events", json.dumps(rec), token=None,
                                     headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert status == 401
    assert server.request("POST", "/v1/events", json.dumps(rec), token=None,
                          headers={"Authorization": "Bearer"})[0] == 401
    assert server.post(rec, token="wrong")[0] == 403
    with store_of(server.install) as st:
        assert st.get("auth@example.net", "example.com", int(time.time())) is None
    assert server.post(rec)[0] == 200
    assert TOKEN not in server.output()


def test_body_limit_answered_before_body_is_read(server):
    # announce 10 MB, send nothing: the answer must come without the body
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 10000000\r\n\r\n")
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 413"), data
    # a real over-size body (64KB limit)
    big = [bounce(f"big{i}@example.net") for i in range(200)]
    assert len(json.dumps(big)) > 65536
    assert server.post(big)[0] == 413
    # no Content-Length
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as s:
        s.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                  + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 411")


@pytest.mark.parametrize("payload, why", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe garbage", "not"),
    (b"42", "JSON object"),
    (b'"Bounce"', "JSON object"),
    (b'[{"type": "Bounce"}, 7]', "item 1"),
    (b'{"recipient": "x@example.net"}', "type"),
    (b'[{"type": 5}]', "type"),
])
def test_payloads_that_can_never_be_accepted(server, payload, why):
    status, body, _ = server.post(payload)
    assert status == 400, body
    assert why in json.loads(body)["error"]


def test_bodies_the_fast_parser_refuses_are_judged_as_json_judges_them(server):
    """A byte-order mark, a lone surrogate, NaN: valid for Python's json (and accepted before
    the receiver parsed with orjson), refused by orjson; still accepted and committed."""
    def body(rcpt: str, extra: str) -> bytes:
        text = json.dumps(bounce(rcpt))
        return (text[:-1] + ", " + extra + "}").encode()
    posts = {"bom@example.net": b"\xef\xbb\xbf" + json.dumps(bounce("bom@example.net")).encode(),
             "surrogate@example.net": body("surrogate@example.net", '"note": "\\ud800"'),
             "nan@example.net": body("nan@example.net", '"score": NaN')}
    for rcpt, payload in posts.items():
        status, answer, _ = server.post(payload)
        assert status == 200, (rcpt, answer)
    with store_of(server.install) as st:
        now = int(time.time())
        assert all(st.get(rcpt, "example.com", now) for rcpt in posts)


def test_other_paths_and_methods(server):
    assert server.request("GET", "/nope")[0] == 404
    assert server.request("POST", "/other", "{}")[0] == 404
    status, _, resp = server.request("GET", "/v1/events")
    assert status == 405 and "POST" in resp.getheader("Allow")
    assert server.request("PUT", "/v1/events", "{}")[0] == 405
    assert server.request("PATCH", "/v1/suppressions/example.com/x@example.net")[0] == 405


def test_idempotent_retry(server):
    batch = [bounce("again@example.net"), bounce("again2@example.net")]
    assert server.post(batch)[0] == 200
    assert server.post(batch)[0] == 200
    with store_of(server.install) as st:
        entry = st.get("again@example.net", "example.com", int(time.time()))
        assert entry["count"] == 1
        assert st.stats(int(time.time()))["entries"] == 2


def test_keep_alive_many_requests_one_connection(server):
    conn = server.conn()
    try:
        for i in range(10):
            status, _, resp = server.post(bounce(f"ka{i}@example.net"), conn=conn)
            assert status == 200
            assert not resp.will_close
        assert server.request("GET", "/healthz", conn=conn)[0] == 200
        # an error with a small body keeps the connection usable
        assert server.post(b"[1]", conn=conn)[0] == 400
        assert server.post(bounce("ka-last@example.net"), conn=conn)[0] == 200
        sock = conn.sock
        assert sock is not None
    finally:
        conn.close()
    with store_of(server.install) as st:
        assert st.stats(int(time.time()))["entries"] == 11


def test_concurrent_clients(server):
    errors: list = []

    def client(n: int):
        conn = server.conn()
        try:
            for i in range(15):
                status, body, _ = server.post([bounce(f"c{n}-{i}@example.net"), bounce(f"c{n}-{i}b@example.net")],
                                              conn=conn)
                if status != 200:
                    errors.append((status, body))
        except Exception as err:  # noqa: BLE001
            errors.append(err)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    with store_of(server.install) as st:
        assert st.stats(int(time.time()))["entries"] == 6 * 15 * 2


def test_commit_before_2xx_survives_kill_9(server):
    batch = [bounce(f"k{i}@example.net") for i in range(50)]
    status, _, _ = server.post(batch)
    assert status == 200
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(5)
    r = server.install.subprocess("check", "k49@example.net", "--domain", "example.com", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["evidence"]["code"] == 550
    with store_of(server.install) as st:
        assert st.stats(int(time.time()))["entries"] == 50


def test_store_unavailable_is_503(tmp_path):
    install = Install(tmp_path)
    install.ok("init")
    install.configure(store={"busy_timeout": "1s"})
    srv = Server(install)
    try:
        blocker = sqlite3.connect(install.db, timeout=1)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            status, body, resp = srv.post(bounce("busy@example.net"))
            assert status == 503, body
            assert resp.getheader("Retry-After")
        finally:
            blocker.rollback()
            blocker.close()
        assert srv.post(bounce("busy@example.net"))[0] == 200
    finally:
        srv.stop()


# ---------------------------------------------------------------------------- read API, health, metrics
def test_read_api(server):
    assert server.post(bounce("Reader@Example.NET", content="5.1.1 no such user here"))[0] == 200
    status, body, resp = server.request("GET", "/v1/suppressions/Example.COM./%3CReader%40example.net%3E")
    assert status == 200, body
    entry = json.loads(body)
    r = server.install.subprocess("check", "reader@example.net", "--domain", "example.com", "--json")
    assert entry["suppressed"] is True
    assert entry == {"suppressed": True, **json.loads(r.stdout)}, "the check --json object"
    assert entry["reason"] == "bounce" and entry["evidence"]["content"] == "5.1.1 no such user here"
    assert server.request("GET", "/v1/suppressions/example.com/other%40example.net")[0] == 404
    assert server.request("GET", "/v1/suppressions/example.com/not-an-address")[0] == 400
    assert server.request("GET", "/v1/suppressions/example.com")[0] == 400
    assert server.request("GET", "/v1/suppressions/example.com/reader%40example.net", token=None)[0] == 401
    assert server.request("GET", "/v1/suppressions/example.com/reader%40example.net", token="nope")[0] == 403


def test_read_api_recipient_domain_entry(server):
    server.install.ok("add", "@bad.example", "--domain", "example.com")
    status, body, _ = server.request("GET", "/v1/suppressions/example.com/anyone%40bad.example")
    assert status == 200 and json.loads(body)["recipient"] == "@bad.example"


def test_healthz_and_metrics(server):
    status, body, _ = server.request("GET", "/healthz", token=None)
    assert status == 200 and body.strip() == b"ok"
    assert server.post([bounce("m@example.net"), logfactory.delivery("d@example.net")])[0] == 200
    server.post(b"nope")
    status, body, resp = server.request("GET", "/metrics", token=None)
    assert status == 200
    assert resp.getheader("Content-Type").startswith("text/plain")
    text = body.decode()
    assert 'kumo_suppression_records_ingested_total{type="Bounce"} 1' in text
    assert 'kumo_suppression_suppressions_added_total{reason="bounce"} 1' in text
    assert 'kumo_suppression_webhook_requests_total{route="events",status="200"} 1' in text
    assert 'kumo_suppression_webhook_requests_total{route="events",status="400"} 1' in text
    assert "kumo_suppression_last_ingest_timestamp_seconds" in text
    assert 'kumo_suppression_build_info{python="' in text
    assert 'kumo_suppression_http_request_duration_seconds_count{route="events"} 2' in text
    assert 'kumo_suppression_webhook_records_committed_total 2' in text
    assert "# TYPE kumo_suppression_job_failures_total counter" in text


def test_healthz_without_store(tmp_path):
    install = Install(tmp_path)
    install.ok("init")
    srv = Server(install)
    try:
        assert srv.request("GET", "/healthz")[0] == 200
        install.db.unlink()
        for suffix in ("-wal", "-shm"):
            Path(str(install.db) + suffix).unlink(missing_ok=True)
        # a new connection cannot open a missing store
        assert srv.request("GET", "/healthz")[0] == 503
    finally:
        srv.stop()


# ---------------------------------------------------------------------------- start-up
def test_non_loopback_without_token_is_refused(tmp_path):
    install = Install(tmp_path)
    install.configure(webhook={"listen": "0.0.0.0:18099", "token": ""})
    r = install.subprocess("serve", timeout=20)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "token" in err and len(err.strip().splitlines()) == 1


def test_serve_never_creates_a_store(tmp_path):
    install = Install(tmp_path)
    install.db.unlink()     # the store an operator lost (Install ran init)
    install.configure(webhook={"listen": f"127.0.0.1:{free_port()}", "token": TOKEN})
    r = install.subprocess("serve", timeout=20)
    assert r.returncode == 3
    err = r.stderr.decode()
    assert "init" in err and len(err.strip().splitlines()) == 1
    assert not install.db.exists()


def test_no_token_on_loopback_is_fine(tmp_path):
    install = Install(tmp_path)
    install.ok("init")
    srv = Server(install, token="")
    try:
        assert srv.post(bounce("open@example.net"), token=None)[0] == 200
        assert srv.request("GET", "/v1/suppressions/example.com/open%40example.net", token=None)[0] == 200
    finally:
        assert srv.stop() == 0


def test_sigterm_exits_zero(server):
    assert server.post(bounce("t@example.net"))[0] == 200
    started = time.time()
    assert server.stop() == 0
    assert time.time() - started < 5
