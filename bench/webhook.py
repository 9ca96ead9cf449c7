"""Webhook receiver throughput over loopback, the server of today beside the old one.

Starts `kumo-suppress serve` (a real process, temp store, no fsync tuning) and drives it
with CLIENTS concurrent keep-alive clients (separate processes, so the client side is not
the bottleneck): single-record posts, then batches of 100. Every record is a Bounce for a
distinct recipient (the worst case: each one is a new suppression); a third phase sends
batches with 1 Bounce in 10 records, the rest Delivery, closer to a real hook stream.
Afterwards the store must hold exactly as many entries as records
answered 2xx, i.e. every 2xx was committed.

The same phases run against the previous server (the standard library's
ThreadingHTTPServer, exporter/webhook.py before it moved to aiohttp), checked out of this
repository's git history into a temp dir for the run, so both are measured on the same
machine in the same minutes: in rounds, the two servers taking turns (which goes first
alternates), the best round of each figure kept, since another job on a shared machine
can halve one run. Without git history the old server is skipped, saying so.

    python bench/webhook.py [--quick] [--clients 4] [--singles N] [--batches N] [--rounds N] [--no-old]

Prints `name: value unit` lines (`old_` before the old server's). Targets: >= 1000 single
posts/s, >= 20000 records/s batched.
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


def client(args) -> tuple[int, int, int, float, float, list[float]]:
    """(requests answered 2xx, records in them, other answers, start, end, latencies); the
    bodies are built before the clock starts."""
    port, tag, requests, per_request, every = args
    ts = int(time.time()) - 60
    bodies = []
    for i in range(requests):
        recs = [bounce(f"{tag}-{i}-{j}@example.net", ts, "Bounce" if j % every == 0 else "Delivery")
                for j in range(per_request)]
        bodies.append(json.dumps(recs[0] if per_request == 1 else recs).encode())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ok = records = other = 0
    latencies = []
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    started = time.time()
    for body in bodies:
        sent = time.perf_counter()
        conn.request("POST", "/v1/events", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        latencies.append(time.perf_counter() - sent)
        if 200 <= resp.status < 300:
            ok += 1
            records += per_request
        else:
            other += 1
    ended = time.time()
    conn.close()
    return ok, records, other, started, ended, latencies


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def run_phase(pool, port: int, name: str, clients: int, requests: int, per_request: int,
              every: int = 1) -> tuple[float, int, int, float]:
    args = [(port, f"{name}{c}", requests, per_request, every) for c in range(clients)]
    results = pool.map(client, args)
    elapsed = max(r[4] for r in results) - min(r[3] for r in results)
    ok = sum(r[0] for r in results)
    records = sum(r[1] for r in results)
    other = sum(r[2] for r in results)
    if other:
        print(f"{name}_non_2xx: {other} requests", flush=True)
    return elapsed, ok, records, p99([lat for r in results for lat in r[5]])


# the module imports its siblings relatively; beside them in a temp dir it imports the package's
OLD_SERVER = "exporter/webhook.py"
OLD_SERVER_LAUNCH = ("import sys; from exporter.config import load_config; import old_webhook_server as w; "
                     "sys.exit(w.serve(load_config(sys.argv[1])))")


def old_server_source() -> str | None:
    """The stdlib server as it was in the last commit that had it, or None."""
    try:
        deleted_in = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--diff-filter=D", "--",
                                     OLD_SERVER], capture_output=True, text=True, check=True).stdout.strip()
        if not deleted_in:
            return None
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{deleted_in}^:{OLD_SERVER}"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


# figure -> (unit, True when higher is better)
FIGURES = {"single_posts": ("posts/s", True), "single_latency_p99": ("ms", False),
           "batched_100": ("records/s", True), "batched_100_requests": ("posts/s", True),
           "batched_100_latency_p99": ("ms", False), "batched_100_mixed": ("records/s", True)}


def measure(argv: list[str], env: dict, opts, singles: int, batches: int) -> dict | None:
    """Start the server `argv` (CONFIG in it stands for the config's path) on a fresh
    store and run the three phases; the figures, or None when the server did not start or
    a 2xx was not committed."""
    tmp = Path(tempfile.mkdtemp(prefix="kumo-webhook-bench-"))
    port = free_port()
    (tmp / "config.toml").write_text(
        f'[store]\npath = "suppression.db"\n[ingest]\nlog_dirs = []\n[export]\ndir = "snap"\n'
        f'[webhook]\nenabled = true\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\nmax_body = "10MB"\n')
    subprocess.run([sys.executable, "-m", "exporter", "-c", str(tmp / "config.toml"), "init"], cwd=tmp, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    log = open(tmp / "serve.log", "wb")
    proc = subprocess.Popen([str(tmp / "config.toml") if a == "CONFIG" else a for a in argv], cwd=tmp, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    print((tmp / "serve.log").read_text(), file=sys.stderr)
                    return None
                time.sleep(0.1)
        with mp.get_context("fork").Pool(opts.clients) as pool:
            pool.map(client, [(port, f"warm{c}", 5, 1, 1) for c in range(opts.clients)])
            warm = 5 * opts.clients
            t1, ok1, rec1, p99_1 = run_phase(pool, port, "single", opts.clients, singles, 1)
            t2, ok2, rec2, p99_2 = run_phase(pool, port, "batch", opts.clients, batches, 100)
            t3, ok3, rec3, _ = run_phase(pool, port, "mixed", opts.clients, batches, 100, every=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    from exporter.store import Store
    with Store.open(tmp / "suppression.db", create=False) as store:
        entries = store.stats(int(time.time()))["entries"]
    shutil.rmtree(tmp, ignore_errors=True)
    expected = warm + rec1 + rec2 + rec3 // 10
    if entries != expected or proc.returncode != 0:
        print(f"# MISMATCH: {entries} entries in store for {expected} records answered 2xx; "
              f"server exit {proc.returncode}", flush=True)
        return None
    return {"single_posts": ok1 / t1, "single_latency_p99": p99_1, "batched_100": rec2 / t2,
            "batched_100_requests": ok2 / t2, "batched_100_latency_p99": p99_2, "batched_100_mixed": rec3 / t3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 30 s)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--singles", type=int, default=None, help="single-record posts per client")
    ap.add_argument("--batches", type=int, default=None, help="100-record batches per client")
    ap.add_argument("--rounds", type=int, default=None, help="rounds, each server once per round (best kept)")
    ap.add_argument("--no-old", action="store_true", help="skip the old server")
    opts = ap.parse_args()
    singles = opts.singles or (400 if opts.quick else 1500)
    batches = opts.batches or (30 if opts.quick else 150)
    rounds = opts.rounds or (1 if opts.quick else 3)
    print("command: " + " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    print(f"# {opts.clients} keep-alive clients; {rounds} round(s), the servers in turns; "
          "the best of each figure is printed", flush=True)
    sys.path.insert(0, str(ROOT))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    servers = [("", [sys.executable, "-m", "exporter", "-c", "CONFIG", "serve"], env)]
    with tempfile.TemporaryDirectory(prefix="kumo-old-server-") as old_dir:
        source = None if opts.no_old else old_server_source()
        if source is not None:
            (Path(old_dir) / "old_webhook_server.py").write_text(source.replace("from .", "from exporter."))
            servers.append(("old_", [sys.executable, "-c", OLD_SERVER_LAUNCH, "CONFIG"],
                            {**env, "PYTHONPATH": os.pathsep.join([old_dir, str(ROOT)])}))
            print("# old_: the stdlib ThreadingHTTPServer this one replaced, checked out of git history", flush=True)
        elif not opts.no_old:
            print("# old server: not in this checkout's git history, skipped", flush=True)
        best: dict[str, dict[str, float]] = {}
        for round_no in range(rounds):
            order = servers if round_no % 2 == 0 else servers[::-1]
            for label, argv, server_env in order:
                figures = measure(argv, server_env, opts, singles, batches)
                if figures is None:
                    return 1
                print(f"# round {round_no + 1} {label or 'new_'}: " + ", ".join(
                    f"{name} {value:.1f}" for name, value in figures.items()), flush=True)
                kept = best.setdefault(label, figures)
                for name, (_unit, higher) in FIGURES.items():
                    kept[name] = (max if higher else min)(kept[name], figures[name])
    for name, (unit, _higher) in FIGURES.items():
        for label, _argv, _env in servers:
            value = best[label][name]
            print(f"{label}{name}: {value:.2f} {unit}" if unit == "ms" else f"{label}{name}: {value:.0f} {unit}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
