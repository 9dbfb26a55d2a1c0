"""Self-healing: find the nodes that fail their gpu or health check, replace exactly those.

A replacement is ``terraform apply -replace=ADDR -target=ADDR`` for each bad
node: ``-target`` keeps the plan away from every healthy node, even when the
stack has drifted elsewhere. Each bad node gets a bounded number of attempts
with exponential backoff; a node that still fails is reported unrecoverable
instead of being replaced forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from mlinfra.jsondata import Result
from mlinfra.timeutil import utc_now
from mlinfra.verify.result import CheckResult

DETECT_S = 10.0  # how long a node may take to answer before it counts as failing


Outcome = Literal["healed", "unrecoverable"]


@dataclass
class Replacement(Result):
    node: str
    failed_check: str  # what was wrong: "health" or "gpu"
    reason: str
    attempts: int
    outcome: Outcome
    at: str = ""  # when the outcome was known (UTC, ISO 8601)
    elapsed_s: float = 0.0


@dataclass
class HealReport(Result):
    _json_extra = ("unrecoverable", "passed")

    stack: str
    checked: int
    healthy: list[str] = field(default_factory=list)
    replacements: list[Replacement] = field(default_factory=list)

    @property
    def unrecoverable(self) -> list[str]:
        return [r.node for r in self.replacements if r.outcome == "unrecoverable"]

    @property
    def passed(self) -> bool:
        return not self.unrecoverable


def _failures(stack, nodes, health_deadline_s: float) -> dict[str, CheckResult]:
    """Node name → its first failed check result (health before gpu)."""
    from mlinfra import verify

    # fresh: a GCP node's report must be from now, not from its boot (a no-op for the local target).
    report = verify.run(stack, nodes, checks=["health", "gpu"], health_deadline_s=health_deadline_s, fresh=True)
    failed: dict[str, CheckResult] = {}
    for result in report.results:
        if result.status == "fail":
            failed.setdefault(result.node, result)
    return failed


def heal(
    stack,
    *,
    watch: bool = False,
    interval_s: float = 60.0,
    rounds: int | None = None,
    on_round: Callable[[HealReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **options,
) -> HealReport:
    """Verify every node; replace the failing ones (only those) until healthy or out of attempts.

    ``watch``: go on, a round every ``interval_s``, until ``rounds`` rounds (None: until
    interrupted; Ctrl-C while waiting ends the watch quietly) and return the last round's
    report; ``on_round`` hears each one. ``options`` are ``heal_once``'s.
    """
    if not watch:
        return heal_once(stack, sleep=sleep, **options)
    done = 0
    while True:
        report = heal_once(stack, sleep=sleep, **options)
        done += 1
        if on_round:
            on_round(report)
        if rounds is not None and done >= rounds:
            return report
        try:
            sleep(interval_s)
        except KeyboardInterrupt:
            return report


def heal_once(
    stack,
    *,
    attempts: int = 3,
    backoff_s: float = 2.0,
    detect_s: float = DETECT_S,
    on_event=None,
    on_replacement: Callable[[Replacement], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> HealReport:
    """One round: verify every node, replace the failing ones until healthy or out of attempts."""
    nodes = stack.status().nodes
    if not nodes:
        raise stack.not_deployed()
    failing = _failures(stack, nodes, detect_s)
    report = HealReport(stack.name, len(nodes), [n.name for n in nodes if n.name not in failing])
    pending = {n.key: (n, failing[n.name]) for n in nodes if n.name in failing}
    started = {key: time.monotonic() for key in pending}
    notify = on_replacement or (lambda replacement: None)
    for attempt in range(1, attempts + 1):
        if not pending:
            break
        if attempt > 1:
            sleep(backoff_s * 2 ** (attempt - 2))
        replaced = stack.replace_nodes(list(pending), on_event=on_event)
        fresh = [node for node in replaced if node.key in pending]
        # New nodes get the stack's full health deadline: a model load takes what it takes.
        still = _failures(stack, fresh, stack.spec.verify.health_timeout_s)
        for node in fresh:
            original, first_failure = pending[node.key]
            if node.name in still and attempt < attempts:
                continue
            outcome: Outcome = "unrecoverable" if node.name in still else "healed"
            reason = still[node.name].message if node.name in still else first_failure.message
            replacement = Replacement(
                node=node.name,
                failed_check=first_failure.check,
                reason=reason or first_failure.summary,
                attempts=attempt,
                outcome=outcome,
                at=utc_now(),
                elapsed_s=time.monotonic() - started[node.key],
            )
            report.replacements.append(replacement)
            notify(replacement)
            del pending[node.key]
    for original, first_failure in pending.values():  # replaced, yet gone from the outputs
        replacement = Replacement(
            node=original.name,
            failed_check=first_failure.check,
            reason="the node is missing after its replacement",
            attempts=attempts,
            outcome="unrecoverable",
            at=utc_now(),
            elapsed_s=time.monotonic() - started[original.key],
        )
        report.replacements.append(replacement)
        notify(replacement)
    return report
