"""A fresh checkout over the stack's remote state renders the module the deployment was applied
from: the SSH public key and zone fallback's moves come back from the state (adopt.py), so the
scheduled drift check of a CI job does not plan a new key or a zone move on every run.

The google provider cannot be installed here, so the VMs' part of the state is a document in
Terraform's state format (version 4: resources[].instances[] with index_key and attributes, as
``terraform state pull`` prints it), holding what the first work dir applied. Zone fallback's
record (``terraform_data.zone_fallback``, zone_fallback.tf) needs no provider: real Terraform
applies the rendered module's provider-free files, and its state file joins that document.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mlinfra import Stack
from mlinfra.engine.terraform import terraform_command, terraform_env
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


def applied_state(values: dict, nodes: str = "nodes", resource_name: str = "node", record: dict | None = None) -> dict:
    """The state after applying ``values`` (terraform.tfvars.json): each node's zone and metadata.
    serve-gcp: ``values["heads"]`` as ``google_compute_instance.head``. ``record``: the state real
    Terraform wrote for the module's provider-free part (``terraform_apply``), joined to it."""
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
    return {"version": 4, "serial": 3, "lineage": "0d1e", "outputs": {},
            "resources": [resource, *(record or {}).get("resources", [])]}


# The rendered module's files that need no provider: what real Terraform can apply here.
PROVIDER_FREE = ("variables.tf", "node_config.tf", "zone_fallback.tf", "terraform.tfvars.json")


def terraform(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*terraform_command(), *args], cwd=workdir, env=terraform_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode in (0, 2), done.stdout + done.stderr  # plan -detailed-exitcode: 2 is "changes"
    return done


def terraform_apply(stack: Stack, workdir: Path) -> dict:
    """Apply ``stack``'s rendered provider-free files in ``workdir`` (over the state there); returns the state."""
    workdir.mkdir(exist_ok=True)
    for name in PROVIDER_FREE:
        if (stack.workspace.root / name).exists():
            shutil.copy(stack.workspace.root / name, workdir / name)
    if not (workdir / ".terraform").exists():
        terraform(workdir, "init", "-input=false")
    terraform(workdir, "apply", "-auto-approve", "-input=false")
    return json.loads((workdir / "terraform.tfstate").read_text())


def terraform_plans_no_change(stack: Stack, workdir: Path) -> bool:
    for name in PROVIDER_FREE:
        if (stack.workspace.root / name).exists():
            shutil.copy(stack.workspace.root / name, workdir / name)
    return terraform(workdir, "plan", "-detailed-exitcode", "-input=false").returncode == 0


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
    record = terraform_apply(first, tmp_path / "deployed")

    second = Stack(name="ci", target="gcp", path=tmp_path / "ci-runner" / "mlinfra.toml", **SECTIONS)
    rendered, engine = prepared(second, applied_state(applied, record=record), monkeypatch)

    assert engine.pulls == 1
    assert rendered["nodes"]["us-central1-1"]["zone"] == moved_to
    assert rendered["zone_fallbacks"] == {"us-central1-1": {"from": moved_from, "to": moved_to}}
    [adopted] = json.loads((second.workspace / module.STATE_RECORD).read_text())["zone_moves"]
    assert (adopted["node"], adopted["from"], adopted["to"]) == ("us-central1-1", moved_from, moved_to)
    assert rendered["ssh_public_key"] == applied["ssh_public_key"]
    different = {name for name in applied if applied[name] != rendered[name]}
    assert different == {"ssh_private_key_file"}  # a path in the work dir: an output, no resource
    assert not second.workspace.ssh_key.exists()  # the private key never left the first machine
    assert json.loads((second.workspace / module.STATE_RECORD).read_text())["ssh_public_key"] is True

    # Read once per work dir: the next command renders from the records, no state read.
    again, engine = prepared(second, applied_state(applied), monkeypatch)
    assert engine.pulls == 0 and again == rendered
    assert terraform_plans_no_change(second, tmp_path / "deployed")  # the record as the first work dir applied it


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
    record = terraform_apply(first, tmp_path / "deployed")

    second = Stack(name="rg", target="gcp", path=tmp_path / "ci" / "mlinfra.toml", **sections)
    rendered, engine = prepared(second, applied_state(applied, "heads", "head", record), monkeypatch)

    assert engine.pulls == 1
    assert rendered["ssh_public_key"] == applied["ssh_public_key"]
    assert rendered["heads"]["us-central1-0"]["zone"] == moved_to
    assert {name for name in applied if applied[name] != rendered[name]} == {"ssh_private_key_file"}
    assert json.loads((second.workspace / module.STATE_RECORD).read_text())["nodes"] == ["us-central1-0"]
    assert terraform_plans_no_change(second, tmp_path / "deployed")


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


@pytest.mark.parametrize(("before", "after"), [
    (["us-central1-a", "us-central1-b"], ["us-central1-b", "us-central1-a"]),  # reordered
    (["us-central1-a", "us-central1-b", "us-central1-c"], ["us-central1-c", "us-central1-a"]),  # narrowed
])
def test_a_changed_gcp_zones_is_not_taken_for_a_zone_fallback_move(tmp_path, monkeypatch, before, after):
    """Nodes outside their planned zone without zone fallback's record were placed by an earlier
    gcp.zones: a fresh checkout plans them where the stack places them now, as the first work dir
    does, instead of keeping them where they are."""
    sections = {**SECTIONS, "gcp": {**SECTIONS["gcp"], "zones": before}}
    first = Stack(name="ci", target="gcp", path=tmp_path / "laptop" / "mlinfra.toml", **sections)
    applied, _ = prepared(first, {}, monkeypatch)
    record = terraform_apply(first, tmp_path / "deployed")
    assert [node["zone"] for node in applied["nodes"].values()] == before[:2] and applied["zone_fallbacks"] == {}

    changed = {**SECTIONS, "gcp": {**SECTIONS["gcp"], "zones": after}}
    second = Stack(name="ci", target="gcp", path=tmp_path / "ci-runner" / "mlinfra.toml", **changed)
    rendered, engine = prepared(second, applied_state(applied, record=record), monkeypatch)

    assert engine.pulls == 1
    assert [node["zone"] for node in rendered["nodes"].values()] == after[:2]  # each node replaced into gcp.zones
    assert json.loads((second.workspace / module.STATE_RECORD).read_text())["zone_moves"] == []
    # The first work dir, given the same change, renders the same module.
    first_after = Stack(name="ci", target="gcp", path=tmp_path / "laptop" / "mlinfra.toml", **changed)
    expected = json.loads(first_after.render().workdir.joinpath("terraform.tfvars.json").read_text())
    assert {name for name in expected if expected[name] != rendered[name]} == {"ssh_private_key_file"}


def test_a_fallback_move_is_kept_beside_a_changed_gcp_zones(tmp_path, monkeypatch):
    """One node moved by zone fallback, then gcp.zones reordered: the moved node stays in its zone
    (still a candidate), the other goes where the new order places it, in both work dirs."""
    zones = ["us-central1-a", "us-central1-b", "us-central1-c"]
    sections = {**SECTIONS, "gcp": {**SECTIONS["gcp"], "zones": zones}}
    first = Stack(name="ci", target="gcp", path=tmp_path / "laptop" / "mlinfra.toml", **sections)
    prepared(first, {}, monkeypatch)
    module.record_zone_move(first.workspace, "us-central1-1", "us-central1-b", "us-central1-c", "stockout")
    applied = json.loads(first.render().workdir.joinpath("terraform.tfvars.json").read_text())
    record = terraform_apply(first, tmp_path / "deployed")
    assert [node["zone"] for node in applied["nodes"].values()] == ["us-central1-a", "us-central1-c"]

    changed = {**SECTIONS, "gcp": {**SECTIONS["gcp"], "zones": ["us-central1-b", "us-central1-a", "us-central1-c"]}}
    second = Stack(name="ci", target="gcp", path=tmp_path / "ci-runner" / "mlinfra.toml", **changed)
    rendered, _ = prepared(second, applied_state(applied, record=record), monkeypatch)
    first_after = Stack(name="ci", target="gcp", path=tmp_path / "laptop" / "mlinfra.toml", **changed)
    expected = json.loads(first_after.render().workdir.joinpath("terraform.tfvars.json").read_text())

    assert [node["zone"] for node in rendered["nodes"].values()] == ["us-central1-b", "us-central1-c"]
    assert {name for name in expected if expected[name] != rendered[name]} == {"ssh_private_key_file"}
    assert terraform_plans_no_change(second, tmp_path / "deployed")  # the move's record stays as it was


def test_the_record_of_a_move_is_read_from_the_state():
    state = {"version": 4, "resources": [
        {"mode": "managed", "type": "terraform_data", "name": "zone_fallback", "instances": [
            {"index_key": "r-0",
             "attributes": {"input": {"value": {"from": "r-a", "to": "r-b"}, "type": ["object", {}]}}},
            {"index_key": "r-1", "attributes": {"input": None}},  # not a record: ignored
        ]},
        {"mode": "managed", "type": "terraform_data", "name": "node_config", "instances": [
            {"index_key": "r-2", "attributes": {"input": {"value": {"to": "r-c"}}}}]},
    ]}
    assert adopt.applied_zone_fallbacks(state) == {"r-0": {"from": "r-a", "to": "r-b"}}
