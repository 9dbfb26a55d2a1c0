"""The GCP flavour of [autoscale] renders a module that loads and fits the real 6.50 provider
schema: a head VM and a regional worker MIG per region, with the GPU rules of templates/gcp."""

from __future__ import annotations

import json
import re

import pytest

from helpers import SCHEMA, gcp_stack
from mlinfra import SpecError
from mlinfra.clouds.gcp import schema

SA = "ray-head@ml-demo-123456.iam.gserviceaccount.com"


def autoscaled(tmp_path, **compute):
    return gcp_stack(
        tmp_path,
        "ray-gcp",
        gcp={"regions": ["us-central1", "europe-west4"], "service_account": SA},
        compute={"gpu": "t4", **compute},
        autoscale={"min_replicas": 0, "max_replicas": 3},
    )


@pytest.mark.parametrize("gpu", ["t4", "l4"])
def test_renders_heads_and_worker_groups_that_fit_the_provider_schema(tmp_path, gpu):
    stack = autoscaled(tmp_path, gpu=gpu)
    rendered = stack.render()
    assert schema.check_module(rendered.workdir, SCHEMA) == []
    values = json.loads((rendered.workdir / "terraform.tfvars.json").read_text())
    assert sorted(values["heads"]) == ["europe-west4-0", "us-central1-0"]
    worker = values["workers"]["us-central1"]
    assert worker["zones"] and all(z.startswith("us-central1-") for z in worker["zones"])
    assert worker["attached_gpus"] == ([{"type": "nvidia-tesla-t4", "count": 1}] if gpu == "t4" else [])
    provider = values["heads"]["us-central1-0"]["config"]["autoscaler"]["provider"]
    assert provider["group"] == "ray-gcp-us-central1-0-workers" and provider["module"] == "mig_provider.MigNodeProvider"
    main = (rendered.workdir / "main.tf").read_text()
    for needle in (
        "name_prefix",
        "create_before_destroy = true",
        "ignore_changes = [target_size]",
        "wait_for_instances = false",
        "auto_healing_policies",
        'on_host_maintenance         = "TERMINATE"',
    ):
        assert needle in main
    assert not re.search(r"^\s*target_size\s*=", main, re.M)  # never set on an autoscaled group
    firewall = (rendered.workdir / "firewall.tf").read_text()
    assert '["35.191.0.0/16", "130.211.0.0/22"]' in firewall
    assert {"mig_provider.py", "head_startup.sh", "worker_startup.sh"} <= set(rendered.files)


def test_autoscale_on_gcp_needs_a_service_account(tmp_path):
    with pytest.raises(SpecError, match="gcp.service_account: is required with \\[autoscale\\]"):
        gcp_stack(tmp_path, "ray-gcp", compute={"gpu": "t4"}, autoscale={})
