"""Tests for the latency check (mlinfra/verify/latency.py) and its histogram.

Real servers on loopback, no mocks: the reference server (``python -m mlinfra.serve``) and a
small raw-asyncio HTTP server (``EDGE_SERVER`` below, run as its own process) whose paths
misbehave on purpose: 500s, a whole-process stall, chunked and read-until-close bodies,
dropped connections, a hang. Timing assertions compare two measurements taken side by side,
or use bounds generous enough for a loaded 2-core machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from mlinfra.spec import Verify
from mlinfra.verify import latency
from mlinfra.verify.histogram import RELATIVE_ERROR, Histogram, bucket_bounds, bucket_index
from mlinfra.verify.latency import LoadResult, check_latency, default_payload, run_load

from helpers import ROOT  # noqa: E402
BODY = json.dumps(default_payload()).encode()

# Each path is one behaviour; counters are per path and live as long as the process.
EDGE_SERVER = r'''
import asyncio, sys, time

counters = {}
OK = b'{"ok": true}'

def response(status, body, extra=b""):
    reason = b"OK" if status == 200 else b"Internal Server Error"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (status, reason, len(body), extra)) + body

async def handle(reader, writer):
    try:
        while True:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            path = head.split(" ", 2)[1]
            for line in head.split("\r\n")[1:]:
                if line.lower().startswith("content-length:") and int(line.split(":", 1)[1]):
                    await reader.readexactly(int(line.split(":", 1)[1]))
            n = counters[path] = counters.get(path, 0) + 1
            if path == "/flaky":          # every 5th request fails
                writer.write(response(500 if n % 5 == 0 else 200, OK))
            elif path == "/stall":        # every 200th request freezes the whole server 300 ms
                if n % 200 == 0:
                    time.sleep(0.3)
                writer.write(response(200, OK))
            elif path == "/shrink":       # a different head of the same size each time
                writer.write(response(200, b"x" * (200 - n)))
            elif path == "/slow":
                await asyncio.sleep(0.05)
                writer.write(response(200, OK))
            elif path == "/chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
            elif path == "/interim":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, OK))
            elif path == "/close":        # keep-alive refused: one response per connection
                writer.write(response(200, OK, b"Connection: close\r\n"))
                await writer.drain()
                return
            elif path == "/eof":          # HTTP/1.0: no length, the close ends the body
                writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + OK)
                await writer.drain()
                return
            elif path == "/drop":
                return
            elif path == "/hang":
                await asyncio.sleep(3600)
            else:
                writer.write(response(200, OK))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"not ready within {timeout}s")


def spawn(args: list[str], ready) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(ready)
    except AssertionError:
        proc.kill()
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def reference_server(*args: str):
    port = free_port()

    def healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200

    proc = spawn([sys.executable, "-m", "mlinfra.serve", "--port", str(port), *args], healthy)
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def reference():
    proc, url = reference_server()
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def edge():
    port = free_port()
    proc = spawn([sys.executable, "-c", EDGE_SERVER, str(port)],
                 lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


# --------------------------------------------------------------------------- verdicts on real servers


def test_closed_loop_against_the_reference_server_passes_a_generous_budget(reference):
    result = run_load(reference + "/predict", body=BODY, requests=200, concurrency=8, warmup=20)
    check = check_latency("node-0", result, Verify(p95_ms=5000, p99_ms=10000, min_rps=1))
    assert check.passed, check.message
    assert (check.node, check.check, check.message) == ("node-0", "latency", "")
    d = check.details
    assert result.ok == 200 and result.errors == {} and d["error_rate"] == 0
    assert result.latency.total == 200  # warm-up excluded
    assert 0 < d["min_ms"] <= d["p50_ms"] <= d["p90_ms"] <= d["p95_ms"] <= d["p99_ms"] <= d["max_ms"]
    assert d["rps"] > 0 and d["mode"] == "closed" and d["late_sends"] == 0
    assert sum(count for _, count in d["histogram"]) == 200 and d["histogram"][-1][0] >= d["max_ms"]
    assert d["budget"]["p95_ms"] == 5000 and "generator" in d
    assert check.summary.startswith(f"p50 {d['p50_ms']:.1f} ms, p95 {d['p95_ms']:.1f} ms")
    json.dumps(d)  # --json must be able to carry it


def test_slow_server_fails_the_p95_budget_with_the_measured_figure():
    proc, url = reference_server("--delay-ms", "80")
    try:
        result = run_load(url + "/predict", body=BODY, requests=40, concurrency=4, warmup=4)
    finally:
        stop(proc)
    check = check_latency("slow-0", result, Verify(p95_ms=50))
    p95 = check.details["p95_ms"]
    assert not check.passed and p95 >= 80
    assert f"p95 {p95:.1f} ms > budget 50 ms" in check.message
    assert result.latency.min >= 80_000  # microseconds: every response waited the delay


def test_p99_and_throughput_budgets(reference):
    result = run_load(reference + "/predict", body=BODY, requests=50, concurrency=2, warmup=0)
    check = check_latency("n", result, Verify(p95_ms=5000, p99_ms=0.1, min_rps=10_000_000))
    assert not check.passed
    assert f"p99 {check.details['p99_ms']:.1f} ms > budget 0.1 ms" in check.message
    assert f"throughput {result.rps:.1f} req/s < min 1e+07 req/s" in check.message
    assert "p95" not in check.message


def test_error_rate_counts_500s(edge):
    result = run_load(edge + "/flaky", body=BODY, requests=100, concurrency=4, warmup=0)
    assert result.errors == {"http_500": 20} and result.ok == 80
    assert result.error_rate == pytest.approx(0.2)
    check = check_latency("n", result, Verify(p95_ms=5000, max_error_rate=0.05))
    assert not check.passed
    assert "error rate 20.0% > max 5.0% (20 x http_500)" in check.message
    assert result.latency.total == 80  # percentiles are over successful responses only
    assert check_latency("n", result, Verify(p95_ms=5000, max_error_rate=0.25)).passed


def test_errors_are_classified(edge):
    dropped = run_load(edge + "/drop", body=BODY, requests=6, concurrency=2, warmup=0)
    assert dropped.errors == {"connection": 6} and dropped.ok == 0
    check = check_latency("n", dropped, Verify())
    assert not check.passed and check.message == "no successful response in 6 requests (6 x connection)"
    hung = run_load(edge + "/hang", body=BODY, requests=4, concurrency=2, warmup=0, timeout_s=0.3)
    assert hung.errors == {"timeout": 4}
    assert 0.5 <= hung.duration_s < 5  # two rounds of ~0.3 s timeouts, not a wait forever


def test_nothing_listening_is_one_clear_failure():
    port = free_port()
    result = run_load(f"http://127.0.0.1:{port}/predict", body=BODY, requests=50, concurrency=4, warmup=5)
    assert result.aborted.startswith(f"cannot connect to 127.0.0.1:{port}: ConnectionRefusedError")
    assert result.errors == {"connect": 50} and result.error_rate == 1.0
    check = check_latency("n", result, Verify())
    assert not check.passed and check.message == result.aborted


@pytest.mark.parametrize("path", ["/chunked", "/interim", "/close", "/eof"])
def test_response_framings(edge, path):
    result = run_load(edge + path, method="GET", requests=30, concurrency=3, warmup=3)
    assert (result.ok, result.errors) == (30, {})


def test_a_changing_head_is_parsed_anew_each_time(edge):
    result = run_load(edge + "/shrink", method="GET", requests=60, concurrency=1, warmup=0, timeout_s=2)
    assert (result.ok, result.errors) == (60, {})


def test_event_loop_choice():
    from mlinfra.errors import UsageError

    with pytest.raises(UsageError, match="event_loop must be"):
        run_load("http://127.0.0.1:1/", requests=1, concurrency=1, warmup=0, event_loop="trio")


def test_closed_loop_runs_on_uvloop_when_installed_open_loop_on_asyncio(edge):
    closed = run_load(edge + "/", body=BODY, requests=50, concurrency=2, warmup=0)
    opened = run_load(edge + "/", body=BODY, requests=20, concurrency=2, warmup=0, rate=200)
    forced = run_load(edge + "/", body=BODY, requests=50, concurrency=2, warmup=0, event_loop="asyncio")
    assert closed.ok == forced.ok == 50 and opened.ok == 20
    try:
        import uvloop  # noqa: F401
    except ImportError:
        assert closed.event_loop == "asyncio"
    else:
        assert closed.event_loop == "uvloop"
        assert run_load(edge + "/", body=BODY, requests=5, concurrency=1, warmup=0, event_loop="uvloop").ok == 5
    assert opened.event_loop == forced.event_loop == "asyncio"
    assert closed.to_dict()["generator"]["event_loop"] == closed.event_loop


@pytest.mark.parametrize("event_loop", ["auto", "asyncio"])
def test_responses_timed_at_wake_up_are_never_early(edge, event_loop):
    """Responses handled in one loop wake-up share its time: none may look faster than the
    server made it (50 ms), however many arrive together."""
    result = run_load(edge + "/slow", body=BODY, requests=40, concurrency=8, warmup=0, event_loop=event_loop)
    assert result.ok == 40 and result.latency.min >= 50_000


def test_bad_input_is_a_usage_error():
    from mlinfra.errors import UsageError

    with pytest.raises(UsageError, match="http:// or https://"):
        run_load("ftp://example.com/x", body=None, requests=1, concurrency=1, warmup=0)
    with pytest.raises(UsageError, match="concurrency >= 1"):
        run_load("http://127.0.0.1:1/", body=None, requests=1, concurrency=0, warmup=0)
    with pytest.raises(UsageError, match="would break the request"):  # no header injection
        run_load("http://127.0.0.1:1/", headers={"X-A": "1\r\nX-B: 2"}, requests=1, concurrency=1, warmup=0)


def test_request_bytes_are_well_formed():
    host, port, tls, request = latency._prepare("http://[::1]:8080/p?q=1", "post", b"{}",
                                                {"content-type": "text/plain", "X-Key": "k"})
    assert (host, port, tls) == ("::1", 8080, None)
    assert request == (b"POST /p?q=1 HTTP/1.1\r\nHost: [::1]:8080\r\nUser-Agent: mlinfra-verify\r\n"
                       b"Accept: */*\r\ncontent-type: text/plain\r\nX-Key: k\r\nContent-Length: 2\r\n\r\n{}")


# --------------------------------------------------------------------------- open loop


def test_open_loop_exposes_a_stall_that_the_closed_loop_hides(edge):
    """Coordinated omission: /stall freezes the server for 300 ms every 200 requests.

    Closed loop, only the few requests in flight see the stall, so p90 stays small. Open
    loop at 200 req/s, the ~60 requests scheduled during each stall are measured from their
    scheduled time, so a large part of the distribution shows it. Service time (from the
    actual send) hides it again, which is why the scheduled time is the headline figure."""
    closed = run_load(edge + "/stall", body=BODY, requests=400, concurrency=4, warmup=0)
    opened = run_load(edge + "/stall", body=BODY, requests=400, concurrency=4, warmup=0, rate=200)
    assert closed.ok == opened.ok == 400
    c, o, s = closed.percentiles_ms(), opened.percentiles_ms(), opened.percentiles_ms("service")
    assert c["max_ms"] >= 280 and o["max_ms"] >= 280  # both saw a stall
    assert o["p90_ms"] >= 50 and o["p90_ms"] > 5 * c["p90_ms"]
    assert s["p90_ms"] < o["p90_ms"] / 3
    assert opened.late_sends > 0 and closed.late_sends == 0
    assert opened.mode == "open" and "service" in opened.to_dict()


def test_late_sends_when_the_server_cannot_keep_up(edge):
    # 2 connections x 50 ms per request = 40 req/s of capacity, asked for 100 req/s.
    result = run_load(edge + "/slow", body=BODY, requests=60, concurrency=2, warmup=0, rate=100)
    assert result.ok == 60
    assert result.late_sends >= 30 and result.late_max_ms >= 200
    assert result.percentiles_ms()["p95_ms"] > 2 * result.percentiles_ms("service")["p95_ms"]
    check = check_latency("n", result, Verify(p95_ms=10_000))
    assert check.passed and f"open loop 100 req/s, {result.late_sends} late" in check.summary


def test_open_loop_at_a_modest_rate_holds_its_schedule(edge):
    result = run_load(edge + "/", body=BODY, requests=100, concurrency=4, warmup=10, rate=200)
    assert result.ok == 100
    assert 0.45 <= result.duration_s < 3  # 100 requests at 200/s: 0.5 s if on time
    assert result.late_sends < 50  # generous: a loaded machine may delay some


# --------------------------------------------------------------------------- self-check


def test_starved_generator_is_flagged(edge):
    """Another thread hogs the GIL, so the generator's loop runs late: a saturated
    generator's numbers are the generator's, and the result must say so."""
    stop_hog = threading.Event()

    def hog() -> None:
        while not stop_hog.is_set():
            pass

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    thread = threading.Thread(target=hog)
    thread.start()
    try:
        result = run_load(edge + "/", body=BODY, requests=20, concurrency=2, warmup=0, rate=40)
    finally:
        stop_hog.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert result.saturated and result.loop_lag_p99_ms > latency.LAG_SATURATED_MS
    assert any(reason.startswith("event-loop lag p99") for reason in result.saturation)
    check = check_latency("n", result, Verify(p95_ms=0.1))
    assert "[generator saturated]" in check.summary
    assert "load generator saturated (event-loop lag p99" in check.message


def test_cpu_bound_generator_is_flagged():
    result = LoadResult("http://x/", "closed", 10, 1, 0, 0, cpu_fraction=0.97)
    assert result.saturation == ["generator CPU 97% of one core (limit 90%)"]
    assert not LoadResult("http://x/", "closed", 10, 1, 0, 0, cpu_fraction=0.5).saturated


def test_run_load_works_inside_a_running_event_loop(reference):
    import asyncio

    async def caller() -> LoadResult:
        return run_load(reference + "/predict", body=BODY, requests=10, concurrency=2, warmup=0)

    assert asyncio.run(caller()).ok == 10


# --------------------------------------------------------------------------- histogram


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_histogram_percentiles_match_exact_ones_within_the_stated_error(seed):
    rng = np.random.default_rng(seed)
    # Latency-like: lognormal around 2 ms (in µs), a 1% tail of 200-2000 ms stalls, some tiny values.
    values = np.concatenate([rng.lognormal(np.log(2000), 0.6, 20_000), rng.uniform(2e5, 2e6, 200),
                             rng.integers(0, 300, 300)]).astype(np.int64)
    hist = Histogram()
    for value in values:
        hist.record(int(value))
    assert (hist.total, hist.min, hist.max, hist.sum) == (len(values), values.min(), values.max(), values.sum())
    for p in (0, 0.1, 1, 10, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100):
        exact = int(np.percentile(values, p, method="inverted_cdf"))
        got = hist.percentile(p)
        assert exact <= got <= exact * (1 + RELATIVE_ERROR), (p, exact, got)


def test_histogram_buckets_tile_the_integers():
    previous_high = -1
    for index in range(0, 3000):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1 and high >= low
        assert bucket_index(low) == bucket_index(high) == index
        assert high - low <= max(low * RELATIVE_ERROR, 0)
        previous_high = high


def test_histogram_small_values_are_exact_and_merge_adds_up():
    a, b, both = Histogram(), Histogram(), Histogram()
    for value in range(256):
        a.record(value)
        both.record(value)
    for value in (10**3, 10**6, 10**9):
        b.record(value)
        both.record(value)
    assert [a.percentile(p) for p in (0, 50, 100)] == [0, 127, 255]
    a.merge(b)
    assert (a.counts, a.total, a.min, a.max, a.sum) == (both.counts, both.total, both.min, both.max, both.sum)
    assert Histogram().percentile(99) == 0 and Histogram().coarse() == []


def test_coarse_histogram_is_small_and_complete():
    hist = Histogram()
    for value in [80_000] * 50 + [80_500] * 40 + [312_460] * 2:
        hist.record(value)
    rows = hist.coarse()
    assert 1 < len(rows) <= 12 and sum(count for _, count in rows) == 92
    assert rows[-1][0] >= 312.46 and rows[-1][1] == 2
    assert [upper for upper, _ in rows] == sorted(upper for upper, _ in rows)
    single = Histogram()
    single.record(1500)
    assert single.coarse() == [[1.5, 1]]
