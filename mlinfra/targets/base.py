"""What a target is: the contract every ``targets/<name>/`` package fulfils.

The API (``mlinfra.api.Stack``) never asks which target a stack has; it asks the stack's
driver. A new target is one folder: a ``Driver`` subclass, its templates under the top-level
``templates/<name>/``, and its name in ``targets.NAMES``. Defaults here are what a target
without the capability does (no cost, no recovery, nothing to forget).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlinfra.errors import EngineError
    from mlinfra.nodes import Node
    from mlinfra.spec import StackSpec
    from mlinfra.workspace import Workspace


@dataclass(frozen=True)
class NodeSpec:
    """One node the stack asks for: a region × replica, keyed ``<region>-<replica>``."""

    key: str
    region: str
    replica: int

    def name(self, stack: str) -> str:
        return f"{stack}-{self.key}"


@dataclass(frozen=True)
class Placement:
    """Where the stack's nodes go, resolved once when the stack is built.

    ``resolved`` is the target's own answer (GCP: the machine type and each region's candidate
    zones); everything that depends on it reads it from here instead of working it out again.
    """

    nodes: tuple[NodeSpec, ...]
    resolved: Any = None


@dataclass(frozen=True)
class Move:
    """A node sent elsewhere by a target's recovery (GCP: zone fallback after a stockout)."""

    node: str
    from_zone: str
    to_zone: str
    reason: str


def node_specs(regions: Sequence[str], replicas: int) -> tuple[NodeSpec, ...]:
    return tuple(NodeSpec(f"{region}-{i}", region, i) for region in regions for i in range(replicas))


class Driver:
    """A target. Subclasses set the class attributes and override what they support."""

    name = ""
    templates = ""  # the folder under templates/ that holds this target's module
    # Files of other templates/ folders its module uses too, copied (or rendered) beside its own: the
    # node launchers' workload.py, the GCP record of zone fallback moves. Paths relative to templates/.
    shared_templates: tuple[str, ...] = ()
    node_resource = ""  # the Terraform resource of a node (``type.name``), for -replace/-target
    rebuild_budget_s = 600.0  # what `rebuild` allows by default
    uses_google_cloud = False  # `check` looks for Google credentials
    health_poll_cap_s = 1.0  # the longest pause between two health probes while a node starts
    no_price = "this target has no price list"  # why `mlinfra cost` shows no rate (where ``cost`` is None)

    # -- the stack file ----------------------------------------------------------------------

    def regions(self, spec: StackSpec) -> tuple[str, ...]:
        raise NotImplementedError

    def validate(self, spec: StackSpec) -> Placement:
        """Refuse what the target would reject (as ``SpecError``); return where nodes go."""
        return Placement(node_specs(self.regions(spec), spec.compute.replicas))

    def notes(self, spec: StackSpec, placement: Placement) -> list[str]:
        """What was chosen for the user, and warnings, shown before a plan."""
        from mlinfra import workload

        return workload.notes(spec)  # an image without a digest

    def cost(self, spec: StackSpec, placement: Placement) -> Any:
        """The estimated price (``prices.Cost``), or None where the target has no price (``no_price`` says why)."""
        return None

    # -- rendering ---------------------------------------------------------------------------

    def tfvars(self, spec: StackSpec, placement: Placement, workspace: Workspace) -> dict[str, Any]:
        """Every value the module needs: the only way user values reach Terraform."""
        raise NotImplementedError

    def node_address(self, key: str) -> str:
        return f"{self.node_resource}[{json.dumps(key)}]"

    # -- after apply -------------------------------------------------------------------------

    def discover(self, outputs: dict[str, Any], workspace: Workspace) -> list[Node]:
        """The deployed nodes, from Terraform's outputs (and whatever the target keeps beside them)."""
        from mlinfra.nodes import from_outputs

        return from_outputs(outputs)

    def exited(self, node: Node, workspace: Workspace) -> Callable[[], str | None] | None:
        """A cheap question "is the node still itself, and if not, why?" (its process ended, or
        another process holds its port) for health waiting and status; None where the target
        cannot tell (a remote VM: its health endpoint is all we see)."""
        return None

    def node_side(self, stack: Any, fresh: bool = False, checks: tuple[str, ...] = ()) -> Any:
        """Checks the nodes ran on themselves (GCP: ``targets.gcp.node_checks.NodeReports``), read
        instead of reaching the node from here; None: every check runs from this machine."""
        return None

    def gpu_runner(self, node: Node, workspace: Workspace) -> Any:
        """How the GPU check reaches the node: a ``verify.gpu.Runner``."""
        raise NotImplementedError

    def gpu_skip(self, spec: StackSpec, node: Node) -> str | None:
        """Why the GPU check does not apply to ``node`` (a CPU head in front of GPU workers), else None."""
        return None

    def autoscale_status(self, spec: StackSpec, workspace: Workspace, nodes: list[Node]) -> dict[str, Any] | None:
        """Replicas running and their bounds (``targets/serve``); None for a fixed-size stack."""
        return None

    def orphans(self, workspace: Workspace) -> list[int]:
        """Processes of this stack that nothing in state or the work dir accounts for."""
        return []

    def sweep(self, workspace: Workspace, pids: list[int] | None = None) -> int:
        """Stop the stack's processes left outside state (``pids``; None: every one still
        running, as after a destroy); returns how many were stopped."""
        return 0

    def forget(self, workspace: Workspace, hosts: list[str] | None) -> None:
        """Drop what pointed at destroyed nodes (SSH host keys); ``hosts`` None: all of them."""

    # -- failures ----------------------------------------------------------------------------

    def recover(
        self,
        spec: StackSpec,
        placement: Placement,
        workspace: Workspace,
        error: EngineError,
        tried: dict[str, list[str]],
        allowed: bool,
    ) -> list[Move]:
        """After a failed apply: moves that may let a second apply succeed (recorded by the
        target, so the next render uses them), or raise the error that explains the failure."""
        raise error

    def read_back_state(self, spec: StackSpec, placement: Placement, workspace: Workspace, engine: Any) -> bool:
        """After ``terraform init``: record in the work dir what it lacks and the state knows (a
        fresh CI checkout over remote state); True when the module must be rendered again."""
        return False

    def explain_init_failure(self, diagnostics: list[Any]) -> str | None:
        """One line for a known ``terraform init`` failure (a provider that cannot be installed)."""
        return None

    # -- state and scaffolding ---------------------------------------------------------------

    def bucket_location(self, spec: StackSpec) -> str:
        """Where `state bootstrap` creates the state bucket."""
        return "US"

    def scaffold_notes(self, stack_file: str) -> list[str]:
        """What `mlinfra new` tells the user to do next for a stack of this target."""
        return []

    def ci_notes(self, spec: StackSpec, stack_file: str) -> list[str]:
        """Advice `mlinfra ci github` gives about a stack of this target."""
        return []


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file the target keeps; {} when missing or corrupt."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
