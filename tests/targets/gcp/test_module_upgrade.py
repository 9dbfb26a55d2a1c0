"""Upgrading mlinfra must not replace a GCP stack's VMs: real Terraform plans the module's
``terraform_data.node_config`` (which ``replace_triggered_by`` watches) over state written by the
module as it shipped before ``node_config_extra`` existed.

The google provider cannot be had here, so the plan covers the part that decides replacement:
the rendered ``variables.tf`` and ``node_config.tf`` (built-in ``terraform_data``, no provider)
with the rendered ``terraform.tfvars.json``, and ``zone_fallback.tf`` (zone fallback's record,
built-in too), which came after.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from helpers import gcp_stack

from mlinfra.console import Stream, plan_markdown, print_plan
from mlinfra.engine.events import parse_line, plan_summary
from mlinfra.engine.terraform import terraform_command, terraform_env
from mlinfra.results import PlanResult
from mlinfra.targets.gcp import module

# The module before node_config_extra (commit 3a3e039, templates/gcp/): its node_config type and
# the terraform_data that watched it. The other attributes of `nodes` do not reach terraform_data
# (converting to an object type drops attributes the type does not name).
OLD_MODULE = """
variable "nodes" {
  type = map(object({
    node_config = object({
      stack       = string
      node        = string
      command     = string
      env         = map(string)
      secrets     = map(string)
      port        = number
      health_path = string
      gpus        = number
    })
  }))
}

resource "terraform_data" "node_config" {
  for_each = var.nodes

  input = each.value.node_config
}
"""


# Stands in for google_compute_instance.node (main.tf): the same replace_triggered_by.
NODE_STAND_IN = """
resource "terraform_data" "node" {
  for_each = var.nodes

  lifecycle {
    replace_triggered_by = [terraform_data.node_config[each.key]]
  }
}
"""


def terraform(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*terraform_command(), *args], cwd=workdir, env=terraform_env(), capture_output=True, text=True, timeout=300
    )


def deploy_old_module(workdir: Path, tfvars: Path) -> None:
    workdir.mkdir()
    (workdir / "main.tf").write_text(OLD_MODULE)
    (workdir / "node.tf").write_text(NODE_STAND_IN)
    shutil.copy(tfvars, workdir / "terraform.tfvars.json")
    for args in (("init", "-input=false"), ("apply", "-auto-approve", "-input=false")):
        done = terraform(workdir, *args)
        assert done.returncode == 0, done.stdout + done.stderr


def plan_rendered(workdir: Path, rendered: Path) -> subprocess.CompletedProcess:
    """Plan the rendered module's node_config part in ``workdir`` (over the state already there)."""
    (workdir / "main.tf").unlink()
    for name in ("variables.tf", "node_config.tf", "zone_fallback.tf", "terraform.tfvars.json"):
        shutil.copy(rendered / name, workdir / name)
    return terraform(workdir, "plan", "-json", "-detailed-exitcode", "-input=false")


def test_upgrading_mlinfra_replaces_no_vm_of_an_unchanged_stack(tmp_path):
    stack = gcp_stack(tmp_path, "upgrade", compute={"gpu": "t4"}, serve={"env": {"LOG": "info"}})
    rendered = stack.render().workdir
    workdir = tmp_path / "deployed"
    deploy_old_module(workdir, rendered / "terraform.tfvars.json")

    planned = plan_rendered(workdir, rendered)

    assert planned.returncode == 0, planned.stdout + planned.stderr  # 0: no changes; 2 would replace every VM


def test_the_first_up_after_an_upgrade_records_an_earlier_zone_move_and_replaces_nothing(tmp_path):
    """A node that zone fallback moved before zone_fallback.tf existed: the work dir's record of the
    move now goes into the state too, as one new terraform_data, and no VM changes for it."""
    stack = gcp_stack(tmp_path, "upgrade", compute={"gpu": "t4"})
    values = json.loads(stack.render().workdir.joinpath("terraform.tfvars.json").read_text())
    planned_zone = values["nodes"]["us-central1-0"]["zone"]
    other = next(z for z in ("us-central1-a", "us-central1-b", "us-central1-c") if z != planned_zone)
    module.record_zone_move(stack.workspace, "us-central1-0", planned_zone, other, "stockout")
    rendered = stack.render().workdir
    workdir = tmp_path / "deployed"
    deploy_old_module(workdir, rendered / "terraform.tfvars.json")

    planned = plan_rendered(workdir, rendered)

    assert planned.returncode == 2, planned.stdout + planned.stderr
    summary = plan_summary([event for line in planned.stdout.splitlines() if (event := parse_line(line))])
    assert summary.replaced == [] and summary.describe() == "1 to add, 0 to change, 0 to destroy"


def test_a_stack_that_starts_using_a_workload_still_replaces_its_nodes(tmp_path, capsys):
    """The other side: what a node runs changing (here serve.setup) must still replace it."""
    before = gcp_stack(tmp_path / "a", "upgrade", compute={"gpu": "t4"}).render().workdir
    workdir = tmp_path / "deployed"
    deploy_old_module(workdir, before / "terraform.tfvars.json")
    after = gcp_stack(tmp_path / "b", "upgrade", compute={"gpu": "t4"}, serve={"setup": ["pip install x"]})

    planned = plan_rendered(workdir, after.render().workdir)

    assert planned.returncode == 2, planned.stdout + planned.stderr
    summary = plan_summary([event for line in planned.stdout.splitlines() if (event := parse_line(line))])
    # ... and `plan` says so plainly: the nodes it replaces, by name.
    assert summary.replaced == ['terraform_data.node["us-central1-0"]']
    assert summary.describe() == "1 to add, 1 to change, 1 to destroy; REPLACES 1 (destroyed, then created again)"
    markdown = plan_markdown(PlanResult("upgrade", workdir, summary))
    assert '**Replaced** (destroyed, then created again): `terraform_data.node["us-central1-0"]`' in markdown
    print_plan(summary, Stream(stderr=False))
    assert 'Will be REPLACED (destroyed, then created again): terraform_data.node["us-central1-0"]\n' in (
        capsys.readouterr().out
    )


def test_a_plain_stack_renders_node_config_as_it_did_before_node_config_extra(tmp_path):
    """The seed stack's node_config as commit 3a3e039 rendered it (tests/golden/gcp-t4-seed then)."""
    values = json.loads(
        (
            gcp_stack(tmp_path, "gcp-t4-seed", compute={"gpu": "t4"}).render().workdir / "terraform.tfvars.json"
        ).read_text()
    )
    assert values["node_config_extra"] == {}
    assert values["nodes"]["us-central1-0"]["node_config"] == {
        "command": "mlinfra serve",
        "env": {},
        "gpus": 1,
        "health_path": "/health",
        "node": "us-central1-0",
        "port": 8000,
        "secrets": {},
        "stack": "gcp-t4-seed",
    }
