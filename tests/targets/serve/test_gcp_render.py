"""The GCP flavour of [autoscale] renders a module that loads and fits the real 6.50 provider
schema: a head VM and a regional worker MIG per region, with the GPU rules of templates/gcp."""

from __future__ import annotations

import json
import re

import pytest

from helpers import SCHEMA, TEMPLATES, gcp_stack, instance_schema
from mlinfra import SpecError
from mlinfra.clouds.gcp import schema
from mlinfra.targets.serve.gcp import region_names

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
    assert provider["group"] == worker["group"] == "ray-gcp-us-central1-workers"  # the MIG it resizes
    assert provider["module"] == "mig_provider.MigNodeProvider"
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


def test_the_longest_names_fit_gcp_and_the_autoscaler_names_the_group_terraform_makes(tmp_path):
    """A 30-character stack name (the most an environment leaves too) in the catalog's longest
    region: every name fits GCP's limits, and Ray's autoscaler resizes the MIG Terraform named."""
    name, region = "a" * 30, "northamerica-northeast2"
    stack = gcp_stack(
        tmp_path,
        name,
        gcp={"regions": [region], "service_account": SA},
        compute={"gpu": "l4"},
        autoscale={"max_replicas": 2},
    )
    rendered = stack.render()
    assert schema.check_module(rendered.workdir, SCHEMA) == []
    values = json.loads((rendered.workdir / "terraform.tfvars.json").read_text())
    [head] = values["heads"].values()
    worker = values["workers"][region]
    provider = head["config"]["autoscaler"]["provider"]
    assert (provider["group"], provider["head_name"]) == (worker["group"], head["name"])
    assert max(len(head["name"]), len(worker["group"])) <= 63 and len(worker["base_instance_name"]) <= 58
    main = (rendered.workdir / "main.tf").read_text()
    assert "name               = each.value.group" in main and "name         = each.value.name" in main


def test_a_name_over_gcps_limit_is_a_spec_error_that_gives_the_budget():
    assert region_names("a" * 30, "us-central1", "us-central1-0")["group"] == "a" * 30 + "-us-central1-workers"
    with pytest.raises(
        SpecError,
        match=r"^name: the group '.*' is 64 characters and GCP allows 63: the stack "
        r"name \(30\) and region 'northamerica-northeast22x' \(25\) must be shorter",
    ):
        region_names("a" * 30, "northamerica-northeast22x", "northamerica-northeast22x-0")


def test_the_heads_output_reads_only_attributes_the_instance_has_and_their_creation_time(tmp_path):
    """`mlinfra cost` counts each head's running time from its creation_timestamp (as for plain GCP
    nodes, templates/gcp/outputs.tf.j2): every head attribute the output reads is the provider's."""
    rendered = autoscaled(tmp_path).render()
    outputs = (rendered.workdir / "outputs.tf").read_text()
    used = set(re.findall(r"google_compute_instance\.head\[key\]\.([a-z_]+)", outputs))
    assert {"creation_timestamp", "machine_type"} <= used
    block = instance_schema()
    assert used <= set(block["attributes"]) | set(block["block_types"])
    assert block["attributes"]["creation_timestamp"]["computed"]
    assert re.search(
        r"^\s*creation_timestamp\s*=\s*google_compute_instance\.head\[key\]\.creation_timestamp$", outputs, re.M
    )


def test_heads_and_workers_carry_the_gcp_targets_ssh_keys_value_empty_without_a_key(tmp_path):
    """No serve.ssh_cidrs: ssh_public_key is "", and the "ssh-keys" value must then be "" too,
    not a malformed "mlinfra:" entry with no key: the GCP target's expression (templates/gcp)."""
    rendered = autoscaled(tmp_path).render()
    assert json.loads((rendered.workdir / "terraform.tfvars.json").read_text())["ssh_public_key"] == ""
    gcp = re.findall(r'"ssh-keys"\s+=\s+(.+)', (TEMPLATES / "gcp" / "main.tf.j2").read_text())
    served = re.findall(r'"ssh-keys"\s+=\s+(.+)', (rendered.workdir / "main.tf").read_text())
    assert len(gcp) == 1 and "compact([var.ssh_public_key])" in gcp[0]
    assert served == gcp * 2  # the head and the workers' instance template


def test_heads_record_zone_fallback_moves_as_the_gcp_targets_nodes_do(tmp_path):
    """One template in both modules (terraform_data.zone_fallback, read back by adopt.py): the
    GCP target's own, rendered beside the serve-gcp module's files, not a copy of it."""
    assert not (TEMPLATES / "serve-gcp" / "zone_fallback.tf.j2").exists()
    rendered = autoscaled(tmp_path).render()
    module = (rendered.workdir / "zone_fallback.tf").read_text()
    assert 'resource "terraform_data" "zone_fallback"' in module
    assert "var.zone_fallbacks" in module
