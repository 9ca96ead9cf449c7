"""The server's limits, tried as an attacker would, on 127.0.0.1 with bounded counts and
timeouts: a slowloris head, a trickled body, an idle keep-alive connection, 1,100 half-open
connections under a 1,024-descriptor limit, huge and poisonous records."""

from __future__ import annotations

import json
import resource
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import logfactory  # noqa: E402
from conftest import free_port  # noqa: E402
from test_webhook import TIMEOUT, TOKEN, Server, store_of  # noqa: E402

from exporter.config import load_config  # noqa: E402
from exporter.server import Limits, WebhookService  # noqa: E402

AUTH = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"


@pytest.fixture
def short_limits(install):
    """An in-process server whose head and body timeouts are 1 s (15 s and 30 s in production)."""
    install.ok("init")
    port = free_port()
    install.configure(webhook={"enabled": True, "listen": f"127.0.0.1:{port}", "token": TOKEN})
    service = WebhookService(load_config(install.config_path), Limits(head_timeout=1.0, body_timeout=1.0))
    service.start()
    yield port
    service.stop()


def read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True), or until `seconds` pass (False)."""
    sock.settimeout(0.2)
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def post_ok(port: int) -> bytes:
    body = json.dumps(logfactory.bounce("fine@example.net", "example.com")).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Content-Type: application/json\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        return s.recv(65536)


def test_a_trickled_head_is_cut_off(short_limits):
    """One header byte every 0.25 s never completes a head: the connection is closed after
    the head timeout, however much keeps trickling in."""
    head = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 64
    with socket.create_connection(("127.0.0.1", short_limits), timeout=TIMEOUT) as s:
        closed = False
        started = time.monotonic()
        for byte in head:              # at most 16 s of trickling; the limit is 1 s
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            _, closed = read_until_closed(s, 0.25)
            if closed:
                break
        assert closed, "a trickled head kept its connection"
        assert time.monotonic() - started < len(head) * 0.25
    assert post_ok(short_limits).startswith(b"HTTP/1.1 200")


def test_a_trickled_body_is_cut_off(short_limits):
    with socket.create_connection(("127.0.0.1", short_limits), timeout=TIMEOUT) as s:
        s.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" + AUTH +
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\"")
        data, closed = read_until_closed(s, 5)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert closed


def test_an_idle_keep_alive_connection_is_closed(short_limits):
    with socket.create_connection(("127.0.0.1", short_limits), timeout=TIMEOUT) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data, closed = read_until_closed(s, 5)
    assert data.startswith(b"HTTP/1.1 200") and closed


def test_a_thousand_half_open_connections_under_a_1024_fd_limit(tmp_path):
    """`serve` with RLIMIT_NOFILE 1024 (systemd's default) and 1,100 connections that sent
    half a request head: an authenticated client is still answered, and the server lives."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1100 + 200
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"this test needs {want} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    from conftest import Install
    install = Install(tmp_path)
    install.ok("init")
    srv = Server(install, fd_limit=1024)
    slow: list[socket.socket] = []
    try:
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
            s.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")      # and never the rest
            slow.append(s)
        for attempt in range(3):
            assert post_ok(srv.port).startswith(b"HTTP/1.1 200"), srv.output()
            status, body, _ = srv.request("GET", "/v1/suppressions/example.com/fine%40example.net")
            assert status == 200, body
        # the oldest half-open connections made room: the server closed them
        closed = 0
        for s in slow:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= 1100 - 1024
        assert srv.proc.poll() is None
    finally:
        for s in slow:
            s.close()
        code = srv.stop()
    assert code == 0, srv.output()
    assert "Traceback" not in srv.output()


def test_a_huge_record_is_answered_without_a_5xx(tmp_path):
    """A 6 MB record (under max_body) and a 200,000-deep one: each gets one clear answer."""
    from conftest import Install
    install = Install(tmp_path)
    install.ok("init")
    srv = Server(install, max_body="10MB")
    try:
        huge = logfactory.bounce("huge@example.net", "example.com", content="5.1.1 " + "x" * 6_000_000)
        status, body, _ = srv.post(huge)
        assert status in (200, 400), body
        deep = b'{"type": "Bounce", "meta": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
        status, body, _ = srv.post(deep)
        assert status == 400 and b"nested" in body, body
        assert srv.post(logfactory.bounce("after@example.net", "example.com"))[0] == 200
    finally:
        assert srv.stop() == 0


def test_a_poison_record_in_a_batch_is_skipped_not_a_5xx(tmp_path):
    from conftest import Install
    install = Install(tmp_path)
    install.ok("init")
    srv = Server(install)
    try:
        poison = {**logfactory.bounce("bad@example.net", "example.com"), "recipient": {"not": "a string"},
                  "timestamp": "soon", "response": ["no"]}
        batch = [logfactory.bounce("good1@example.net", "example.com"), poison,
                 logfactory.bounce("good2@example.net", "example.com")]
        status, body, _ = srv.post(batch)
        assert status == 200, body
        status, body, _ = srv.post(poison)
        assert status < 500, body
        with store_of(install) as st:
            now = int(time.time())
            assert st.get("good1@example.net", "example.com", now) and st.get("good2@example.net", "example.com", now)
    finally:
        assert srv.stop() == 0
