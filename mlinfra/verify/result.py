"""What every verification check returns: one row of the verify report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["pass", "fail", "skip"]


@dataclass
class CheckResult:
    node: str  # the node's name, e.g. "demo-east-0"
    check: str  # "gpu", "health" or "latency"
    passed: bool
    summary: str  # one line of key figures, shown in the report table
    message: str = ""  # why it failed (or was skipped), for the report and JUnit
    skipped: bool = False
    elapsed_s: float = 0.0
    details: dict = field(default_factory=dict)  # figures for --json (and the histogram)

    @property
    def status(self) -> Status:
        return "skip" if self.skipped else ("pass" if self.passed else "fail")


class ErrorTally:
    """Error counting shared by the request and the token load results (fields ``ok`` and
    ``errors``: counts by kind, e.g. ``http_500``, ``timeout``)."""

    ok: int
    errors: dict[str, int]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        total = self.ok + self.error_count
        return self.error_count / total if total else 0.0
