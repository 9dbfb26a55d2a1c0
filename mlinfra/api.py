"""The Python API: a ``Stack`` you can render, plan, bring up, inspect and tear down.

Every method returns a result object and never prints. Long operations report
progress through an optional ``on_event`` callback (``tfevents.Progress``), and
ask before changing anything through an optional ``confirm`` callback that
receives the plan summary; without one, they proceed (the caller decided).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlinfra import nodes as node_probe
from mlinfra.errors import MlinfraError, UsageError
from mlinfra.render import RenderResult, render
from mlinfra.spec import StackSpec
from mlinfra.tfevents import PlanSummary, Progress

Confirm = Callable[[PlanSummary], bool]
OnEvent = Callable[[Progress], None]


class Aborted(MlinfraError):
    """The user declined the plan; nothing was changed."""


@dataclass
class PlanResult:
    stack: str
    workdir: Path
    summary: PlanSummary


@dataclass
class UpResult:
    stack: str
    summary: PlanSummary
    applied: bool
    nodes: list[node_probe.Node] = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass
class DownResult:
    stack: str
    summary: PlanSummary
    destroyed: bool
    elapsed_s: float = 0.0


@dataclass
class StatusResult:
    stack: str
    target: str
    deployed: bool
    workdir: Path
    nodes: list[node_probe.Node] = field(default_factory=list)


class Stack(StackSpec):
    """A validated stack plus the operations on it. See ``StackSpec`` for the fields."""

    def render(self, out: str | Path | None = None) -> RenderResult:
        """Write the Terraform root module (default: the stack's work dir)."""
        return render(self, Path(out) if out else None)

    def plan(self, *, on_event: OnEvent | None = None) -> PlanResult:
        """What ``up`` would change, without changing anything."""
        engine = self._engine(on_event)
        return PlanResult(self.name, self.workdir, engine.plan())

    def up(self, *, confirm: Confirm | None = None, on_event: OnEvent | None = None,
           wait_ready: bool = True) -> UpResult:
        """Create or update the stack's nodes so they match the stack file.

        With nothing to change, applies nothing. With ``wait_ready``, returns once every
        node answers its health path (or raises when ``verify.health_timeout_s`` passes).
        """
        started = time.monotonic()
        engine = self._engine(on_event)
        summary = engine.plan()
        if summary.has_changes:
            if confirm is not None and not confirm(summary):
                raise Aborted("aborted: nothing was changed")
            outputs = engine.apply().outputs  # the apply reports them: no extra Terraform run
        else:
            outputs = engine.outputs()
        found = node_probe.from_outputs(outputs, self.workdir)
        if wait_ready:
            found = node_probe.wait_ready(found, timeout_s=self.verify.health_timeout_s)
        return UpResult(self.name, summary, summary.has_changes, found, time.monotonic() - started)

    def down(self, *, confirm: Confirm | None = None, on_event: OnEvent | None = None,
             force: bool = False) -> DownResult:
        """Destroy everything the stack created, and nothing else."""
        if self.protected and not force:
            raise UsageError(f"stack {self.name!r} is protected (protected = true); pass --force to destroy it")
        started = time.monotonic()
        if not self._has_state():
            return DownResult(self.name, PlanSummary(), False)
        engine = self._engine(on_event)
        summary = engine.plan(destroy=True)
        if not summary.has_changes:
            return DownResult(self.name, summary, False, time.monotonic() - started)
        if confirm is not None and not confirm(summary):
            raise Aborted("aborted: nothing was destroyed")
        engine.apply()
        return DownResult(self.name, summary, True, time.monotonic() - started)

    def status(self) -> StatusResult:
        """The nodes in state, each with its endpoint and whether it is alive and ready."""
        if not self._has_state():
            return StatusResult(self.name, self.target, False, self.workdir)
        from mlinfra.engine import Terraform

        outputs = Terraform(self.workdir).outputs()
        found = [node_probe.probe(node) for node in node_probe.from_outputs(outputs, self.workdir)]
        return StatusResult(self.name, self.target, bool(found), self.workdir, found)

    # -- internals ------------------------------------------------------------------------

    def _engine(self, on_event: OnEvent | None):
        from mlinfra.engine import Terraform  # lazy: engine pulls in subprocess machinery

        rendered = self.render()
        engine = Terraform(rendered.workdir, on_event)
        backend = rendered.workdir / "backend.tfbackend.json"
        engine.init(backend if backend.exists() else None)
        return engine

    def _has_state(self) -> bool:
        """Whether this stack was ever applied here (local state or a configured backend)."""
        workdir = self.workdir
        if not (workdir / ".terraform").is_dir():
            return False
        if self.state.backend == "local":
            return (workdir / "terraform.tfstate").is_file()
        return True
