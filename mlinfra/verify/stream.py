"""The token-level load generator (``verify.protocol = "openai"``, issue 11): streaming
``/v1/completions`` or ``/v1/chat/completions`` requests, their server-sent events parsed as
they arrive, and per request the **time to first token** (send to the first event that carries
text), the **inter-token latencies** (the gaps between such events) and the **output tokens/s**
(output tokens over the whole request), beside request latency and error rate.

Definitions follow the usual LLM benchmarks (vLLM's ``benchmark_serving``, NVIDIA GenAI-Perf):
ITL is pooled over all gaps of all requests before its percentiles are taken; a server that
packs several tokens into one event has fewer, longer gaps, and the output token count is then
the ``usage.completion_tokens`` the server reports (``stream_options.include_usage``), when
it does, else the number of events with text.

Every way a stream can go wrong is a counted error with the first one's message kept, never a
hang: no byte for ``token_timeout_s`` (``timeout`` before the first token, ``stalled`` after
it), an event that is not JSON or an error object (``malformed_event``, ``server_error``), a
stream that ends without ``data: [DONE]`` (``closed_early``), a non-2xx status (``http_503``),
an answer that is not an event stream (``not_streaming``).

A closed loop only: ``concurrency`` keep-alive connections, each sending its next request when
the previous stream is over. Plain asyncio streams, not ``http1``'s hand-written protocol: a
request here lasts for tens of events, so the client's few microseconds per read do not matter
(bench/loadgen.py's streaming row checks the figures against a plain client's timestamps).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from mlinfra.verify.histogram import Histogram
from mlinfra.verify.http1 import prepare_request
from mlinfra.verify.result import ErrorTally
from mlinfra.verify.sse import Events, Sample, StreamError, take_event

PERCENTILES = (50, 90, 95, 99)
_clock = time.monotonic


@dataclass
class StreamResult(ErrorTally):
    """Figures of one run. Histograms hold microseconds of successful requests."""

    url: str
    requests: int
    concurrency: int
    warmup: int
    max_tokens: int
    duration_s: float = 0.0
    elapsed_s: float = 0.0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str = ""  # the first failure's message, for the report
    aborted: str = ""
    latency: Histogram = field(default_factory=Histogram)  # send to the end of the stream
    ttft: Histogram = field(default_factory=Histogram)
    itl: Histogram = field(default_factory=Histogram)  # every gap between token events
    rates: Histogram = field(default_factory=Histogram)  # per request output tokens/s, x1000
    output_tokens: int = 0
    cpu_fraction: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Output tokens of successful requests per second of the measured phase, all requests."""
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0

    def percentiles_ms(self, which: str = "latency") -> dict[str, float]:
        hist = getattr(self, which)
        figures = {f"p{p}_ms": hist.percentile(p) / 1000 for p in PERCENTILES}
        figures.update(min_ms=hist.min / 1000, mean_ms=hist.mean / 1000, max_ms=hist.max / 1000)
        return figures

    def rate_percentile(self, p: float) -> float:
        """Per-request output tokens/s at percentile ``p`` (p5: 95 % of requests were at least this fast)."""
        return self.rates.percentile(p) / 1000

    def record_error(self, kind: str, message: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.first_error = self.first_error or f"{kind}: {message}"

    def to_dict(self) -> dict:
        data = {
            "url": self.url,
            "protocol": "openai",
            "mode": "closed",
            "requests": self.requests,
            "concurrency": self.concurrency,
            "warmup": self.warmup,
            "max_tokens": self.max_tokens,
            "duration_s": self.duration_s,
            "rps": self.ok / self.duration_s if self.duration_s > 0 else 0.0,
            "ok": self.ok,
            "errors": dict(self.errors),
            "error_rate": self.error_rate,
            **self.percentiles_ms("latency"),
            "ttft": self.percentiles_ms("ttft"),
            "itl": self.percentiles_ms("itl"),
            "tokens_per_s": {"p5": self.rate_percentile(5), "p50": self.rate_percentile(50), "all": self.tokens_per_s},
            "output_tokens": self.output_tokens,
            "generator": {"cpu_percent": round(self.cpu_fraction * 100, 1)},
            "histogram": self.latency.coarse(),
        }
        if self.first_error:
            data["first_error"] = self.first_error
        if self.aborted:
            data["aborted"] = self.aborted
        return data


def request_body(prompt: str, max_tokens: int, chat: bool, model: str = "") -> bytes:
    body: dict = {"max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if model:
        body["model"] = model
    return json.dumps(body).encode()


class _Connection:
    def __init__(self, host: str, port: int, tls, timeout_s: float) -> None:
        self.host, self.port, self.tls, self.timeout_s = host, port, tls, timeout_s
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reused = False  # has carried a whole exchange: the server may drop it while idle

    async def open(self) -> None:
        if self.writer is None or self.writer.is_closing():
            try:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port, ssl=self.tls), self.timeout_s
                )
            except (OSError, TimeoutError) as exc:
                raise StreamError("connect", f"cannot connect to {self.host}:{self.port}: {exc!r}") from None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.reused = False

    async def _read(self, call, got_token: bool):
        try:
            async with asyncio.timeout(self.timeout_s):  # no task per read, unlike wait_for before 3.12
                return await call
        except TimeoutError:
            kind = "stalled" if got_token else "timeout"
            raise StreamError(kind, f"no byte for {self.timeout_s:g} s") from None
        except asyncio.IncompleteReadError as exc:
            raise StreamError("closed_early", "the connection closed mid-stream", not exc.partial) from None
        except ConnectionError as exc:
            raise StreamError("closed_early", f"the connection closed mid-stream ({exc!r})") from None
        except asyncio.LimitOverrunError:
            raise StreamError("protocol", "a line or head over 64 KiB") from None
        except OSError as exc:  # TLS errors, and whatever else the socket says
            raise StreamError("connection", f"{exc!r}") from None

    async def exchange(self, request: bytes) -> Sample:
        """Send ``request``; read the response to its end. Raises ``StreamError``."""
        await self.open()
        assert self.reader is not None and self.writer is not None
        reader, sample = self.reader, Sample(_clock())
        self.writer.write(request)
        head = await self._read(reader.readuntil(b"\r\n\r\n"), False)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise StreamError("protocol", f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(parts[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = _Body(self, headers)
        if not 200 <= status < 300:
            text = await body.read_all(sample)
            raise StreamError(f"http_{status}", f"HTTP {status}: {text[:200]!r}")
        if not headers.get("content-type", "").startswith("text/event-stream"):
            text = await body.read_all(sample)
            raise StreamError("not_streaming", f"Content-Type {headers.get('content-type')!r}, not text/event-stream")
        events = Events()
        while not events.done:
            chunk = await body.read(bool(sample.tokens))
            if not chunk:
                raise StreamError("closed_early", f"the stream ended after {len(sample.tokens)} tokens without [DONE]")
            now = _clock()
            for data in events.feed(chunk):
                take_event(data, sample, now)
        sample.done = _clock()
        if headers.get("connection", "").lower() == "close" or body.until_close:
            self.close()  # nothing to drain: the server ends the body by closing
        else:
            await body.drain()
            self.reused = True
        return sample


class _Body:
    """A response body by its framing (chunked, Content-Length, until close), read piecewise."""

    def __init__(self, conn: _Connection, headers: dict[str, str]) -> None:
        self.conn = conn
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self.left = int(length) if length and length.isdigit() and not self.chunked else -1
        self.until_close = not self.chunked and self.left < 0
        self.ended = False

    async def read(self, got_token: bool) -> bytes:
        reader = self.conn.reader
        assert reader is not None
        if self.ended:
            return b""
        if self.chunked:
            line = await self.conn._read(reader.readline(), got_token)
            if not line:
                return b""
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise StreamError("protocol", f"a bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while (await self.conn._read(reader.readline(), got_token)).strip():
                    pass  # trailers
                self.ended = True
                return b""
            data = await self.conn._read(reader.readexactly(size + 2), got_token)
            return data[:-2]
        if self.left == 0:
            self.ended = True
            return b""
        data = await self.conn._read(reader.read(65536 if self.left < 0 else min(self.left, 65536)), got_token)
        if self.left > 0:
            self.left -= len(data)
        return data

    async def read_all(self, sample: Sample) -> bytes:
        parts = []
        while chunk := await self.read(False):
            parts.append(chunk)
        return b"".join(parts)

    async def drain(self) -> None:
        """After [DONE]: the rest of the body, so that the connection can carry the next request."""
        while await self.read(True):
            pass


async def run_stream_async(
    url: str,
    prompts: list[str] | tuple[str, ...],
    *,
    max_tokens: int,
    requests: int,
    concurrency: int,
    warmup: int,
    chat: bool = False,
    model: str = "",
    token_timeout_s: float = 10.0,
) -> StreamResult:
    bodies = [request_body(p, max_tokens, chat, model) for p in prompts]
    host, port, tls, _ = prepare_request(url, "POST", bodies[0], None)
    heads = [prepare_request(url, "POST", b, {"Accept": "text/event-stream"})[3] for b in bodies]
    result = StreamResult(url, requests, concurrency, warmup, max_tokens)
    started = _clock()
    conns = [_Connection(host, port, tls, token_timeout_s) for _ in range(min(concurrency, max(requests, warmup, 1)))]
    try:
        await conns[0].open()
    except StreamError as exc:
        result.aborted, result.errors["connect"] = str(exc), requests
        result.elapsed_s = _clock() - started
        return result

    async def phase(count: int, record: StreamResult | None) -> None:
        next_index = iter(range(count))

        async def worker(conn: _Connection) -> None:
            for i in next_index:
                try:
                    try:
                        sample = await conn.exchange(heads[i % len(heads)])
                    except StreamError as exc:
                        if not (conn.reused and exc.before_any_byte):
                            raise
                        conn.close()  # the server dropped the idle keep-alive as we sent: once more
                        sample = await conn.exchange(heads[i % len(heads)])
                except StreamError as exc:
                    conn.close()  # out of sync or gone: the next request opens a new one
                    if record is not None:
                        record.record_error(exc.kind, str(exc))
                    continue
                if record is not None:
                    _record(record, sample)

        await asyncio.gather(*(worker(conn) for conn in conns))

    try:
        if warmup:
            await phase(warmup, None)
        cpu0, wall0 = time.thread_time(), _clock()
        await phase(requests, result)
        result.duration_s = _clock() - wall0
        result.cpu_fraction = (time.thread_time() - cpu0) / result.duration_s if result.duration_s > 0 else 0.0
    finally:
        for conn in conns:
            conn.close()
    result.elapsed_s = _clock() - started
    return result


def _record(result: StreamResult, sample: Sample) -> None:
    if not sample.tokens:
        result.record_error("no_tokens", "a stream ended with [DONE] but carried no text")
        return
    result.ok += 1
    result.latency.record(int((sample.done - sample.sent) * 1e6))
    result.ttft.record(int((sample.tokens[0] - sample.sent) * 1e6))
    for before, after in zip(sample.tokens, sample.tokens[1:], strict=False):
        result.itl.record(int((after - before) * 1e6))
    result.output_tokens += sample.output_tokens
    seconds = sample.tokens[-1] - sample.sent
    if seconds > 0:
        result.rates.record(int(sample.output_tokens / seconds * 1000))


def run_stream(url: str, prompts, **kwargs) -> StreamResult:
    """``run_stream_async`` on an event loop of its own (asyncio's: timestamps need no more)."""
    return asyncio.run(run_stream_async(url, prompts, **kwargs))
