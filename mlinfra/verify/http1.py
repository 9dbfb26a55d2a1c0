"""The load generator's HTTP/1.1 client: one keep-alive connection, hand-written framing.

Split from ``latency`` because it is a protocol, not a measurement. Why hand-written: the
generator must not be the bottleneck, and this is the cheapest client measured here (see
the table in ``latency``'s docstring). A connection reports each finished response to its
run through ``run.finished(conn, status, error)``; the run decides what is sent next.
"""

from __future__ import annotations

import asyncio
import time

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
    unless chunked framing needs them."""

    def __init__(self, run) -> None:  # run: latency._Run
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.rbuf = bytearray(READ_BUFFER)
        self.view = memoryview(self.rbuf)  # reused: most reads start at offset 0
        self.filled = self.pos = 0  # bytes in rbuf; where the unparsed part starts
        self.mode, self.need, self.status, self.close_after = _HEAD, 0, 0, False
        self.busy = False
        self.reused = False  # served a response: a close before any byte may be a stale keep-alive
        self.t_intended = self.t_sent = self.deadline = 0.0

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
        return self.view[self.filled:]

    def buffer_updated(self, nbytes: int) -> None:
        if not self.busy:
            self.filled = 0  # nothing asked for it; without pipelining a sane server sends nothing
            return
        self.filled += nbytes
        mode = self.mode
        if mode == _LENGTH:
            self.need -= nbytes
            self.filled = 0
            if self.need <= 0:
                self._done(self.status)
        elif mode == _HEAD:
            self._parse_head()
        elif mode == _CHUNKED:
            if self._chunked_complete():
                self._done(self.status)
        else:
            self.filled = 0

    def _parse_head(self) -> None:
        buf = self.rbuf
        while True:  # more than once only to skip 1xx interim responses
            end = buf.find(b"\r\n\r\n", self.pos, self.filled)
            if end < 0:
                if self.filled - self.pos > MAX_HEAD:
                    self._fail("protocol")
                return
            head = buf[self.pos:end].lower()
            if not head.startswith(b"http/1.") or not head[9:12].isdigit():
                self._fail("protocol")
                return
            self.pos = end + 4
            status = int(head[9:12])
            if not 100 <= status < 200:
                break
        self.status = status
        self.close_after = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
        if status in (204, 304) or self.run.head_only:
            return self._done(status)
        if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
            self.mode = _CHUNKED
            if self._chunked_complete():
                self._done(status)
            return
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            self.mode, self.filled = _UNTIL_CLOSE, 0
            return
        j = head.find(b"\r\n", i + 2)
        try:
            length = int(head[i + 17:j if j >= 0 else len(head)])
        except ValueError:
            return self._fail("protocol")
        self.need = length - (self.filled - self.pos)
        if self.need <= 0:
            return self._done(status)
        self.mode, self.filled = _LENGTH, 0

    def _chunked_complete(self) -> bool:
        buf, filled = self.rbuf, self.filled
        while True:
            eol = buf.find(b"\r\n", self.pos, filled)
            if eol < 0:
                return False
            try:
                size = int(bytes(buf[self.pos:eol]).split(b";")[0], 16)
            except ValueError:
                self._fail("protocol")
                return False
            if size == 0:  # the last chunk; then optional trailers and an empty line
                return buf[eol + 2:eol + 4] == b"\r\n" and eol + 4 <= filled or \
                    buf.find(b"\r\n\r\n", eol, filled) >= 0
            if filled < eol + 2 + size + 2:
                return False
            self.pos = eol + 2 + size + 2

    # -- requests
    def send(self, t_intended: float) -> None:
        self.busy, self.t_intended = True, t_intended
        self.mode, self.filled, self.pos = _HEAD, 0, 0
        self.t_sent = now = _clock()
        self.deadline = now + self.run.timeout_s
        self.transport.write(self.run.request)

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
