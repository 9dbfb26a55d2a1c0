"""Terraform's machine-readable UI (``-json``) turned into mlinfra's results.

Terraform prints one JSON object per line (the "ui" protocol, version 1.x):
``planned_change``, ``change_summary``, ``apply_start``/``apply_progress``/
``apply_complete``/``apply_errored``, ``provision_*``, ``diagnostic``.
This module is pure: lines in, dataclasses out. It knows nothing of processes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlinfra.jsondata import Result


@dataclass(frozen=True)
class Progress:
    """One step of a long operation, for a progress display."""

    address: str  # resource address, or "" for the whole operation
    action: str  # create, delete, update, replace, read, init, ...
    status: str  # start, progress, done, error, output
    elapsed_s: float | None = None
    message: str = ""


@dataclass(frozen=True)
class Change:
    address: str
    action: str  # create, update, delete, replace, ...


@dataclass
class PlanSummary(Result):
    _json_extra = ("has_changes", "replaced")

    add: int = 0
    change: int = 0
    destroy: int = 0
    changes: list[Change] = field(default_factory=list)
    # What refresh found changed outside Terraform (``resource_drift``): each a node someone edited,
    # stopped or deleted by hand; the planned changes above put it back.
    drift: list[Change] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return bool(self.add or self.change or self.destroy)

    @property
    def replaced(self) -> list[str]:
        """What will be destroyed and created again (a GCP node: a new VM, its disk and address gone)."""
        return [change.address for change in self.changes if change.action == "replace"]

    def describe(self) -> str:
        if not self.has_changes:
            return "no changes"
        counts = f"{self.add} to add, {self.change} to change, {self.destroy} to destroy"
        replaced = self.replaced
        return f"{counts}; REPLACES {len(replaced)} (destroyed, then created again)" if replaced else counts


@dataclass
class ApplySummary:
    add: int = 0
    change: int = 0
    destroy: int = 0
    elapsed_s: dict[str, float] = field(default_factory=dict)  # per resource address
    outputs: dict = field(default_factory=dict)  # output values after the apply


@dataclass(frozen=True)
class Diagnostic:
    severity: str
    summary: str
    detail: str = ""
    address: str = ""
    filename: str = ""
    line: int | None = None

    def format(self, workdir: Path | None = None) -> str:
        text = self.summary
        if self.address:
            text = f"{self.address}: {text}"
        if self.detail:
            text += f": {' '.join(self.detail.split())}"
        if self.filename:
            where = Path(workdir, self.filename) if workdir else Path(self.filename)
            text += f" ({where}:{self.line})" if self.line else f" ({where})"
        return text


def parse_line(line: str) -> dict | None:
    """One UI event, or None for a line that is not one (plain text, blank)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "type" in event else None


def _hook_address(event: dict) -> str:
    hook = event.get("hook") or {}
    return (hook.get("resource") or {}).get("addr", "")


class ProgressTracker:
    """Turns apply/provision events into ``Progress`` for a live display."""

    def __init__(self, on_event: Callable[[Progress], None]):
        self.on_event = on_event

    def feed(self, event: dict) -> None:
        kind = event["type"]
        hook = event.get("hook") or {}
        address = _hook_address(event)
        action = hook.get("action", "")
        if kind == "apply_start":
            self.on_event(Progress(address, action, "start"))
        elif kind == "apply_progress":
            self.on_event(Progress(address, action, "progress", hook.get("elapsed_seconds")))
        elif kind == "apply_complete":
            self.on_event(Progress(address, action, "done", hook.get("elapsed_seconds")))
        elif kind == "apply_errored":
            self.on_event(Progress(address, action, "error", hook.get("elapsed_seconds"), event.get("@message", "")))
        elif kind == "provision_progress":
            self.on_event(Progress(address, "provision", "output", message=hook.get("output", "")))
        elif kind == "planned_change":
            change = event.get("change") or {}
            address = (change.get("resource") or {}).get("addr", "")
            self.on_event(Progress(address, change.get("action", ""), "planned"))


def plan_summary(events: list[dict]) -> PlanSummary:
    summary = PlanSummary()
    for event in events:
        # Both carry {"change": {"resource": {"addr": ...}, "action": ...}} (Terraform's
        # internal/command/views/json_view.go: PlannedChange, ResourceDrift).
        if event["type"] in ("planned_change", "resource_drift"):
            change = event.get("change") or {}
            address = (change.get("resource") or {}).get("addr", "")
            found = summary.changes if event["type"] == "planned_change" else summary.drift
            found.append(Change(address, change.get("action", "")))
        elif event["type"] == "change_summary" and (event.get("changes") or {}).get("operation", "plan") == "plan":
            # An `apply -auto-approve` stream has two: the plan's, then the apply's (partial when it fails).
            counts = event.get("changes") or {}
            summary.add, summary.change, summary.destroy = (
                counts.get("add", 0),
                counts.get("change", 0),
                counts.get("remove", 0),
            )
    summary.changes.sort(key=lambda change: change.address)  # Terraform emits them in any order
    summary.drift.sort(key=lambda change: change.address)
    return summary


def apply_summary(events: list[dict]) -> ApplySummary:
    summary = ApplySummary()
    for event in events:
        if event["type"] == "apply_complete":
            hook = event.get("hook") or {}
            summary.elapsed_s[_hook_address(event)] = float(hook.get("elapsed_seconds") or 0)
        elif event["type"] == "outputs":  # an apply reports values (a plan only actions)
            summary.outputs = {name: out.get("value") for name, out in (event.get("outputs") or {}).items()}
        elif event["type"] == "change_summary":
            counts = event.get("changes") or {}
            summary.add, summary.change, summary.destroy = (
                counts.get("add", 0),
                counts.get("change", 0),
                counts.get("remove", 0),
            )
    return summary


def diagnostics(events: list[dict]) -> list[Diagnostic]:
    found = []
    for event in events:
        if event["type"] != "diagnostic":
            continue
        diag = event.get("diagnostic") or {}
        rng = diag.get("range") or {}
        found.append(
            Diagnostic(
                severity=diag.get("severity", "error"),
                summary=diag.get("summary", ""),
                detail=diag.get("detail", ""),
                address=diag.get("address", ""),
                filename=rng.get("filename", ""),
                line=(rng.get("start") or {}).get("line"),
            )
        )
    return _dedupe(found)


def _dedupe(diags: list[Diagnostic]) -> list[Diagnostic]:
    # An interrupted apply repeats "execution halted" once per resource; say it once.
    seen, unique = set(), []
    for diag in diags:
        if diag not in seen:
            seen.add(diag)
            unique.append(diag)
    return unique
