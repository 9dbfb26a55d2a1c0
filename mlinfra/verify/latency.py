"""The latency check: an in-process HTTP load generator and the budget verdict.

Design (practice and sources: shared/reference/verification-anchors.md, section A):

* **Client** (``http1``): one ``asyncio.BufferedProtocol`` per keep-alive connection,
  hand-written HTTP/1.1. CPU per request, one thread against nginx on loopback at
  concurrency 8 (this project's shared 2-core machine, so ranges): aiohttp's client
  200-350 us, asyncio streams 45-67 us, ``asyncio.Protocol`` 42-62 us, this client 7-8 us
  on asyncio's loop and 5.5-6 us on uvloop, wrk 5 us; httpx was not measured (10x slower
  than aiohttp under concurrency, encode/httpx#3215).
* **Event loop**: a closed loop runs on uvloop when it is installed (its C transports cost
  a quarter less CPU per request), an open loop on asyncio's, since uvloop's timers have
  millisecond resolution, too coarse for the schedule.
* **Closed loop** (``rate == 0``): ``concurrency`` connections, each sends its next request
  as soon as the previous response is complete, like wrk and hey.
* **Open loop** (``rate > 0``): request i is due at ``t0 + i / rate`` whatever happened
  before. Latency is measured from that *scheduled* time (wrk2's correction for coordinated
  omission); service time from the actual send is kept too. A request that finds every
  connection busy waits in the generator; one sent more than ``LATE_S`` behind schedule is
  a *late send* (k6's "dropped iterations", except that it is still sent and measured).
* **Response time** is when the event loop woke up with the response readable (the time of
  the first response handled in that loop iteration), not when the generator got round to
  it after the others of the same wake-up: that wait is the generator's, not the server's.
  A response that took more than one read, or answers a request sent after the wake-up,
  is timed when it is handled.
* **Percentiles** come from ``histogram.Histogram`` (HDR-style, 2 significant digits) over
  successful (2xx) responses, counted per microsecond below ``EXACT_US`` during the run;
  errors are counted by class instead, so that fast 500s cannot make p95 look good.
* **Self-check.** The generator's own thread CPU time over wall time, and the lag of a 5 ms
  ticker on its event loop. Above ``CPU_SATURATED`` of one core, or a lag p99 above
  ``LAG_SATURATED_MS``, the run is flagged: its figures may be the generator's.

The API never prints: ``run_load`` returns a ``LoadResult``, ``check_latency`` a ``CheckResult``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ssl
import time
from dataclasses import dataclass, field

from mlinfra.errors import UsageError
from mlinfra.verify.histogram import Histogram, fold_counts
from mlinfra.verify.http1 import Connection, Pool, loop_factory, loop_name, run_on
from mlinfra.verify.http1 import prepare_request as _prepare
from mlinfra.verify.result import ErrorTally

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
EXACT_US = 1 << 16  # latencies below 65.5 ms are counted per microsecond, then folded in bulk

_clock = time.monotonic  # the event loop's own clock, so call_at and timestamps agree


def default_payload() -> dict:
    """A /predict body the reference server (``mlinfra serve``) accepts."""
    return {"instances": [{"hour": 14, "day_of_week": 2, "price": 9.99, "promo": 1, "temperature": 21.5}]}


@dataclass
class LoadResult(ErrorTally):
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
    event_loop: str = ""  # "uvloop" or "asyncio": the loop the generator ran on

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
        data = {
            "url": self.url,
            "mode": self.mode,
            "requests": self.requests,
            "concurrency": self.concurrency,
            "warmup": self.warmup,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "rps": self.rps,
            "ok": self.ok,
            "errors": dict(self.errors),
            "error_rate": self.error_rate,
            **self.percentiles_ms("latency"),
            "late_sends": self.late_sends,
            "late_max_ms": self.late_max_ms,
            "late_threshold_ms": LATE_S * 1000,
            "generator": {
                "cpu_percent": round(self.cpu_fraction * 100, 1),
                "loop_lag_p99_ms": self.loop_lag_p99_ms,
                "loop_lag_max_ms": self.loop_lag_max_ms,
                "saturated": self.saturated,
                "reasons": self.saturation,
                "event_loop": self.event_loop,
            },
            "histogram": self.latency.coarse(),
        }
        if self.mode == "open":
            data["service"] = self.percentiles_ms("service")
        if self.aborted:
            data["aborted"] = self.aborted
        return data


class _Run(Pool):
    """Drives the pool's connections through the warm-up and the measured phase."""

    def __init__(
        self,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        request: bytes,
        head_only: bool,
        connections: int,
        timeout_s: float,
    ) -> None:
        super().__init__(host, port, tls, request, head_only, connections, timeout_s)
        self.idle: list[Connection] = []
        self.queue: collections.deque[float] = collections.deque()  # open loop: due times
        self.result: LoadResult | None = None  # None during warm-up: nothing is recorded
        self.to_send = self.outstanding = self.count = 0
        self.open = False
        self.wake = 0.0  # when the loop iteration now running handled its first response
        self.phase_done: asyncio.Future | None = None
        self.latency_counts: list[int] = []  # per microsecond below EXACT_US, folded in when the
        self.service_counts: list[int] = []  # phase ends: cheaper per response than Histogram.record

    async def run_phase(self, count: int, rate: float, result: LoadResult | None) -> None:
        self.result, self.open, self.outstanding, self.count = result, rate > 0, count, count
        self.phase_done = self.loop.create_future()
        self.idle = list(self.conns)
        if result is not None:
            self.latency_counts = [0] * EXACT_US
            self.service_counts = [0] * EXACT_US if self.open else self.latency_counts
        if self.open:
            self.to_send, self.interval, self.next_i = 0, 1.0 / rate, 0
            self.t0 = _clock()
            self._schedule()
        else:
            self.to_send = count
            while self.idle and self.to_send:
                self.to_send -= 1
                self.resend(self.idle.pop(), _clock())
        try:
            await self.phase_done
        finally:
            if result is not None:
                fold_counts(self.latency_counts, result.latency)
                if self.open:
                    fold_counts(self.service_counts, result.service)

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

    def _send(self, conn: Connection, t_intended: float) -> None:
        conn.send(t_intended)
        if self.open and self.result is not None and conn.t_sent - t_intended > LATE_S:
            self.result.late_sends += 1
            self.result.late_max_ms = max(self.result.late_max_ms, (conn.t_sent - t_intended) * 1000)

    def finished(self, conn: Connection, status: int | None, error: str) -> None:
        """One request is over (response, error or timeout): record it, send the next one."""
        result = self.result
        if result is not None:
            if status is not None and 200 <= status < 300:
                now = self.wake
                if not now:  # the first response handled since the loop woke up
                    now = self.wake = _clock()
                    self.loop.call_soon(self._woke)
                elif conn.reads != 1 or conn.t_sent >= now:  # not whole in one read at wake-up
                    now = _clock()
                result.ok += 1
                # From the scheduled time, or the send if that was (at most EARLY_S) earlier.
                t_sent = conn.t_sent
                t_from = conn.t_intended if conn.t_intended < t_sent else t_sent
                us = int((now - t_from) * 1e6)
                if us < EXACT_US:
                    self.latency_counts[us] += 1
                else:
                    result.latency.record(us)
                if self.open:
                    us = int((now - t_sent) * 1e6)
                    if us < EXACT_US:
                        self.service_counts[us] += 1
                    else:
                        result.service.record(us)
            else:
                key = error or f"http_{status}"
                result.errors[key] = result.errors.get(key, 0) + 1
        self.outstanding -= 1
        if not self.outstanding:
            if self.phase_done is not None and not self.phase_done.done():
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

    def _woke(self) -> None:
        self.wake = 0.0


# --------------------------------------------------------------------------- load runs


async def run_load_async(
    url: str,
    *,
    method: str = "POST",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    requests: int,
    concurrency: int,
    warmup: int,
    rate: float = 0,
    timeout_s: float = 10,
) -> LoadResult:
    """``run_load`` for callers that already run an event loop."""
    host, port, tls, request = _prepare(url, method, body, headers)
    if requests < 1 or concurrency < 1 or warmup < 0 or rate < 0 or timeout_s <= 0:
        raise UsageError("load run needs requests >= 1, concurrency >= 1, warmup >= 0, rate >= 0, timeout_s > 0")
    started = _clock()
    result = LoadResult(
        url,
        "open" if rate > 0 else "closed",
        requests,
        concurrency,
        warmup,
        rate,
        event_loop=loop_name(asyncio.get_running_loop()),
    )
    if rate <= 0:
        result.service = result.latency  # closed loop: scheduled and actual send are the same
    run = _Run(host, port, tls, request, method.upper() == "HEAD", min(concurrency, max(requests, warmup)), timeout_s)
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


def run_load(
    url: str,
    *,
    method: str = "POST",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    requests: int,
    concurrency: int,
    warmup: int,
    rate: float = 0,
    timeout_s: float = 10,
    event_loop: str = "auto",
) -> LoadResult:
    """Send ``warmup`` unrecorded requests, then ``requests`` measured ones, to ``url``.

    Closed loop at ``concurrency`` when ``rate`` is 0; otherwise open loop at ``rate``
    requests/s over at most ``concurrency`` connections. ``body`` is sent as JSON unless
    ``headers`` names another Content-Type. Raises ``UsageError`` for a bad URL or count;
    unreachable servers, errors and timeouts are figures in the result, never exceptions.

    ``event_loop``: "auto" runs a closed loop on uvloop when it is installed (its C
    transports cost the generator less per request) and everything else on asyncio's own
    loop, whose timers the open-loop schedule needs (uvloop's have millisecond
    resolution); "asyncio" or "uvloop" choose one (uvloop must then be installed)."""
    coro = run_load_async(
        url,
        method=method,
        body=body,
        headers=headers,
        requests=requests,
        concurrency=concurrency,
        warmup=warmup,
        rate=rate,
        timeout_s=timeout_s,
    )
    try:
        factory = loop_factory(event_loop, rate)
    except UsageError:
        coro.close()
        raise
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_on(factory, coro)
    # Called from inside a running loop (a notebook, an async app): use a thread of its own,
    # so the measurement does not share, or block, that loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(run_on, factory, coro).result()


async def _measure_lag(lags: list[float]) -> None:
    """How late a timer on our own loop fires: work queued ahead of it delays responses too.
    Timed with ``_clock``, not ``loop.time()``: uvloop's is cached per iteration, in ms."""
    while True:
        due = _clock() + TICK_S
        await asyncio.sleep(TICK_S)
        lags.append(max(_clock() - due, 0.0))


from mlinfra.verify.budget import check_latency  # noqa: E402,F401  (the verdict; re-exported)
