"""A fresh checkout over the stack's remote state renders the module the deployment was applied
from: the SSH public key and zone fallback's moves come back from the state (adopt.py), so the
scheduled drift check of a CI job does not plan a new key or a zone move on every run.

The google provider cannot be installed here, so Terraform's ``init`` is not run; the state is
a document in Terraform's state format (version 4: resources[].instances[] with index_key and
attributes, as ``terraform state pull`` prints it), holding what the first work dir applied.
"""

from __future__ import annotations

import json

import pytest

from mlinfra import Stack
from mlinfra.targets.gcp import adopt, module

SECTIONS = {
    "gcp": {"project": "ml-demo-123456", "regions": ["us-central1"]},
    "compute": {"gpu": "t4", "replicas": 2},
    "serve": {"ssh_cidrs": ["203.0.113.0/24"]},
    "state": {"backend": "gcs", "bucket": "company-terraform-state", "prefix": "ml/ci"},
}


class StateOnly:
    """The engine's two calls that ``Stack._engine`` makes here: init, and the state read."""

    def __init__(self, state: dict):
        self.state = state
        self.pulls = 0

    def init(self, backend_config, migrate=None):
        pass

    def state_pull(self) -> dict:
        self.pulls += 1
        return self.state


def prepared(stack: Stack, state: dict, monkeypatch) -> tuple[dict, StateOnly]:
    engine = StateOnly(state)
    monkeypatch.setattr(Stack, "_terraform", lambda self, on_event: engine)
    stack._engine(None, None)  # render, init, read back, render again: what plan and up start with
    return json.loads(stack.workspace.tfvars.read_text()), engine


def applied_state(values: dict, nodes: str = "nodes", resource_name: str = "node") -> dict:
    """The state after applying ``values`` (terraform.tfvars.json): each node's zone and metadata.
    serve-gcp: ``values["heads"]`` as ``google_compute_instance.head``."""
    instances = [
        {
            "index_key": key,
            "schema_version": 6,
            "attributes": {
                "name": f"{values['stack']}-{key}",
                "zone": node["zone"],
                "metadata": {"block-project-ssh-keys": "true", "ssh-keys": f"mlinfra:{values['ssh_public_key']}"},
            },
        }
        for key, node in values[nodes].items()
    ]
    resource = {"mode": "managed", "type": "google_compute_instance", "name": resource_name,
                "provider": 'provider["registry.terraform.io/hashicorp/google"]', "instances": instances}
    return {"version": 4, "serial": 3, "lineage": "0d1e", "outputs": {}, "resources": [resource]}


def test_a_second_checkout_renders_what_the_first_applied(tmp_path, monkeypatch):
    first = Stack(name="ci", target="gcp", path=tmp_path / "laptop" / "mlinfra.toml", **SECTIONS)
    created, _ = prepared(first, {}, monkeypatch)  # the first deployment: no state yet, a new key
    assert created["ssh_public_key"].startswith("ssh-ed25519 ")
    # Zone fallback moved a node after a stockout; the record is in the first work dir only.
    moved_from = created["nodes"]["us-central1-1"]["zone"]
    moved_to = next(z for z in ("us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f") if z != moved_from)
    module.record_zone_move(first.workspace, "us-central1-1", moved_from, moved_to, "stockout")
    first.render()
    applied = json.loads(first.workspace.tfvars.read_text())

    second = Stack(name="ci", target="gcp", path=tmp_path / "ci-runner" / "mlinfra.toml", **SECTIONS)
    rendered, engine = prepared(second, applied_state(applied), monkeypatch)

    assert engine.pulls == 1
    assert rendered["nodes"]["us-central1-1"]["zone"] == moved_to
    assert rendered["ssh_public_key"] == applied["ssh_public_key"]
    different = {name for name in applied if applied[name] != rendered[name]}
    assert different == {"ssh_private_key_file"}  # a path in the work dir: an output, no resource
    assert not second.workspace.ssh_key.exists()  # the private key never left the first machine
    assert json.loads((second.workspace / module.STATE_RECORD).read_text())["ssh_public_key"] is True

    # Read once per work dir: the next command renders from the records, no state read.
    again, engine = prepared(second, applied_state(applied), monkeypatch)
    assert engine.pulls == 0 and again == rendered


def test_an_autoscaled_stacks_second_checkout_reads_its_heads_key_and_zone_back(tmp_path, monkeypatch):
    """serve-gcp's VMs are ``google_compute_instance.head`` (the driver's node_resource): read
    back like the GCP target's nodes, or the nightly drift check plans a new key in every head
    and a new worker instance template."""
    sections = {
        **SECTIONS,
        "gcp": {**SECTIONS["gcp"], "service_account": "ray-head@ml-demo-123456.iam.gserviceaccount.com"},
        "compute": {"gpu": "t4"},
        "autoscale": {"min_replicas": 0, "max_replicas": 3},
    }
    first = Stack(name="rg", target="gcp", path=tmp_path / "laptop" / "mlinfra.toml", **sections)
    created, _ = prepared(first, {}, monkeypatch)
    assert created["ssh_public_key"].startswith("ssh-ed25519 ") and set(created["heads"]) == {"us-central1-0"}
    moved_from = created["heads"]["us-central1-0"]["zone"]
    moved_to = next(z for z in ("us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f") if z != moved_from)
    module.record_zone_move(first.workspace, "us-central1-0", moved_from, moved_to, "stockout")
    first.render()
    applied = json.loads(first.workspace.tfvars.read_text())

    second = Stack(name="rg", target="gcp", path=tmp_path / "ci" / "mlinfra.toml", **sections)
    rendered, engine = prepared(second, applied_state(applied, "heads", "head"), monkeypatch)

    assert engine.pulls == 1
    assert rendered["ssh_public_key"] == applied["ssh_public_key"]
    assert rendered["heads"]["us-central1-0"]["zone"] == moved_to
    assert {name for name in applied if applied[name] != rendered[name]} == {"ssh_private_key_file"}
    assert json.loads((second.workspace / module.STATE_RECORD).read_text())["nodes"] == ["us-central1-0"]


def test_a_node_resource_of_another_name_is_not_read():
    state = applied_state({"stack": "s", "ssh_public_key": "k", "nodes": {"r-0": {"zone": "z"}}})
    assert set(adopt.applied_nodes(state, "google_compute_instance.node")) == {"r-0"}
    assert adopt.applied_nodes(state, "google_compute_instance.head") == {}


def test_stacks_with_local_state_read_nothing_back(tmp_path, monkeypatch):
    """Local state lives in the work dir with the key and the record: nothing can be missing."""
    sections = {**SECTIONS, "state": {"backend": "local"}}
    stack = Stack(name="here", target="gcp", path=tmp_path / "mlinfra.toml", **sections)
    values, engine = prepared(stack, {}, monkeypatch)
    assert engine.pulls == 0 and values["ssh_public_key"].startswith("ssh-ed25519 ")


@pytest.mark.parametrize("entry", ["", "mlinfra:", "mlinfra:ssh-ed25519 AAAAC3Nz mlinfra-ci"])
def test_the_applied_key_is_read_from_the_ssh_keys_metadata(entry):
    nodes = {"us-central1-0": {"metadata": {"ssh-keys": entry}}}
    assert adopt.applied_public_key(nodes) == entry.partition(":")[2]
