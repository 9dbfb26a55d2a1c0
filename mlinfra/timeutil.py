"""One clock format for everything mlinfra records: UTC, ISO 8601, seconds, a trailing Z."""

from __future__ import annotations

import datetime as dt


def utc_now(*, precise: bool = False) -> str:
    """Now, like ``2026-12-01T21:06:49Z`` (``precise``: with microseconds, as Terraform's LockInfo)."""
    return iso(dt.datetime.now(dt.UTC), precise=precise)


def iso(value: dt.datetime, *, precise: bool = False) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="auto" if precise else "seconds").replace("+00:00", "Z")
