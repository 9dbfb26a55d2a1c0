"""The load generator's HTTP/1.1 client: keep-alive connections with hand-written framing,
the pool that keeps them open, the request bytes, and the event loop they run on.

Split from ``latency`` because it is a protocol, not a measurement. Why hand-written: the
generator must not be the bottleneck, and this is the cheapest client measured here (see
the table in ``latency``'s docstring). A connection reports each finished response to its
run through ``run.finished(conn, status, error)``; the run decides what is sent next.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit

from mlinfra.errors import UsageError

MAX_HEAD = 64 * 1024  # a response head larger than this is not a sane HTTP server
_clock = time.monotonic  # the event loop's own clock: latency's timestamps use the same

_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)  # what the next bytes of a response are
READ_BUFFER = 64 * 1024


class Connection(asyncio.BufferedProtocol):
    """One keep-alive connection with at most one request in flight (no pipelining).

    A ``BufferedProtocol`` reads into one preallocated buffer: the plain ``Protocol`` path
    allocates a 256 KiB bytes object per read, which strace showed as an mmap, mremap and
    munmap per response, half of the generator's CPU. Framing is parsed incrementally; the
    head is lowered once and searched with ``find`` (splitting headers costs measurable CPU
    at tens of thousands of responses a second), and body bytes are counted, not kept,
    unless chunked framing needs them. A server sends the same head again and again (all
    but its Date line, which changes once a second), so the last head parsed is kept with
    what it said: a byte-for-byte equal head is not parsed again."""

    __slots__ = (
        "run",
        "transport",
        "rbuf",
        "view",
        "filled",
        "pos",
        "mode",
        "need",
        "status",
        "close_after",
        "busy",
        "reused",
        "reads",
        "t_intended",
        "t_sent",
        "deadline",
        "last_head",
        "last_parsed",
    )

    def __init__(self, run) -> None:  # run: a Pool
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.rbuf = bytearray(READ_BUFFER)
        self.view = memoryview(self.rbuf)  # reused: most reads start at offset 0
        self.filled = self.pos = 0  # bytes in rbuf; where the unparsed part starts
        self.mode, self.need, self.status, self.close_after = _HEAD, 0, 0, False
        self.busy = False
        self.reads = 0  # reads that brought bytes of the response in flight
        self.reused = False  # served a response: a close before any byte may be a stale keep-alive
        self.t_intended = self.t_sent = self.deadline = 0.0
        self.last_head = b""  # the last final (non-1xx) head, CRLFCRLF excluded, as received
        self.last_parsed = (0, _HEAD, 0, False)  # its (status, mode, content length, close_after)

    # -- asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.reused = False

    def connection_lost(self, exc) -> None:
        self.transport = None
        if not self.busy:
            return
        if self.mode == _UNTIL_CLOSE:
            self._done(self.status)  # HTTP/1.0 style: the close ends the body
        elif self.reused and self.mode == _HEAD and not self.filled:
            self.busy = False  # the server dropped an idle keep-alive as we sent: retry once
            self.run.resend(self, self.t_intended)
        else:
            self._done(None, "connection")

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self.filled:
            return self.view
        if self.filled == len(self.rbuf):  # a chunked response larger than the buffer: grow
            self.rbuf = self.rbuf + bytearray(len(self.rbuf))
            self.view = memoryview(self.rbuf)
        return self.view[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if not self.busy:
            self.filled = 0  # nothing asked for it; without pipelining a sane server sends nothing
            return
        self.reads += 1
        mode = self.mode
        if mode == _LENGTH:  # the body's bytes are only counted; the buffer is reused from 0
            self.need -= nbytes
            if self.need <= 0:
                self._done(self.status)
            return
        self.filled += nbytes
        if mode == _HEAD:
            self._parse_head()
        elif mode == _CHUNKED:
            if self._chunked_complete():
                self._done(self.status)
        else:
            self.filled = 0

    def _parse_head(self) -> None:
        buf, pos, filled = self.rbuf, self.pos, self.filled
        end = buf.find(b"\r\n\r\n", pos, filled)
        if end < 0:
            if filled - pos > MAX_HEAD:
                self._fail("protocol")
            return
        last = self.last_head
        if end - pos == len(last) and buf.startswith(last, pos):
            status, mode, length, self.close_after = self.last_parsed
        else:
            parsed = self._parse_new_head(end)
            if parsed is None:
                return
            status, mode, length, self.close_after = parsed
            pos, end = self.pos, self.pos - 4
        self.pos = end + 4
        self.status = status
        if mode == _LENGTH:
            self.need = length - (filled - end - 4)
            if self.need <= 0:
                return self._done(status)
            self.mode, self.filled = _LENGTH, 0
        elif mode == _HEAD:  # no body: 204, 304, or the answer to HEAD
            self._done(status)
        elif mode == _CHUNKED:
            self.mode = _CHUNKED
            if self._chunked_complete():
                self._done(status)
        else:
            self.mode, self.filled = _UNTIL_CLOSE, 0

    def _parse_new_head(self, end: int) -> tuple[int, int, int, bool] | None:
        """Parse the head(s) ending at ``end`` (1xx interim heads skipped); remember the final
        one. Returns (status, mode, content length, close_after) with self.pos just past the
        final head, or None when more bytes are needed or the stream failed."""
        buf = self.rbuf
        while True:  # more than once only to skip 1xx interim responses
            if end < 0:
                if self.filled - self.pos > MAX_HEAD:
                    self._fail("protocol")
                return None
            raw = buf[self.pos : end]
            head = raw.lower()
            if not head.startswith(b"http/1.") or not head[9:12].isdigit():
                self._fail("protocol")
                return None
            self.pos = end + 4
            status = int(head[9:12])
            if not 100 <= status < 200:
                break
            end = buf.find(b"\r\n\r\n", self.pos, self.filled)
        close_after = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
        length = 0
        if status in (204, 304) or self.run.head_only:
            mode = _HEAD
        elif b"\r\ntransfer-encoding:" in head and b"chunked" in head:
            mode = _CHUNKED
        else:
            i = head.find(b"\r\ncontent-length:")
            if i < 0:
                mode = _UNTIL_CLOSE
            else:
                j = head.find(b"\r\n", i + 2)
                try:
                    length = int(head[i + 17 : j if j >= 0 else len(head)])
                except ValueError:
                    self._fail("protocol")
                    return None
                mode = _LENGTH
        parsed = (status, mode, length, close_after)
        self.last_head, self.last_parsed = bytes(raw), parsed
        return parsed

    def _chunked_complete(self) -> bool:
        buf, filled = self.rbuf, self.filled
        while True:
            eol = buf.find(b"\r\n", self.pos, filled)
            if eol < 0:
                return False
            try:
                size = int(bytes(buf[self.pos : eol]).split(b";")[0], 16)
            except ValueError:
                self._fail("protocol")
                return False
            if size == 0:  # the last chunk; then optional trailers and an empty line
                return (
                    buf[eol + 2 : eol + 4] == b"\r\n" and eol + 4 <= filled or buf.find(b"\r\n\r\n", eol, filled) >= 0
                )
            if filled < eol + 2 + size + 2:
                return False
            self.pos = eol + 2 + size + 2

    # -- requests
    def send(self, t_intended: float) -> None:
        self.busy, self.t_intended, self.reads = True, t_intended, 0
        self.mode, self.filled, self.pos = _HEAD, 0, 0
        self.t_sent = now = _clock()
        self.deadline = now + self.run.timeout_s
        self.transport.write(self.run.request)  # type: ignore[union-attr]  # resend saw it open

    def _done(self, status: int | None, error: str = "") -> None:
        self.busy = False
        self.reused = True
        if self.transport is not None and self.close_after:
            self.transport.close()  # the server said so; the next send reconnects
        self.run.finished(self, status, error)

    def _fail(self, error: str) -> None:
        if self.transport is not None:
            self.transport.abort()  # the stream is out of sync: never reuse it
        self.busy = False
        self.run.finished(self, None, error)


class Pool:
    """The connections of one load run: opening them, reopening one the server closed, and
    timing out requests in flight too long. A subclass decides what is sent when
    (``_send``) and records what came back (``finished(conn, status, error)``)."""

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
        self.host, self.port, self.tls, self.request, self.head_only = host, port, tls, request, head_only
        self.timeout_s = timeout_s
        self.loop = asyncio.get_running_loop()
        self.conns = [Connection(self) for _ in range(connections)]
        self.stopped = False

    async def connect(self, conn: Connection) -> str:
        """Open ``conn``; returns "" or why not (a message)."""
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: conn, self.host, self.port, ssl=self.tls), self.timeout_s
            )
            return ""
        except (OSError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    def resend(self, conn: Connection, t_intended: float) -> None:
        if conn.transport is None or conn.transport.is_closing():
            self.loop.create_task(self._reconnect_and_send(conn, t_intended))
        else:
            self._send(conn, t_intended)

    def _send(self, conn: Connection, t_intended: float) -> None:
        conn.send(t_intended)

    def finished(self, conn: Connection, status: int | None, error: str) -> None:
        raise NotImplementedError

    async def _reconnect_and_send(self, conn: Connection, t_intended: float) -> None:
        conn.busy = True  # reserved while connecting
        error = await self.connect(conn)
        if error:
            conn.busy = False
            self.finished(conn, None, "connect")
        else:
            self._send(conn, t_intended)

    def watchdog(self) -> None:
        """Time out requests in flight too long (one sweep, not one timer per request)."""
        if self.stopped:
            return
        now = _clock()
        for conn in self.conns:
            if conn.busy and conn.transport is not None and now > conn.deadline:
                conn._fail("timeout")
        self.loop.call_later(min(0.05, self.timeout_s / 4), self.watchdog)


# --------------------------------------------------------------------------- set-up


def prepare_request(
    url: str, method: str, body: bytes | None, headers: dict[str, str] | None
) -> tuple[str, int, ssl.SSLContext | None, bytes]:
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


def loop_factory(event_loop: str, rate: float):
    """The event loop factory for a run (None: asyncio's own). "auto": uvloop for a closed
    loop when it is installed, asyncio's for an open loop, whose schedule needs timers finer
    than uvloop's milliseconds."""
    if event_loop not in ("auto", "asyncio", "uvloop"):
        raise UsageError(f"event_loop must be 'auto', 'asyncio' or 'uvloop', not {event_loop!r}")
    if event_loop == "asyncio" or (event_loop == "auto" and rate > 0):
        return None
    try:
        import uvloop
    except ImportError:
        if event_loop == "uvloop":
            raise UsageError("event_loop 'uvloop' needs the uvloop package (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


def run_on(factory, coro):
    """``asyncio.run(coro)`` on a loop from ``factory`` (None: asyncio's own)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
