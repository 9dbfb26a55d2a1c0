"""What the API's stack operations return. Each result owns its JSON (``as_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra.engine.events import PlanSummary
from mlinfra.jsondata import Result
from mlinfra.nodes import Node

if TYPE_CHECKING:
    from mlinfra.state.lock import LockInfo
    from mlinfra.targets.base import Move
    from mlinfra.verify import VerifyReport


@dataclass
class PlanResult(Result):
    _json_extra = ("drift",)

    stack: str
    workdir: Path
    summary: PlanSummary
    notes: list[str] = field(default_factory=list)  # choices made for the user, warnings
    cost: Any | None = None  # prices.Cost where the target has a price

    @property
    def drift(self) -> list:
        """Resources changed outside mlinfra since the last apply (refresh found them)."""
        return self.summary.drift

    @property
    def exit_code(self) -> int:
        """``plan --detailed-exitcode``: 3 when the plan would change something, else 0.

        Drift alone does not count: refresh also reports objects that changed only where the module
        ignores changes (hashicorp/terraform#28803), such as the mlinfra-check-request metadata key
        `verify --fresh` and `heal` set on GCP nodes; its ``resource_drift`` event names the object,
        not the attributes. Drift that matters is drift the plan undoes, so it is a planned change.
        """
        return 3 if self.summary.has_changes else 0


@dataclass
class UpResult(Result):
    _json_extra = ("passed",)

    stack: str
    summary: PlanSummary
    applied: bool
    nodes: list[Node] = field(default_factory=list)
    elapsed_s: float = 0.0
    verify: VerifyReport | None = None  # the verification gate's report (health only with verify=False)
    moves: list[Move] = field(default_factory=list)  # GCP zone fallback: nodes moved after a stockout
    swept: int = 0  # orphaned processes of the stack (outside state) stopped before applying

    @property
    def passed(self) -> bool:
        return self.verify is None or self.verify.passed


@dataclass
class DownResult(Result):
    stack: str
    summary: PlanSummary
    destroyed: bool
    elapsed_s: float = 0.0
    swept: int = 0  # processes of the stack found running outside state, and stopped


@dataclass
class StatusResult(Result):
    stack: str
    target: str
    deployed: bool
    workdir: Path
    nodes: list[Node] = field(default_factory=list)
    lock: LockInfo | None = None  # who holds the stack's lock right now, if anyone
    orphans: list[int] = field(default_factory=list)  # pids of the stack's processes outside state
    incomplete: bool = False  # resources in state without outputs (an interrupted operation)
    autoscale: dict[str, Any] | None = None  # [autoscale] stacks: engine, replicas, bounds, per region
    endpoint: str = ""  # [autoscale] stacks: the serving endpoint (the first region's Serve proxy)
    cost: Any | None = None  # deployed stacks: what the nodes have cost so far (``ops.cost.Spend``)
