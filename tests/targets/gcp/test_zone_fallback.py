"""Zone fallback in `up` on GCP: a stockout moves the failed node to another zone and applies again.

GCP cannot run here, so the engine is a stand-in that fails its first apply with a real
stockout (or quota) text recorded from a public issue (tests/data/gcp/errors, sources inside);
everything after the engine — classification, the zone choice, the recorded move, the
re-render that puts the node in its new zone — is the real code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlinfra import Stack
from mlinfra.errors import EngineError
from mlinfra.engine.events import ApplySummary, Diagnostic, PlanSummary
from helpers import DATA

ERRORS = DATA / "gcp" / "errors"
ADDRESS = 'google_compute_instance.node["us-central1-0"]'


def recorded(name: str) -> str:
    return json.loads((ERRORS / f"{name}.json").read_text())["text"]


class RecordedFailureEngine:
    """Fails the first ``failures`` applies with a recorded GCP error, then succeeds."""

    def __init__(self, stack, texts: list[str], plans: list):
        self.stack, self.texts, self.plans = stack, list(texts), plans

    def plan(self, **_):
        self.plans.append(json.loads((self.stack.render().workdir / "terraform.tfvars.json").read_text()))
        return PlanSummary(add=1)

    def apply(self):
        if self.texts:
            text = self.texts.pop(0)
            raise EngineError("terraform apply failed", diagnostics=[
                Diagnostic("error", "Error waiting for instance to create", text, address=ADDRESS)])
        return ApplySummary(add=1, outputs={"nodes": {}})

    def apply_now(self, **_):  # plan and apply in one run, as `up` does when nobody reviews
        return self.plan(), self.apply()

    def outputs(self):
        return {"nodes": {}}


@pytest.fixture
def gcp_stack(tmp_path, monkeypatch):
    stack = Stack(name="fallback", target="gcp", path=tmp_path / "mlinfra.toml",
                  gcp={"project": "ml-demand-predictor", "regions": ["us-central1"]}, compute={"gpu": "t4"})
    plans: list = []
    engines: list = []

    def install(texts):
        engine = RecordedFailureEngine(stack, texts, plans)
        monkeypatch.setattr(Stack, "_engine", lambda self, on_event, migrate: engine)
        engines.append(engine)
        return plans

    return stack, install


def zone_of(tfvars: dict) -> str:
    return tfvars["nodes"]["us-central1-0"]["zone"]


def test_stockout_moves_the_node_and_applies_again(gcp_stack):
    stack, install = gcp_stack
    plans = install([recorded("stockout-t4-with-details")])
    result = stack.up(verify=False, wait_ready=False)
    [move] = result.moves
    assert move.node == "us-central1-0" and move.from_zone != move.to_zone
    assert move.to_zone.startswith("us-central1-")
    assert "no capacity for n1-standard-4 with 1× nvidia-tesla-t4" in move.reason
    # The re-plan rendered the node into its new zone, from the recorded move.
    assert [zone_of(p) for p in plans] == [move.from_zone, move.to_zone]
    # ... and records the move in the module (terraform_data.zone_fallback: the state keeps it, so a
    # fresh checkout tells it from a gcp.zones change; tests/targets/gcp/test_read_back_state.py).
    assert [p["zone_fallbacks"] for p in plans] == [
        {}, {"us-central1-0": {"from": move.from_zone, "to": move.to_zone}}]


def test_quota_errors_never_move_nodes(gcp_stack):
    stack, install = gcp_stack
    install([recorded("quota-v100")])
    with pytest.raises(EngineError) as info:
        stack.up(verify=False, wait_ready=False)
    assert info.value.message.startswith("node us-central1-0: quota ")
    assert "another zone will not help" in info.value.message


def test_no_zone_fallback_fails_with_one_line(gcp_stack):
    stack, install = gcp_stack
    install([recorded("stockout-t4-with-details")])
    with pytest.raises(EngineError) as info:
        stack.up(verify=False, wait_ready=False, zone_fallback=False)
    assert info.value.message.startswith("node us-central1-0: no capacity for n1-standard-4 with 1× nvidia-tesla-t4")
    assert info.value.hint == "zone fallback is off (--no-zone-fallback)"


def test_every_zone_stocked_out_gives_up(gcp_stack):
    stack, install = gcp_stack
    install([recorded("stockout-t4-with-details")] * 10)  # no zone of the region has capacity
    with pytest.raises(EngineError) as info:
        stack.up(verify=False, wait_ready=False)
    assert "no capacity for n1-standard-4" in info.value.message


def test_other_errors_are_not_touched(gcp_stack):
    stack, install = gcp_stack
    install([recorded("not-capacity-live-migration")])
    with pytest.raises(EngineError) as info:
        stack.up(verify=False, wait_ready=False)
    assert info.value.message == "terraform apply failed"
