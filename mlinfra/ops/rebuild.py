"""Destroy → up → verify, each phase timed: the proof that a stack is disposable.

Phases, in order: ``destroy`` (Terraform), ``apply`` (Terraform), ``ready``
(waiting for every node's health check: model load time, not Terraform's) and
``verify`` (gpu and latency). The verdict compares the whole run with a budget.

A phase that fails stops the run; the report says which phase, what is left
running, and the exact command that cleans up (or, with
``cleanup_on_failure``, cleans up itself). An interrupt during a Terraform
phase is forwarded to Terraform, which stops and saves state, so the next
``mlinfra down`` removes everything.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlinfra.errors import Aborted, Interrupted, MlinfraError, UsageError
from mlinfra.jsondata import Result
from mlinfra.ops.cost import refuse_over_budget
from mlinfra.timeutil import utc_now
from mlinfra.verify.result import CheckResult


@dataclass
class PhaseResult(Result):
    name: str
    ok: bool
    elapsed_s: float
    terraform_s: float = 0.0  # time spent in Terraform
    wait_s: float = 0.0  # time spent waiting for nodes (health)
    detail: str = ""


@dataclass
class RebuildReport(Result):
    _json_extra = ("verdict",)

    stack: str
    target: str
    budget_s: float
    started_at: str
    elapsed_s: float = 0.0
    passed: bool = False
    within_budget: bool = False
    phases: list[PhaseResult] = field(default_factory=list)
    nodes_before: list[dict] = field(default_factory=list)
    nodes_after: list[dict] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    failed_phase: str = ""
    left_running: list[str] = field(default_factory=list)
    cleanup_command: str = ""
    cleaned_up: bool = False
    interrupted: bool = False  # Ctrl-C / SIGTERM: Terraform stopped gracefully, state saved

    @property
    def verdict(self) -> str:
        if self.interrupted:
            return f"INTERRUPTED in phase {self.failed_phase} after {self.elapsed_s:.1f}s"
        if not self.passed:
            return f"FAILED in phase {self.failed_phase} after {self.elapsed_s:.1f}s"
        budget = "within" if self.within_budget else "OVER"
        return f"PASSED: rebuilt and verified in {self.elapsed_s:.1f}s ({budget} the {self.budget_s:.0f}s budget)"


def parse_duration(text: str) -> float:
    """'10m', '90s', '1h', '1m30s' or plain seconds → seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    if not text or not parts or not any(parts.groups()):
        raise UsageError(f"--budget: {text!r} is not a duration (like 10m, 90s or 1h)")
    hours, minutes, seconds = parts.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def _nodes(stack) -> list[dict]:
    return [{"name": n.name, "endpoint": n.endpoint, "pid": n.pid, "ready": n.ready} for n in stack.status().nodes]


def rebuild(
    stack,
    *,
    budget_s: float | None = None,
    force: bool = False,
    cleanup_on_failure: bool = False,
    confirm: Callable[[str], bool] | None = None,
    on_event=None,
    on_phase=None,
) -> RebuildReport:
    """Destroy the stack, bring it up again, verify it; never prints.

    ``confirm(question)`` is asked once, before anything is destroyed; a no raises ``Aborted``.
    ``budget_s`` defaults to the target's (10 minutes on GCP, 60 s locally).
    """
    from mlinfra import verify

    stack.refuse_if_protected("rebuild", force)
    refuse_over_budget(stack, "apply")  # before the destroy: `up` would refuse, leaving nothing running
    if confirm is not None and not confirm(f"destroy and rebuild stack {stack.name!r}"):
        raise Aborted("aborted: nothing was changed")
    report = RebuildReport(stack.name, stack.target, budget_s or stack.driver.rebuild_budget_s, utc_now())
    report.cleanup_command = f"mlinfra down --yes -f {shlex.quote(str(stack.path or 'mlinfra.toml'))}"
    started = time.monotonic()
    report.nodes_before = _nodes(stack)
    notify = on_phase or (lambda phase: None)

    def phase(name: str, work):
        begun = time.monotonic()
        try:
            detail = work()
        except MlinfraError as exc:
            report.interrupted = isinstance(exc, Interrupted)
            result = PhaseResult(name, False, time.monotonic() - begun, detail=exc.message)
            report.phases.append(result)
            notify(result)
            raise _PhaseFailed(name) from exc
        elapsed = time.monotonic() - begun
        result = PhaseResult(
            name,
            detail is None or detail[0],
            elapsed,
            terraform_s=elapsed if name in ("destroy", "apply") else 0.0,
            wait_s=elapsed if name == "ready" else 0.0,
            detail="" if detail is None else detail[1],
        )
        report.phases.append(result)
        notify(result)
        if not result.ok:
            raise _PhaseFailed(name)

    def checks(names: list[str]):
        found = verify.run(stack, stack.status().nodes, checks=names)
        report.checks += found.results
        failed = [r for r in found.results if r.status == "fail"]
        return (not failed, "; ".join(f"{r.node} {r.check}: {r.message or r.summary}" for r in failed[:3]))

    def destroy():
        stack.down(force=True, on_event=on_event)

    def apply():
        stack.up(verify=False, wait_ready=False, on_event=on_event)

    try:
        phase("destroy", destroy)
        phase("apply", apply)
        phase("ready", lambda: checks(["health"]))
        phase("verify", lambda: checks(["gpu", "latency"]))
        report.passed = True
    except _PhaseFailed as failure:
        report.failed_phase = failure.phase
        try:
            report.left_running = [node["name"] for node in _nodes(stack)]
        except MlinfraError:
            report.left_running = ["unknown: could not read the stack's state"]
        if cleanup_on_failure and not report.interrupted:  # an interrupt means: stop now
            stack.down(force=True, on_event=on_event)
            report.cleaned_up, report.left_running = True, []
    report.nodes_after = _nodes(stack) if report.passed else []
    report.elapsed_s = time.monotonic() - started
    report.within_budget = report.passed and report.elapsed_s <= report.budget_s
    return report


class _PhaseFailed(Exception):
    def __init__(self, phase: str):
        super().__init__(phase)
        self.phase = phase


def markdown(report: RebuildReport) -> str:
    """The rebuild as a step summary: phases, then the verify table."""
    from mlinfra.verify import report as verify_report

    lines = [
        f"### mlinfra rebuild `{report.stack}`: {report.verdict}",
        "",
        "| phase | result | seconds | Terraform s | waiting s | detail |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in report.phases:
        detail = p.detail.replace("|", "\\|")[:200]
        lines.append(
            f"| {p.name} | {'✅' if p.ok else '❌'} | {p.elapsed_s:.1f} | {p.terraform_s:.1f} | {p.wait_s:.1f} | {detail} |"
        )
    if report.failed_phase and not report.cleaned_up:
        lines += [
            "",
            f"Left running: {', '.join(report.left_running) or 'nothing'}. Clean up: `{report.cleanup_command}`",
        ]
    text = "\n".join(lines) + "\n"
    if report.checks:
        text += "\n" + verify_report.markdown(report.stack, report.checks)
    return text


def junit_results(report: RebuildReport) -> list[CheckResult]:
    """Phases and checks as JUnit rows: a phase is a check of the stack as a whole."""
    phases = [
        CheckResult(
            report.stack, f"rebuild-{p.name}", p.ok, f"{p.elapsed_s:.1f}s", message=p.detail, elapsed_s=p.elapsed_s
        )
        for p in report.phases
    ]
    return phases + report.checks
