"""The latency check: an in-process HTTP load generator and the budget verdict.

Design (practice and sources: shared/reference/verification-anchors.md, section A):

* **Client.** One ``asyncio.BufferedProtocol`` per keep-alive connection, speaking
  hand-written HTTP/1.1 (Content-Length, chunked and read-until-close bodies, 1xx interim
  responses, ``Connection: close``). CPU per request, one thread against nginx on loopback
  at concurrency 8 (this project's shared 2-core machine, so ranges): aiohttp's client
  200-350 us, asyncio streams 45-67 us, ``asyncio.Protocol`` 42-62 us, this client 20-42 us,
  wrk 10-13 us. The generator must not be the bottleneck, so the cheapest was chosen;
  httpx was not measured (10x slower than aiohttp under concurrency, encode/httpx#3215).
* **Closed loop** (``rate == 0``): ``concurrency`` connections, each sends its next request
  as soon as the previous response is complete, like wrk and hey.
* **Open loop** (``rate > 0``): request i is due at ``t0 + i / rate`` whatever happened
  before. Latency is measured from that *scheduled* time (wrk2's correction for coordinated
  omission); service time from the actual send is kept too. A request that finds every
  connection busy waits in the generator; one sent more than ``LATE_S`` behind schedule is
  a *late send* (k6's "dropped iterations", except that it is still sent and measured).
* **Percentiles** come from ``histogram.Histogram`` (HDR-style, 2 significant digits) over
  successful (2xx) responses; errors are counted by class instead, so that fast 500s cannot
  make p95 look good.
* **Self-check.** The generator's own thread CPU time over wall time, and the lag of a 5 ms
  ticker on its event loop. Above ``CPU_SATURATED`` of one core, or a lag p99 above
  ``LAG_SATURATED_MS``, the run is flagged: its figures may be the generator's, not the
  server's.

The API never prints: ``run_load`` returns a ``LoadResult``, ``check_latency`` a ``CheckResult``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from mlinfra.errors import UsageError
from mlinfra.verify.histogram import Histogram
from mlinfra.verify.http1 import Connection
from mlinfra.verify.result import CheckResult

# Python rounds epoll timeouts up to whole milliseconds, so a timer fires 0-1 ms after the
# time asked for. The open-loop scheduler asks for EARLY_S before each due time and sends
# what is due within EARLY_S, so sends land within about +-0.5 ms of the schedule; one
# more than LATE_S behind was held back by something other than the timer.
EARLY_S = 0.0005
LATE_S = 0.001
CPU_SATURATED = 0.90  # of one core: the generator is a single thread
LAG_SATURATED_MS = 10.0  # a tenth of a tight 100 ms budget
TICK_S = 0.005  # event-loop lag probe interval
PERCENTILES = (50, 90, 95, 99)

_clock = time.monotonic  # the event loop's own clock, so call_at and timestamps agree


def default_payload() -> dict:
    """A /predict body the reference server (``mlinfra serve``) accepts."""
    return {"instances": [{"hour": 14, "day_of_week": 2, "price": 9.99, "promo": 1, "temperature": 21.5}]}


@dataclass
class LoadResult:
    """Figures of one measured run. Histograms hold microseconds of successful responses."""

    url: str
    mode: str  # "closed" or "open"
    requests: int
    concurrency: int
    warmup: int
    rate: float  # offered req/s in open loop, 0 in closed loop
    duration_s: float = 0.0  # measured phase: first scheduled send to last response
    elapsed_s: float = 0.0  # the whole run: connecting, warm-up and measured phase
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # "http_500", "timeout", "connect", ...
    late_sends: int = 0
    late_max_ms: float = 0.0
    latency: Histogram = field(default_factory=Histogram)  # open loop: from the scheduled time
    service: Histogram = field(default_factory=Histogram)  # from the actual send
    cpu_fraction: float = 0.0  # generator thread CPU / wall over the measured phase
    loop_lag_p99_ms: float = 0.0
    loop_lag_max_ms: float = 0.0
    aborted: str = ""  # why the run could not take place at all (no connection possible)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        total = self.ok + self.error_count
        return self.error_count / total if total else 0.0

    @property
    def rps(self) -> float:
        """Successful responses per second over the measured phase."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def saturation(self) -> list[str]:
        """Why the generator's own figures are suspect; empty when they are not."""
        reasons = []
        if self.cpu_fraction > CPU_SATURATED:
            reasons.append(f"generator CPU {self.cpu_fraction:.0%} of one core (limit {CPU_SATURATED:.0%})")
        if self.loop_lag_p99_ms > LAG_SATURATED_MS:
            reasons.append(f"event-loop lag p99 {self.loop_lag_p99_ms:.1f} ms (limit {LAG_SATURATED_MS:g} ms)")
        return reasons

    @property
    def saturated(self) -> bool:
        return bool(self.saturation)

    def percentiles_ms(self, which: str = "latency") -> dict[str, float]:
        hist = self.latency if which == "latency" else self.service
        figures = {f"p{p}_ms": hist.percentile(p) / 1000 for p in PERCENTILES}
        figures.update(min_ms=hist.min / 1000, mean_ms=hist.mean / 1000, max_ms=hist.max / 1000)
        return figures

    def to_dict(self) -> dict:
        data = {"url": self.url, "mode": self.mode, "requests": self.requests, "concurrency": self.concurrency,
                "warmup": self.warmup, "rate": self.rate, "duration_s": self.duration_s, "rps": self.rps,
                "ok": self.ok, "errors": dict(self.errors), "error_rate": self.error_rate,
                **self.percentiles_ms("latency"), "late_sends": self.late_sends, "late_max_ms": self.late_max_ms,
                "late_threshold_ms": LATE_S * 1000,
                "generator": {"cpu_percent": round(self.cpu_fraction * 100, 1),
                              "loop_lag_p99_ms": self.loop_lag_p99_ms, "loop_lag_max_ms": self.loop_lag_max_ms,
                              "saturated": self.saturated, "reasons": self.saturation},
                "histogram": self.latency.coarse()}
        if self.mode == "open":
            data["service"] = self.percentiles_ms("service")
        if self.aborted:
            data["aborted"] = self.aborted
        return data


class _Run:
    """Drives the connections through the warm-up and the measured phase."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, request: bytes, head_only: bool,
                 connections: int, timeout_s: float) -> None:
        self.host, self.port, self.tls, self.request, self.head_only = host, port, tls, request, head_only
        self.timeout_s = timeout_s
        self.loop = asyncio.get_running_loop()
        self.conns = [Connection(self) for _ in range(connections)]
        self.idle: list[Connection] = []
        self.queue: collections.deque[float] = collections.deque()  # open loop: due times
        self.result: LoadResult | None = None  # None during warm-up: nothing is recorded
        self.to_send = self.outstanding = self.count = 0
        self.open = self.stopped = False
        self.phase_done: asyncio.Future | None = None

    async def connect(self, conn: Connection) -> str:
        """Open ``conn``; returns "" or why not (a message)."""
        try:
            await asyncio.wait_for(self.loop.create_connection(
                lambda: conn, self.host, self.port, ssl=self.tls), self.timeout_s)
            return ""
        except (OSError, asyncio.TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def run_phase(self, count: int, rate: float, result: LoadResult | None) -> None:
        self.result, self.open, self.outstanding, self.count = result, rate > 0, count, count
        self.phase_done = self.loop.create_future()
        self.idle = list(self.conns)
        if self.open:
            self.to_send, self.interval, self.next_i = 0, 1.0 / rate, 0
            self.t0 = _clock()
            self._schedule()
        else:
            self.to_send = count
            while self.idle and self.to_send:
                self.to_send -= 1
                self.resend(self.idle.pop(), _clock())
        await self.phase_done

    def _schedule(self) -> None:
        """Open loop: queue every request that is due, hand them to idle connections, and
        wake at the next due time. Never waits for a response: that is the point."""
        horizon, count = _clock() + EARLY_S, self.count
        while self.next_i < count and self.t0 + self.next_i * self.interval <= horizon:
            self.queue.append(self.t0 + self.next_i * self.interval)
            self.next_i += 1
        while self.queue and self.idle:
            self.resend(self.idle.pop(), self.queue.popleft())
        if self.next_i < count:
            self.loop.call_at(self.t0 + self.next_i * self.interval - EARLY_S, self._schedule)

    def resend(self, conn: Connection, t_intended: float) -> None:
        if conn.transport is None or conn.transport.is_closing():
            self.loop.create_task(self._reconnect_and_send(conn, t_intended))
        else:
            self._send(conn, t_intended)

    def _send(self, conn: Connection, t_intended: float) -> None:
        conn.send(t_intended)
        if self.open and self.result is not None and conn.t_sent - t_intended > LATE_S:
            self.result.late_sends += 1
            self.result.late_max_ms = max(self.result.late_max_ms, (conn.t_sent - t_intended) * 1000)

    async def _reconnect_and_send(self, conn: Connection, t_intended: float) -> None:
        conn.busy = True  # reserved while connecting
        error = await self.connect(conn)
        if error:
            conn.busy = False
            self.finished(conn, None, "connect")
        else:
            self._send(conn, t_intended)

    def finished(self, conn: Connection, status: int | None, error: str) -> None:
        """One request is over (response, error or timeout): record it, send the next one."""
        result = self.result
        if result is not None:
            if status is not None and 200 <= status < 300:
                now = _clock()
                result.ok += 1
                # From the scheduled time, or the send if that was (at most EARLY_S) earlier.
                result.latency.record(int((now - min(conn.t_intended, conn.t_sent)) * 1e6))
                if self.open:
                    result.service.record(int((now - conn.t_sent) * 1e6))
            else:
                key = error or f"http_{status}"
                result.errors[key] = result.errors.get(key, 0) + 1
        self.outstanding -= 1
        if not self.outstanding:
            if not self.phase_done.done():
                self.phase_done.set_result(None)
            return
        if self.open:
            if self.queue:
                self.resend(conn, self.queue.popleft())
            else:
                self.idle.append(conn)
        elif self.to_send:
            self.to_send -= 1
            self.resend(conn, _clock())

    def watchdog(self) -> None:
        """Time out requests in flight too long (one sweep, not one timer per request)."""
        if self.stopped:
            return
        now = _clock()
        for conn in self.conns:
            if conn.busy and conn.transport is not None and now > conn.deadline:
                conn._fail("timeout")
        self.loop.call_later(min(0.05, self.timeout_s / 4), self.watchdog)


# --------------------------------------------------------------------------- load runs


async def run_load_async(url: str, *, method: str = "POST", body: bytes | None = None,
                         headers: dict[str, str] | None = None, requests: int, concurrency: int,
                         warmup: int, rate: float = 0, timeout_s: float = 10) -> LoadResult:
    """``run_load`` for callers that already run an event loop."""
    host, port, tls, request = _prepare(url, method, body, headers)
    if requests < 1 or concurrency < 1 or warmup < 0 or rate < 0 or timeout_s <= 0:
        raise UsageError("load run needs requests >= 1, concurrency >= 1, warmup >= 0, rate >= 0, timeout_s > 0")
    started = _clock()
    result = LoadResult(url, "open" if rate > 0 else "closed", requests, concurrency, warmup, rate)
    if rate <= 0:
        result.service = result.latency  # closed loop: scheduled and actual send are the same
    run = _Run(host, port, tls, request, method.upper() == "HEAD", min(concurrency, max(requests, warmup)),
               timeout_s)
    failures = await asyncio.gather(*(run.connect(conn) for conn in run.conns))
    if all(failures):  # nothing to measure: say why once instead of N times
        result.aborted = f"cannot connect to {host}:{port}: {failures[0]}"
        result.errors["connect"] = requests
        result.elapsed_s = _clock() - started
        return result
    lags: list[float] = []
    watchdog = run.loop.call_soon(run.watchdog)
    try:
        if warmup:
            await run.run_phase(warmup, 0, None)
        ticker = asyncio.ensure_future(_measure_lag(lags))
        cpu0, wall0 = time.thread_time(), _clock()
        await run.run_phase(requests, rate, result)
        result.duration_s = _clock() - wall0
        result.cpu_fraction = (time.thread_time() - cpu0) / result.duration_s if result.duration_s > 0 else 0.0
        ticker.cancel()
    finally:
        watchdog.cancel()
        run.stopped = True  # a sweep already rescheduled returns without rescheduling
        for conn in run.conns:
            if conn.transport is not None:
                conn.transport.close()
    if lags:
        lags.sort()
        result.loop_lag_p99_ms = lags[min(len(lags) - 1, int(0.99 * len(lags)))] * 1000
        result.loop_lag_max_ms = lags[-1] * 1000
    result.elapsed_s = _clock() - started
    return result


def run_load(url: str, *, method: str = "POST", body: bytes | None = None, headers: dict[str, str] | None = None,
             requests: int, concurrency: int, warmup: int, rate: float = 0, timeout_s: float = 10) -> LoadResult:
    """Send ``warmup`` unrecorded requests, then ``requests`` measured ones, to ``url``.

    Closed loop at ``concurrency`` when ``rate`` is 0; otherwise open loop at ``rate``
    requests/s over at most ``concurrency`` connections. ``body`` is sent as JSON unless
    ``headers`` names another Content-Type. Raises ``UsageError`` for a bad URL or count;
    unreachable servers, errors and timeouts are figures in the result, never exceptions."""
    coro = run_load_async(url, method=method, body=body, headers=headers, requests=requests,
                          concurrency=concurrency, warmup=warmup, rate=rate, timeout_s=timeout_s)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a running loop (a notebook, an async app): use a thread of its own,
    # so the measurement does not share, or block, that loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _measure_lag(lags: list[float]) -> None:
    """How late a timer on our own loop fires: work queued ahead of it delays responses too."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + TICK_S
        await asyncio.sleep(TICK_S)
        lags.append(max(loop.time() - due, 0.0))


def _prepare(url: str, method: str, body: bytes | None,
             headers: dict[str, str] | None) -> tuple[str, int, ssl.SSLContext | None, bytes]:
    """Parse the URL and build the request bytes once: every request is identical."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"cannot load-test {url!r}: need an http:// or https:// URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UsageError(f"cannot load-test {url!r}: {exc}") from None
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    if parts.port:
        host_header += f":{parts.port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    fields = {"Host": host_header, "User-Agent": "mlinfra-verify", "Accept": "*/*"}
    if body is not None:
        fields["Content-Type"] = "application/json"
    for name, value in (headers or {}).items():
        for existing in [k for k in fields if k.lower() == name.lower()]:
            del fields[existing]
        fields[name] = value
    fields = {k: v for k, v in fields.items() if k.lower() not in ("content-length", "connection")}
    if not method.isalpha() or any(c in str(x) for k, v in fields.items() for x in (k, v) for c in "\r\n\0"):
        raise UsageError(f"cannot load-test {url!r}: a method or header would break the request line")
    if body is not None or method.upper() in ("POST", "PUT", "PATCH"):
        fields["Content-Length"] = str(len(body or b""))
    head = f"{method.upper()} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    return host, port, tls, head.encode("latin-1") + b"\r\n" + (body or b"")


# --------------------------------------------------------------------------- verdict


def check_latency(node: str, result: LoadResult, verify) -> CheckResult:
    """Judge ``result`` against the stack's ``[verify]`` budget (p95_ms, p99_ms, max_error_rate,
    min_rps; 0 means no budget for p99 and rps). Messages carry figure and budget."""
    figures = result.percentiles_ms()
    problems = []
    if result.aborted:
        problems.append(result.aborted)
    elif not result.ok:
        problems.append(f"no successful response in {result.requests} requests ({_describe(result.errors)})")
    else:
        if figures["p95_ms"] > verify.p95_ms:
            problems.append(f"p95 {figures['p95_ms']:.1f} ms > budget {verify.p95_ms:g} ms")
        if verify.p99_ms and figures["p99_ms"] > verify.p99_ms:
            problems.append(f"p99 {figures['p99_ms']:.1f} ms > budget {verify.p99_ms:g} ms")
    if result.ok and result.error_rate > verify.max_error_rate:
        problems.append(f"error rate {result.error_rate:.1%} > max {verify.max_error_rate:.1%} "
                        f"({_describe(result.errors)})")
    if result.ok and verify.min_rps and result.rps < verify.min_rps:
        problems.append(f"throughput {result.rps:.1f} req/s < min {verify.min_rps:g} req/s")
    if result.ok:
        summary = (f"p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms, "
                   f"p99 {figures['p99_ms']:.1f} ms, {result.rps:.0f} req/s, errors {result.error_rate:.1%}")
    else:
        summary = "no successful response"
    if result.mode == "open":
        summary += f", open loop {result.rate:g} req/s, {result.late_sends} late"
    if result.saturated:
        note = "load generator saturated (" + "; ".join(result.saturation) + "): figures may be the generator's"
        summary += " [generator saturated]"
        if problems:
            problems.append(note)
    details = result.to_dict()
    details["budget"] = {"p95_ms": verify.p95_ms, "p99_ms": verify.p99_ms,
                         "max_error_rate": verify.max_error_rate, "min_rps": verify.min_rps}
    return CheckResult(node, "latency", not problems, summary, message="; ".join(problems),
                       elapsed_s=result.elapsed_s, details=details)


def _describe(errors: dict[str, int]) -> str:
    """'12 x http_500, 3 x timeout', most frequent first."""
    return ", ".join(f"{count} x {kind}" for kind, count in sorted(errors.items(), key=lambda kv: -kv[1]))
