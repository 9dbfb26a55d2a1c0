"""One clock format for everything mlinfra records: UTC, ISO 8601, seconds, a trailing Z."""

from __future__ import annotations

import datetime as dt


def utc_now(*, precise: bool = False) -> str:
    """Now, like ``2026-12-01T21:06:49Z`` (``precise``: with microseconds, as Terraform's LockInfo)."""
    return iso(dt.datetime.now(dt.UTC), precise=precise)


def iso_epoch(seconds: float) -> str:
    """An epoch time (``time.time()``), like ``utc_now``."""
    return iso(dt.datetime.fromtimestamp(seconds, dt.UTC))


def parse_epoch(text: str) -> float:
    """RFC 3339 text (GCP's ``2026-11-20T08:00:00.123-08:00``, or ``...Z``) as epoch seconds."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def iso(value: dt.datetime, *, precise: bool = False) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="auto" if precise else "seconds").replace("+00:00", "Z")
