"""`mlinfra serve` against a minimal aiohttp handler, side by side. Prints, never asserts.

Two servers, each its own process on loopback:
* minimal: aiohttp's documented ``web.Application`` with one ``POST /predict`` route returning a
  fixed JSON body (and ``GET /health`` for start-up timing), on the default asyncio loop:
  the ceiling for any aiohttp server on this machine;
* mlinfra: ``python -m mlinfra.serve`` (the reference server), same loop, default payload.
``--baseline FILE`` adds a third: an older copy of ``mlinfra/serve.py`` run as a script, to
measure a change before and after in one run.

Throughput: ``wrk -t1 -c8`` (``--concurrency``), every request ``POST /predict`` with the
default one-instance payload (``--batch N`` for N instances). The server is pinned to CPU 1
and wrk to CPU 0; servers take turns round by round and the median of the rounds is printed
with the min-max spread, because the machine may be shared with other work.

Start-up: the time from spawning the process to its first ``200`` on ``/health``, polled
every millisecond over a raw socket: import, listen and model load. Measured one at a time
(median of ``--starts``), and for ``--fleet`` servers started at once, as the local target
does (time until the last one is ready). ``mlinfra serve`` through the CLI entry point is
timed too, since that is the command stacks run.

    .venv/bin/python bench/serve.py [--duration 3] [--rounds 3] [--baseline /tmp/serve_old.py]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_CPU, GENERATOR_CPU = "1", "0"
INSTANCE = {"hour": 14, "day_of_week": 2, "price": 9.99, "promo": 1, "temperature": 21.5}

MINIMAL = r'''
import sys
from aiohttp import web

BODY = b'{"predictions": [101.3], "model": "demand-ridge", "version": "1"}'

async def predict(request):
    return web.Response(body=BODY, content_type="application/json")

async def health(request):
    return web.Response(body=b'{"status": "ok"}', content_type="application/json")

app = web.Application()
app.router.add_post("/predict", predict)
app.router.add_get("/health", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_wrk() -> bool:
    if not shutil.which("wrk"):
        print("installing wrk (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return bool(shutil.which("wrk"))


def server_command(kind: str, port: int, baseline: str | None) -> list[str]:
    if kind == "minimal":
        return [sys.executable, "-c", MINIMAL, str(port)]
    if kind == "mlinfra":
        return [sys.executable, "-m", "mlinfra.serve", "--port", str(port)]
    if kind == "mlinfra-cli":
        return [str(Path(sys.executable).with_name("mlinfra")), "serve", "--port", str(port)]
    return [sys.executable, baseline, "--port", str(port)]  # "baseline"


def health_status(port: int) -> int | None:
    """Status of GET /health, or None while nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = sock.recv(64)
        return int(head[9:12]) if head.startswith(b"HTTP/1.") else None
    except (OSError, ValueError):
        return None


def spawn(kind: str, baseline: str | None, cpu: str | None = SERVER_CPU) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = server_command(kind, port, baseline)
    if cpu is not None:
        args = ["taskset", "-c", cpu, *args]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port


def wait_ready(procs: list[tuple[subprocess.Popen, int]], timeout: float = 30.0) -> list[float]:
    """Seconds from now until each server first answers 200 on /health."""
    started = time.perf_counter()
    ready: dict[int, float] = {}
    while len(ready) < len(procs):
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"servers not ready in {timeout:g} s")
        for i, (proc, port) in enumerate(procs):
            if i in ready:
                continue
            if proc.poll() is not None:
                raise SystemExit(f"server exited early: {proc.args}")
            if health_status(port) == 200:
                ready[i] = time.perf_counter() - started
        time.sleep(0.001)
    return [ready[i] for i in range(len(procs))]


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_up(kind: str, baseline: str | None, fleet: int = 1) -> float:
    """Spawn ``fleet`` servers at once (unpinned, like the local target); seconds until all are ready."""
    started = time.perf_counter()
    procs = [spawn(kind, baseline, cpu=None) for _ in range(fleet)]
    try:
        wait_ready(procs)
        return time.perf_counter() - started
    finally:
        for proc, _ in procs:
            stop(proc)


_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(port: int, concurrency: int, duration: float, lua: Path) -> dict:
    out = subprocess.run(["taskset", "-c", GENERATOR_CPU, "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s",
                          "--latency", "-s", str(lua), f"http://127.0.0.1:{port}/predict"],
                         capture_output=True, text=True, check=True).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}
    value, unit = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    figures["p50_ms"] = float(value) * _UNIT_MS[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["errors"] = int(non2xx[1]) if non2xx else 0
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="instances per /predict request")
    parser.add_argument("--starts", type=int, default=5, help="single start-ups timed per server")
    parser.add_argument("--fleet", type=int, default=8, help="servers started at once for the fleet timing")
    parser.add_argument("--baseline", help="an older mlinfra/serve.py, run as a script beside the current one")
    args = parser.parse_args()
    if not ensure_wrk():
        raise SystemExit("wrk is needed and could not be installed")
    kinds = ["minimal", "mlinfra"] + (["baseline"] if args.baseline else [])
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    print(f"machine: {os.cpu_count()} CPUs ({model}), load average {os.getloadavg()[0]:.2f} at start")
    body = json.dumps({"instances": [INSTANCE] * args.batch})
    print(f"wrk -t1 -c{args.concurrency}, {args.rounds} rounds of {args.duration:g} s per server, taking turns; "
          f"server on CPU {SERVER_CPU}, wrk on CPU {GENERATOR_CPU}; POST /predict, {args.batch} instance(s), "
          f"{len(body)} bytes")

    with tempfile.TemporaryDirectory(prefix="mlinfra-bench-serve-") as tmp:
        lua = Path(tmp) / "post.lua"
        lua.write_text(f'wrk.method = "POST"\nwrk.body = \'{body}\'\n'
                       f'wrk.headers["Content-Type"] = "application/json"\n')
        servers = {kind: spawn(kind, args.baseline) for kind in kinds}
        try:
            wait_ready(list(servers.values()))
            for _, port in servers.values():  # untimed warm-up
                run_wrk(port, args.concurrency, 1, lua)
            runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
            for _ in range(args.rounds):
                for kind, (_, port) in servers.items():
                    runs[kind].append(run_wrk(port, args.concurrency, args.duration, lua))
        finally:
            for proc, _ in servers.values():
                stop(proc)

    print(f"\n== throughput: POST /predict, wrk -t1 -c{args.concurrency} ==")
    print(f"  {'server':<10} {'req/s (median)':>15} {'min-max':>17} {'p50 ms':>8}  vs minimal")
    rows = {kind: {"rps": statistics.median(r["rps"] for r in rs), "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                   "low": min(r["rps"] for r in rs), "high": max(r["rps"] for r in rs),
                   "errors": sum(r["errors"] for r in rs)} for kind, rs in runs.items()}
    for kind, row in rows.items():
        errors = f"  errors {row['errors']}" if row["errors"] else ""
        spread = f"{row['low']:,.0f}-{row['high']:,.0f}"
        print(f"  {kind:<10} {row['rps']:>15,.0f} {spread:>17} "
              f"{row['p50_ms']:>8.3f}  {row['rps'] / rows['minimal']['rps']:.2f}x{errors}")
    print(f"  mlinfra/minimal req/s: {rows['mlinfra']['rps'] / rows['minimal']['rps']:.2f}x   [goal >= 0.60: "
          f"{'met' if rows['mlinfra']['rps'] >= 0.6 * rows['minimal']['rps'] else 'MISSED'}]")
    if args.baseline:
        print(f"  mlinfra/baseline req/s: {rows['mlinfra']['rps'] / rows['baseline']['rps']:.2f}x")

    start_kinds = ["minimal", "mlinfra", "mlinfra-cli"] + (["baseline"] if args.baseline else [])
    singles: dict[str, list[float]] = {kind: [] for kind in start_kinds}
    fleets: dict[str, float] = {}
    for _ in range(args.starts):  # interleaved, like the throughput rounds
        for kind in start_kinds:
            singles[kind].append(start_up(kind, args.baseline))
    for kind in start_kinds:
        fleets[kind] = start_up(kind, args.baseline, args.fleet)
    print("\n== start-up: spawn to first 200 on /health (import, listen, model load), unpinned ==")
    fleet_title = f"{args.fleet} at once"
    print(f"  {'server':<12} {'one (median)':>13} {'min-max':>15} {fleet_title:>12}")
    for kind in start_kinds:
        times = singles[kind]
        spread = f"{min(times) * 1000:.0f}-{max(times) * 1000:.0f} ms"
        print(f"  {kind:<12} {statistics.median(times) * 1000:>10.0f} ms {spread:>15} {fleets[kind] * 1000:>9.0f} ms")
    if args.baseline:
        one = statistics.median(singles["mlinfra"]) / statistics.median(singles["baseline"])
        print(f"  mlinfra/baseline start-up: one {one:.2f}x, {args.fleet} at once "
              f"{fleets['mlinfra'] / fleets['baseline']:.2f}x")


if __name__ == "__main__":
    main()
