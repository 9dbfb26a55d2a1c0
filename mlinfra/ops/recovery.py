"""Apply, and recover from what the target can recover from: a GCP stockout or quota failure in
one zone sends the affected nodes to the next zone that offers their GPU (``Driver.recover``),
and the module is rendered and applied again. Used by ``Stack.up``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlinfra.engine.events import PlanSummary, Progress
from mlinfra.errors import EngineError

if TYPE_CHECKING:
    from mlinfra.engine import Terraform


def apply_with_recovery(
    stack: Any,
    engine: Terraform,
    *,
    allowed: bool,
    reviewed: bool,
    on_event: Callable[[Progress], None] | None,
    reengine: Callable[[], Terraform],
) -> tuple[PlanSummary, dict, list]:
    """Apply (the saved plan when ``reviewed``, else plan and apply in one run). When it fails,
    the target may move nodes (``allowed``: the user did not turn zone fallback off); then
    ``reengine`` renders with the moves recorded and the apply runs again. Returns the plan
    summary (empty when reviewed: the caller has it), the outputs and the moves made."""
    moves: list = []
    tried: dict[str, list[str]] = {}
    summary = PlanSummary()
    while True:
        try:
            if reviewed:
                return summary, engine.apply().outputs, moves
            summary, applied = engine.apply_now()
            return summary, applied.outputs, moves
        except EngineError as exc:
            found = stack.driver.recover(stack.spec, stack.placement, stack.workspace, exc, tried, allowed)
            for move in found:
                moves.append(move)
                if on_event:
                    message = f"{move.reason}; moving to {move.to_zone}"
                    on_event(Progress(stack.node_address(move.node), "move", "output", message=message))
            engine = reengine()
            if reviewed:  # the same changes, in other zones: the user approved them already
                engine.plan()
