"""The wire format of a token stream: server-sent events and the OpenAI chunks they carry.

Split from ``stream`` (the load run) because it is a format, not a measurement: ``Events``
splits a byte stream into event data, ``take_event`` reads one chunk into a request's
``Sample``, and every way a stream can be wrong is a ``StreamError`` with a kind the report
counts (``malformed_event``, ``server_error``, ...).
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field


class StreamError(Exception):
    def __init__(self, kind: str, message: str, before_any_byte: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.before_any_byte = before_any_byte  # closed with nothing read: maybe a stale keep-alive


@dataclass
class Sample:
    """One request's timestamps (time.monotonic seconds): sent, each token event, end of stream."""

    sent: float
    tokens: list[float] = field(default_factory=list)
    done: float = 0.0
    usage_tokens: int = 0  # usage.completion_tokens when the server reported it

    @property
    def output_tokens(self) -> int:
        return self.usage_tokens or len(self.tokens)


def take_event(data: str, sample: Sample, now: float) -> None:
    """One event's data into ``sample``: a token (its time; the text is not kept) or the usage.
    ``[DONE]`` never gets here: ``Events`` ends on it."""
    try:
        event = json.loads(data)
    except ValueError:
        raise StreamError("malformed_event", f"an event is not JSON: {data[:120]!r}") from None
    if not isinstance(event, dict):
        raise StreamError("malformed_event", f"an event is not a JSON object: {data[:120]!r}")
    if "error" in event:
        raise StreamError("server_error", f"the server sent an error event: {data[:200]!r}")
    choices = event.get("choices")
    if not isinstance(choices, list):
        raise StreamError("malformed_event", f"an event has no 'choices' list: {data[:120]!r}")
    for choice in choices:
        if not isinstance(choice, dict):
            raise StreamError("malformed_event", f"a choice is not an object: {data[:120]!r}")
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise StreamError("malformed_event", f"a delta is not an object: {data[:120]!r}")
        text = choice.get("text") if "text" in choice else delta.get("content")
        if isinstance(text, str) and text:
            sample.tokens.append(now)
    usage = event.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        sample.usage_tokens = usage["completion_tokens"]


class Events:
    """Server-sent events (WHATWG HTML, "Server-sent events"): lines ending in LF, CRLF or CR;
    an event ends at a blank line; its ``data:`` lines joined by LF; other fields ignored."""

    def __init__(self) -> None:
        self.buffer, self.done = "", False
        self.data: list[str] = []
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")  # a character may span reads

    def feed(self, chunk: bytes) -> list[str]:
        if self.done:
            return []  # nothing after [DONE] is part of the answer
        text = self.buffer + self.decoder.decode(chunk)
        held = "\r" if text.endswith("\r") else ""  # maybe half a CRLF: wait for the next chunk
        text = text[: len(text) - len(held)].replace("\r\n", "\n").replace("\r", "\n")
        *lines, rest = text.split("\n")
        self.buffer = rest + held
        events = []
        for line in lines:
            if not line:
                if self.data:
                    data, self.data = "\n".join(self.data), []
                    if data.strip() == "[DONE]":
                        self.done = True
                        break
                    events.append(data)
            elif line.startswith("data:"):
                value = line[5:]
                self.data.append(value[1:] if value.startswith(" ") else value)
        return events
