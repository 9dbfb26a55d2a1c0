"""mlinfra's latency load generator against wrk and hey. Prints, never asserts.

Two servers on loopback:
* trivial: nginx (Debian ``nginx-light``), one worker, ``return 200`` with a fixed JSON body,
  unlimited keep-alive: a C server that is not the bottleneck of any generator here;
* reference: ``python -m mlinfra.serve`` (aiohttp + numpy), the server default stacks run.

Two kinds of load, every request a ``POST /predict`` with the default payload:
* equal concurrency (closed loop): ``wrk -t1 -cC``, ``hey -cpus 1 -c C -z``, mlinfra
  ``run_load(concurrency=C)`` (on uvloop when it is installed, the default) and, as
  ``mlinfra-aio``, the same on asyncio's own loop: requests/s each reaches, p50/p99 each reports;
* equal constant rate: ``hey -c C -q R/C`` (hey's -q is per worker) and mlinfra
  ``run_load(rate=R, concurrency=C)``. wrk has no constant-rate mode (that is wrk2, which
  Debian does not ship), so it sits this one out. hey times each request from its actual
  send, so mlinfra's comparable figure is its *service time*; its headline latency (from the
  scheduled send) is printed beside it.

Fairness on a 2-core machine: the server is pinned to CPU 1 and every generator to CPU 0,
each with one thread of work (wrk -t1, hey -cpus 1, mlinfra's single event loop, run in its
own process). Tools take turns, interleaved per round, and the median of the rounds is
reported with the min-max spread, because the machine may be shared with other work.
hey prints latencies in seconds with 4 decimals: 0.1 ms resolution.

Targets (issue "Speed"), closed loop against the trivial server: at least 0.7 of wrk's
request rate, and p50 within 1.2x of wrk's at equal concurrency.

A streaming row (bench/streaming.py) follows: mlinfra's time to first token and inter-token
latency against the same figures computed from a plain client's raw recv timestamps.

    .venv/bin/python bench/loadgen.py [--duration 3] [--rounds 5] [--concurrency 8]
    .venv/bin/python bench/loadgen.py --only-streaming [--token-ms 2] [--max-tokens 64]
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mlinfra.verify.latency import default_payload, run_load  # noqa: E402

BODY = json.dumps(default_payload())
SERVER_CPU, GENERATOR_CPU = "1", "0"
NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{ default_type application/json; return 200 '{{"predictions": [101.3]}}'; }}
  }}
}}
"""
WRK_LUA = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""


# --------------------------------------------------------------------------- set-up


def ensure_tools() -> dict[str, bool]:
    missing = [pkg for pkg, exe in (("wrk", "wrk"), ("hey", "hey"), ("nginx-light", "nginx")) if not shutil.which(exe)]
    if missing:
        print(f"installing {' '.join(missing)} (apt-get) ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
        for pkg in missing:  # one at a time: a package that is missing must not stop the others
            done = subprocess.run(["apt-get", "install", "-y", "-qq", pkg], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
            if done.returncode:
                print(f"  {pkg}: not installed ({done.stderr.strip().splitlines()[-1:]}); continuing without it")
    return {exe: bool(shutil.which(exe)) for exe in ("wrk", "hey", "nginx")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early: {proc.args}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server at {url} not ready in 30 s")


def start_nginx(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    (workdir / "nginx.conf").write_text(NGINX_CONF.format(dir=workdir, port=port))
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, "nginx", "-c", str(workdir / "nginx.conf"),
                             "-p", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/predict"
    wait_ready(url, proc)
    return proc, url


def start_reference() -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, sys.executable, "-m", "mlinfra.serve", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/health", proc)
    return proc, f"http://127.0.0.1:{port}/predict"


def start_streaming_reference(token_ms: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, sys.executable, "-m", "mlinfra.serve", "--port", str(port),
                             "--token-ms", str(token_ms)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(f"http://127.0.0.1:{port}/health", proc)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- the three generators
# Each returns {"rps", "p50_ms", "p99_ms"} (+ extras), or None when the tool is missing.

_UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(url: str, concurrency: int, duration: float, lua: Path) -> dict:
    out = subprocess.run(["taskset", "-c", GENERATOR_CPU, "wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s",
                          "--latency", "-s", str(lua), url], capture_output=True, text=True, check=True).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}
    for pct in ("50", "99"):
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        figures[f"p{pct}_ms"] = float(value) * _UNIT_MS[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["errors"] = int(non2xx[1]) if non2xx else 0
    return figures


def run_hey(url: str, concurrency: int, duration: float, rate: float = 0) -> dict:
    args = ["taskset", "-c", GENERATOR_CPU, "hey", "-cpus", "1", "-c", str(concurrency), "-m", "POST",
            "-T", "application/json", "-d", BODY]
    if rate:  # a fixed number of requests at rate/concurrency per worker
        args += ["-n", str(int(rate * duration)), "-q", f"{rate / concurrency:g}"]
    else:
        args += ["-z", f"{duration:g}s"]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}
    for pct in ("50", "99"):
        figures[f"p{pct}_ms"] = float(re.search(rf"{pct}% in ([\d.]+) secs", out)[1]) * 1e3
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    figures["errors"] = sum(int(n) for code, n in codes.items() if not code.startswith("2"))
    return figures


def run_mlinfra(url: str, concurrency: int, duration: float, rate: float = 0, event_loop: str = "auto") -> dict:
    """In its own process on the generator CPU, like the other two tools."""
    args = ["taskset", "-c", GENERATOR_CPU, sys.executable, __file__, "--inner", url, str(concurrency),
            str(duration), str(rate), event_loop]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def inner(url: str, concurrency: int, duration: float, rate: float, event_loop: str) -> None:
    """One mlinfra run sized to last about ``duration`` seconds; prints JSON figures."""
    body = BODY.encode()
    if rate:
        requests = int(rate * duration)
    else:  # run_load takes a request count: size it from a short calibration run
        probe = run_load(url, body=body, requests=2000, concurrency=concurrency, warmup=200, event_loop=event_loop)
        requests = max(2000, int(probe.rps * duration))
    result = run_load(url, body=body, requests=requests, concurrency=concurrency, warmup=concurrency * 20,
                      rate=rate, event_loop=event_loop)
    data = result.to_dict()
    figures = {"rps": result.rps, "p50_ms": data["p50_ms"], "p99_ms": data["p99_ms"],
               "errors": result.error_count, "cpu": data["generator"]["cpu_percent"],
               "lag_p99_ms": data["generator"]["loop_lag_p99_ms"], "saturated": result.saturated,
               "late": result.late_sends, "loop": result.event_loop}
    if rate:
        figures.update(service_p50_ms=data["service"]["p50_ms"], service_p99_ms=data["service"]["p99_ms"])
    print(json.dumps(figures))


# --------------------------------------------------------------------------- report


def median_row(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float)) and not isinstance(runs[0][k], bool)]
    row = {k: statistics.median(r[k] for r in runs) for k in keys}
    row["rps_range"] = (min(r["rps"] for r in runs), max(r["rps"] for r in runs))
    row["saturated_runs"] = sum(1 for r in runs if r.get("saturated"))
    row["loop"] = "/".join(sorted({r["loop"] for r in runs if r.get("loop")}))
    return row


def print_table(title: str, rows: dict[str, dict], rate_mode: bool) -> None:
    print(f"\n{title}")
    print(f"  {'tool':<11} {'req/s (median)':>15} {'min-max':>17} {'p50 ms':>8} {'p99 ms':>8}  notes")
    for tool, row in rows.items():
        low, high = row["rps_range"]
        notes = [f"errors {row['errors']:g}"] if row.get("errors") else []
        if tool.startswith("mlinfra"):
            if rate_mode:
                notes.append(f"service p50 {row['service_p50_ms']:.3f} / p99 {row['service_p99_ms']:.3f} ms, "
                             f"late {row['late']:g}")
            notes.append(f"{row['loop']}, gen CPU {row['cpu']:.0f}%, loop lag p99 {row['lag_p99_ms']:.1f} ms")
            if row["saturated_runs"]:
                notes.append(f"flagged saturated in {row['saturated_runs']} run(s)")
        print(f"  {tool:<11} {row['rps']:>15,.0f} {f'{low:,.0f}-{high:,.0f}':>17} {row['p50_ms']:>8.3f} "
              f"{row['p99_ms']:>8.3f}  {'; '.join(notes)}")


def print_ratios(rows: dict[str, dict], rate_mode: bool, server: str) -> None:
    for ours_name, peer in (("mlinfra", "wrk"), ("mlinfra", "hey"), ("mlinfra-aio", "wrk")):
        ours, theirs = rows.get(ours_name), rows.get(peer)
        if not ours or not theirs:
            continue
        p50 = ours["service_p50_ms"] if rate_mode else ours["p50_ms"]
        p99 = ours["service_p99_ms"] if rate_mode else ours["p99_ms"]
        which = "service " if rate_mode else ""
        line = (f"  {ours_name}/{peer}: req/s {ours['rps'] / theirs['rps']:.2f}, "
                f"{which}p50 {p50 / theirs['p50_ms']:.2f}x, {which}p99 {p99 / theirs['p99_ms']:.2f}x")
        if ours_name == "mlinfra" and peer == "wrk" and server == "trivial" and not rate_mode:
            rps_ok = ours["rps"] >= 0.7 * theirs["rps"]
            p50_ok = p50 <= 1.2 * theirs["p50_ms"]
            line += (f"   [target req/s >= 0.70: {'met' if rps_ok else 'MISSED'}; "
                     f"p50 within 1.2x: {'met' if p50_ok else 'MISSED'}]")
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate-trivial", type=float, default=2000.0, help="constant rate against nginx, req/s")
    parser.add_argument("--rate-reference", type=float, default=500.0, help="constant rate against mlinfra serve")
    parser.add_argument("--inner", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--only-streaming", action="store_true", help="run the streaming row alone")
    parser.add_argument("--token-ms", type=float, default=2.0, help="streaming row: the server's ms per token")
    parser.add_argument("--max-tokens", type=int, default=64, help="streaming row: tokens per request")
    parser.add_argument("--stream-requests", type=int, default=40, help="streaming row: requests per run")
    parser.add_argument("--inner-streaming", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        url, concurrency, duration, rate, event_loop = args.inner
        return inner(url, int(concurrency), float(duration), float(rate), event_loop)
    from streaming import inner as inner_streaming
    from streaming import streaming_row

    if args.inner_streaming:
        tool, *numbers = args.inner_streaming
        return inner_streaming(tool, *map(int, numbers))
    stream_args = (start_streaming_reference, ["taskset", "-c", GENERATOR_CPU], args.token_ms, args.max_tokens,
                   args.stream_requests, min(args.concurrency, 4), args.rounds)
    if args.only_streaming:
        return streaming_row(*stream_args)

    have = ensure_tools()
    if not have["nginx"]:
        raise SystemExit("nginx is needed for the trivial server and could not be installed")
    cpus = os.cpu_count()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    print(f"machine: {cpus} CPUs ({model}), load average {os.getloadavg()[0]:.2f} at start")
    print(f"tools: wrk {'yes' if have['wrk'] else 'MISSING'}, hey {'yes' if have['hey'] else 'MISSING'}; "
          f"server pinned to CPU {SERVER_CPU}, each generator to CPU {GENERATOR_CPU} with one thread "
          f"(wrk -t1, hey -cpus 1, mlinfra: one event loop in its own process); tools take turns")
    print(f"{args.rounds} rounds of {args.duration:g} s per tool and mode; median (min-max of req/s) reported; "
          f"every request POST /predict with the default {len(BODY)}-byte JSON payload")
    c = args.concurrency
    with tempfile.TemporaryDirectory(prefix="mlinfra-bench-") as tmp:
        workdir = Path(tmp)
        lua = workdir / "post.lua"
        lua.write_text(WRK_LUA)
        servers = [("trivial", "nginx 1 worker, fixed body", lambda: start_nginx(workdir), args.rate_trivial),
                   ("reference", "mlinfra serve", start_reference, args.rate_reference)]
        for name, what, start, rate in servers:
            proc, url = start()
            try:
                run_mlinfra(url, c, 1.0)  # untimed: the server's first requests warm its caches
                closed: dict[str, list] = {}
                opened: dict[str, list] = {}
                for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits all alike
                    if have["wrk"]:
                        closed.setdefault("wrk", []).append(run_wrk(url, c, args.duration, lua))
                    if have["hey"]:
                        closed.setdefault("hey", []).append(run_hey(url, c, args.duration))
                    closed.setdefault("mlinfra", []).append(run_mlinfra(url, c, args.duration))
                    closed.setdefault("mlinfra-aio", []).append(run_mlinfra(url, c, args.duration, 0, "asyncio"))
                    if have["hey"]:
                        opened.setdefault("hey", []).append(run_hey(url, c, args.duration, rate))
                    opened.setdefault("mlinfra", []).append(run_mlinfra(url, c, args.duration, rate))
            finally:
                stop(proc)
            rows = {tool: median_row(runs) for tool, runs in closed.items()}
            print_table(f"== {name} server ({what}): equal concurrency {c}, closed loop ==", rows, False)
            print_ratios(rows, False, name)
            rows = {tool: median_row(runs) for tool, runs in opened.items()}
            print_table(f"== {name} server ({what}): equal constant rate {rate:g} req/s over {c} connections "
                        f"(wrk: no constant-rate mode) ==", rows, True)
            print_ratios(rows, True, name)
    streaming_row(*stream_args)


if __name__ == "__main__":
    main()
