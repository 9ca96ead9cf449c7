"""Webhook receiver throughput over loopback.

Starts `kumo-suppress serve` (a real process, temp store, no fsync tuning) and drives it
with CLIENTS concurrent keep-alive clients (separate processes, so the client side is not
the bottleneck): single-record posts, then batches of 100. Every record is a Bounce for a
distinct recipient (the worst case: each one is a new suppression); a third phase sends
batches with 1 Bounce in 10 records, the rest Delivery, closer to a real hook stream.
Afterwards the store must hold exactly as many entries as records
answered 2xx, i.e. every 2xx was committed.

    python bench/webhook.py [--quick] [--clients 4] [--singles N] [--batches N]

Prints `name: value unit` lines. Targets: >= 1000 single posts/s, >= 20000 records/s batched.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bounce(rcpt: str, ts: int, kind: str = "Bounce") -> dict:
    return {"type": kind, "id": os.urandom(16).hex(), "sender": "bounces@example.com", "recipient": rcpt,
            "queue": "example.net", "site": "", "size": 2048,
            "response": {"code": 550, "enhanced_code": {"class": 5, "subject": 1, "detail": 1},
                         "content": "5.1.1 user unknown", "command": None},
            "peer_address": None, "timestamp": ts, "created": ts, "num_attempts": 1,
            "bounce_classification": "InvalidRecipient", "meta": {}, "headers": {"From": "news@example.com"},
            "delivery_protocol": "ESMTP", "reception_protocol": "ESMTP", "nodeid": "bench"}


def client(args) -> tuple[int, int, int, float, float]:
    """(requests answered 2xx, records in them, other answers, start, end); the bodies are
    built before the clock starts."""
    port, tag, requests, per_request, every = args
    ts = int(time.time()) - 60
    bodies = []
    for i in range(requests):
        recs = [bounce(f"{tag}-{i}-{j}@example.net", ts, "Bounce" if j % every == 0 else "Delivery")
                for j in range(per_request)]
        bodies.append(json.dumps(recs[0] if per_request == 1 else recs).encode())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ok = records = other = 0
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    started = time.time()
    for body in bodies:
        conn.request("POST", "/v1/events", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if 200 <= resp.status < 300:
            ok += 1
            records += per_request
        else:
            other += 1
    ended = time.time()
    conn.close()
    return ok, records, other, started, ended


def run_phase(pool, port: int, name: str, clients: int, requests: int, per_request: int,
              every: int = 1) -> tuple[float, int, int]:
    args = [(port, f"{name}{c}", requests, per_request, every) for c in range(clients)]
    results = pool.map(client, args)
    elapsed = max(r[4] for r in results) - min(r[3] for r in results)
    ok = sum(r[0] for r in results)
    records = sum(r[1] for r in results)
    other = sum(r[2] for r in results)
    if other:
        print(f"{name}_non_2xx: {other} requests", flush=True)
    return elapsed, ok, records


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 15 s)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--singles", type=int, default=None, help="single-record posts per client")
    ap.add_argument("--batches", type=int, default=None, help="100-record batches per client")
    opts = ap.parse_args()
    singles = opts.singles or (750 if opts.quick else 5000)
    batches = opts.batches or (60 if opts.quick else 500)
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]), flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="kumo-webhook-bench-"))
    port = free_port()
    (tmp / "config.toml").write_text(
        f'[store]\npath = "suppression.db"\n[ingest]\nlog_dirs = []\n[export]\ndir = "snap"\n'
        f'[webhook]\nenabled = true\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\nmax_body = "10MB"\n')
    subprocess.run([sys.executable, "-m", "exporter", "-c", str(tmp / "config.toml"), "init"], cwd=tmp,
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "-c", str(tmp / "config.toml"), "serve"],
                            cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    print((tmp / "serve.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.1)
        with mp.get_context("fork").Pool(opts.clients) as pool:
            pool.map(client, [(port, f"warm{c}", 5, 1, 1) for c in range(opts.clients)])
            warm = 5 * opts.clients
            t1, ok1, rec1 = run_phase(pool, port, "single", opts.clients, singles, 1)
            t2, ok2, rec2 = run_phase(pool, port, "batch", opts.clients, batches, 100)
            t3, ok3, rec3 = run_phase(pool, port, "mixed", opts.clients, batches, 100, every=10)
        print(f"clients: {opts.clients} keep-alive connections", flush=True)
        print(f"single_posts: {ok1 / t1:.0f} posts/s ({ok1} posts in {t1:.2f} s)", flush=True)
        print(f"single_latency_mean: {t1 / max(ok1, 1) * opts.clients * 1000:.2f} ms", flush=True)
        print(f"batched_100: {rec2 / t2:.0f} records/s ({ok2} batches in {t2:.2f} s)", flush=True)
        print(f"batched_100_requests: {ok2 / t2:.0f} posts/s", flush=True)
        print(f"batched_100_mixed: {rec3 / t3:.0f} records/s (1 Bounce in 10, rest Delivery; "
              f"{ok3} batches in {t3:.2f} s)", flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    sys.path.insert(0, str(ROOT))
    from exporter.store import Store
    with Store.open(tmp / "suppression.db", create=False) as store:
        entries = store.stats(int(time.time()))["entries"]
    expected = warm + rec1 + rec2 + rec3 // 10
    print(f"committed_check: {entries} entries in store for {expected} records answered 2xx "
          f"({'OK' if entries == expected else 'MISMATCH'})", flush=True)
    print(f"server_exit: {proc.returncode}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if entries == expected else 1


if __name__ == "__main__":
    sys.exit(main())
