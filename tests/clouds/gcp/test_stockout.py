"""Capacity and quota failures, from real error texts recorded in public issues.

Each fixture in tests/data/gcp/errors/ holds the text as posted, the issue it comes from,
and what mlinfra must read from it (or null: not a capacity failure).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlinfra import Stack
from mlinfra.clouds.gcp import rules, stockout
from mlinfra.targets.gcp import module
from helpers import DATA

ERRORS = sorted((DATA / "gcp" / "errors").glob("*.json"))
# Quota metric names of the reference (§8); the texts follow the recorded "Quota 'X' exceeded" format.
QUOTA_METRICS = {"NVIDIA_T4_GPUS": "nvidia-tesla-t4", "NVIDIA_V100_GPUS": "nvidia-tesla-v100",
                 "NVIDIA_P100_GPUS": "nvidia-tesla-p100", "NVIDIA_P4_GPUS": "nvidia-tesla-p4",
                 "NVIDIA_K80_GPUS": "nvidia-tesla-k80", "NVIDIA_A100_GPUS": "nvidia-tesla-a100",
                 "NVIDIA_A100_80GB_GPUS": "nvidia-a100-80gb", "NVIDIA_L4_GPUS": "nvidia-l4",
                 "NVIDIA_H100_GPUS": "nvidia-h100-80gb", "NVIDIA_H100_MEGA_GPUS": "nvidia-h100-mega-80gb",
                 "NVIDIA_H200_GPUS": "nvidia-h200-141gb", "NVIDIA_B200_GPUS": "nvidia-b200"}


def load(name: str) -> dict:
    return json.loads((DATA / "gcp" / "errors" / f"{name}.json").read_text())


def test_fixtures_name_their_source():
    assert len(ERRORS) >= 12
    for path in ERRORS:
        data = json.loads(path.read_text())
        assert data["source"] and data["text"], path.name


@pytest.mark.parametrize("path", ERRORS, ids=lambda p: p.stem)
def test_classify_recorded_errors(path):
    data = json.loads(path.read_text())
    found = stockout.classify(data["text"])
    if data["expect"] is None:
        assert found is None
        return
    assert found is not None
    for field, value in data["expect"].items():
        got = getattr(found, field)
        assert (list(got) if isinstance(got, tuple) else got) == value, field
    line = found.describe()
    assert "\n" not in line and len(line) < 240
    assert found.fallback_helps == (found.kind == "stockout")


def test_stockout_line_names_gpu_zone_and_gcp_suggestion():
    found = stockout.classify(load("stockout-t4-with-details")["text"])
    assert found.describe() == ("no capacity for n1-standard-4 with 1× nvidia-tesla-t4 in us-central1-b right now "
                                "(ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS); GCP suggests us-central1-a, us-central1-f")


def test_classify_inside_a_terraform_diagnostic():
    # The provider wraps the API message; mlinfra classifies "summary: detail" of the diagnostic.
    text = "Error waiting for instance to create: " + load("stockout-plain")["text"]
    assert stockout.classify(text).zone == "us-central1-a"


@pytest.mark.parametrize("metric", sorted(QUOTA_METRICS))
@pytest.mark.parametrize("spot", [False, True])
def test_gpu_quota_metrics_name_the_gpu_and_region(metric, spot):
    name = ("PREEMPTIBLE_" if spot else "") + metric
    found = stockout.classify(f"* google_compute_instance.node[\"us-central1-0\"]: Quota '{name}' exceeded.  Limit: 0.0 in region us-central1.")
    assert (found.kind, found.metric, found.gpu, found.spot, found.region, found.limit) == \
        ("quota", name, QUOTA_METRICS[metric], spot, "us-central1", 0.0)
    assert not found.fallback_helps
    assert f"quota {name} ({QUOTA_METRICS[metric]}, {'Spot' if spot else 'on-demand'}) exceeded in us-central1" in found.describe()


def test_nothing_to_classify():
    assert stockout.classify("") is None
    assert stockout.classify("Error: Invalid reference") is None


def test_node_key_from_address():
    assert stockout.node_key_from_address('google_compute_instance.node["europe-west4-1"]') == "europe-west4-1"
    assert stockout.node_key_from_address("google_compute_firewall.serve") is None


# -- zone fallback -----------------------------------------------------------------------------------

def t4_stack(**gcp_section) -> Stack:
    return Stack(name="fallback", target="gcp", gcp={"project": "ml-demo-123456", **gcp_section},
                 compute={"gpu": "t4", "replicas": 2})


def test_next_zone_stays_in_the_region_and_offers_the_gpu():
    stack = t4_stack(regions=["us-central1", "europe-west4"])
    assert stockout.next_zone(stack.placement.resolved, "us-central1-0", "us-central1-a") == "us-central1-b"
    assert stockout.next_zone(stack.placement.resolved, "us-central1-0", "us-central1-b", tried=["us-central1-a"]) == "us-central1-c"
    assert stockout.next_zone(stack.placement.resolved, "europe-west4-1", "europe-west4-a") == "europe-west4-b"
    every = ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]
    assert stockout.next_zone(stack.placement.resolved, "us-central1-0", "us-central1-f", tried=every) is None
    # GCP's own suggestion goes first when the zone is a candidate.
    assert stockout.next_zone(stack.placement.resolved, "us-central1-0", "us-central1-b", prefer=["us-central1-f"]) == "us-central1-f"


def test_next_zone_respects_the_zones_the_user_listed():
    stack = t4_stack(zones=["us-central1-a", "us-central1-c"])
    assert stockout.next_zone(stack.placement.resolved, "us-central1-1", "us-central1-a") == "us-central1-c"
    assert stockout.next_zone(stack.placement.resolved, "us-central1-1", "us-central1-c", tried=["us-central1-a"]) is None


def test_plan_moves_only_for_stockouts_and_replans_the_render(tmp_path):
    stack = Stack(name="fallback", target="gcp", path=tmp_path / "mlinfra.toml", gcp={"project": "ml-demo-123456"},
                  compute={"gpu": "t4", "machine_type": "n1-standard-4", "replicas": 2})
    assert [n.zone for n in rules.placement(stack.placement.resolved, module.zone_overrides(stack.workspace))] == ["us-central1-a", "us-central1-a"]
    stock = stockout.classify(load("stockout-t4-with-details")["text"].replace("us-central1-b", "us-central1-a"))
    quota = stockout.classify("Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1.")
    moves = stockout.plan_moves(stack.placement.resolved, [("us-central1-1", "us-central1-a", stock), ("us-central1-0", "us-central1-a", quota)])
    assert [(m.node, m.from_zone, m.to_zone) for m in moves] == [("us-central1-1", "us-central1-a", "us-central1-f")]
    for move in moves:
        module.record_zone_move(stack.workspace, move.node, move.from_zone, move.to_zone, move.reason)
    # The next render places the moved node in its new zone and leaves the other alone.
    tfvars = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())
    assert {k: n["zone"] for k, n in tfvars["nodes"].items()} == {"us-central1-0": "us-central1-a", "us-central1-1": "us-central1-f"}
    recorded = module.zone_moves(stack.workspace)
    assert recorded[0]["node"] == "us-central1-1" and "no capacity" in recorded[0]["reason"] and recorded[0]["at"]


def test_a_recorded_zone_that_no_longer_fits_is_ignored(tmp_path):
    stack = Stack(name="moved", target="gcp", path=tmp_path / "mlinfra.toml", gcp={"project": "ml-demo-123456"},
                  compute={"gpu": "p4"})
    module.record_zone_move(stack.workspace, "us-central1-0", "us-central1-a", "us-central1-f", "test")  # no P4 in -f
    assert rules.placement(stack.placement.resolved, module.zone_overrides(stack.workspace))[0].zone == "us-central1-a"
