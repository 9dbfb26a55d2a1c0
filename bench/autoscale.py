"""Autoscaled serving on the local target, measured side by side in one run (prints; asserts nothing).

- cold start: the first request to a stack at zero replicas (held by Serve's proxy, answered)
- 0→N: time until N replicas run under a fixed closed-loop load, from zero
- back to zero: time from the end of the load until no replica runs (downscale_delay_s included)
- Serve path overhead: per-request latency through the endpoint vs calling the same server
  directly, sequential requests, medians and p95
- queue depth: the largest `mlinfra status` showed during the ramp (Serve's router gauges)

    .venv/bin/python bench/autoscale.py [--clients 8] [--max-replicas 4] [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlinfra import Stack

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "targets" / "serve" / "slow_server.py"
SLOW_MS = 50


def post(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    request = urllib.request.Request(url + "/predict", data=b"{}", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status, time.perf_counter() - started
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - started


def replicas(stack: Stack) -> int:
    return int((stack.status().autoscale or {}).get("replicas") or 0)


def until(what, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if what():
            return time.monotonic() - started
        time.sleep(0.5)
    return None


def sequential(url: str, n: int) -> list[float]:
    post(url)  # a warm connection path, not part of the figures
    return [post(url)[1] * 1000 for _ in range(n)]


def p95(values: list[float]) -> float:
    return sorted(values)[int(0.95 * (len(values) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="bench-autoscale-"))
    (directory / "mlinfra.toml").write_text(
        f'name = "ray-bench"\n[serve]\ncommand = "SLOW_MS={SLOW_MS} exec {sys.executable} {SERVER}"\n'
        f"[autoscale]\nmin_replicas = 0\nmax_replicas = {args.max_replicas}\ntarget_ongoing_requests = 1\n"
        "upscale_delay_s = 1\ndownscale_delay_s = 5\n"
    )
    stack = Stack.load(directory / "mlinfra.toml")
    rows: list[tuple[str, str]] = []
    started = time.monotonic()
    stack.up(verify=False)
    rows.append(("up (Ray head + Serve app)", f"{time.monotonic() - started:.1f} s"))
    direct = None
    try:
        endpoint = stack.status().endpoint
        status, cold = post(endpoint)
        rows.append(("cold start, first request at 0 replicas", f"{cold:.2f} s (HTTP {status})"))

        through = sequential(endpoint, args.requests)  # one warm replica
        port = _free_port()
        direct = subprocess.Popen([sys.executable, str(SERVER)], env=dict(os.environ, PORT=str(port), SLOW_MS=str(SLOW_MS)))
        time.sleep(0.5)
        straight = sequential(f"http://127.0.0.1:{port}", args.requests)
        over = statistics.median(through) - statistics.median(straight)
        rows.append(("direct: median / p95", f"{statistics.median(straight):.1f} / {p95(straight):.1f} ms"))
        rows.append(("via Serve: median / p95", f"{statistics.median(through):.1f} / {p95(through):.1f} ms"))
        rows.append(("Serve path overhead", f"+{over:.1f} ms per request, ratio {statistics.median(through) / statistics.median(straight):.2f}x"))

        rows.append(("idle → 0 after the first requests", _fmt(until(lambda: replicas(stack) == 0, 90))))
        stop = threading.Event()
        codes: list[int] = []

        def client() -> None:
            while not stop.is_set():
                codes.append(post(endpoint)[0])

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        load_start = time.monotonic()
        for thread in threads:
            thread.start()
        depths: list[int] = []

        def ramp() -> int:  # replicas, noting the queue depth status shows on the way
            scaling = stack.status().autoscale or {}
            if scaling.get("queue_depth") is not None:
                depths.append(scaling["queue_depth"])
            return int(scaling.get("replicas") or 0)

        first = until(lambda: ramp() >= 1, 60)
        above = until(lambda: ramp() > 1, 60)
        full = until(lambda: ramp() >= args.max_replicas, 90)
        reached = time.monotonic() - load_start
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
        rows.append((f"0→1 under {args.clients} clients", _fmt(first)))
        rows.append((f"0→>1 under {args.clients} clients", _fmt(None if above is None else (first or 0) + above)))
        rows.append((f"0→{args.max_replicas} under {args.clients} clients", f"{reached:.1f} s" if full is not None else "not reached"))
        rows.append(("requests during the ramp / non-200", f"{len(codes)} / {sum(1 for c in codes if c != 200)}"))
        rows.append(("peak queue depth in status during the ramp", f"{max(depths)} ({len(depths)} polls)" if depths else "none read"))
        rows.append(("load end → 0 replicas (downscale_delay_s 5)", _fmt(until(lambda: replicas(stack) == 0, 120))))
    finally:
        if direct is not None:
            direct.terminate()
        down_start = time.monotonic()
        stack.down(force=True)
        rows.append(("down (this stack's Ray processes only)", f"{time.monotonic() - down_start:.1f} s"))
    width = max(len(name) for name, _ in rows)
    print(f"autoscale bench (server {SLOW_MS} ms per request, {os.cpu_count()} cores, Ray Serve)")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def _fmt(seconds: float | None) -> str:
    return "not within the bound" if seconds is None else f"{seconds:.1f} s"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
