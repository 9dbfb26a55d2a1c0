"""What a stack costs and what it has cost (issue 13): the spend of nodes of known age (local: the
real start times the launcher records; GCP: recorded creation timestamps in a state built from the
provider's attribute names), the `status` cost line, and the [cost] budget guard before `plan`/`up`."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from pathlib import Path

import pytest
from helpers import HTTP_SERVER, gcp_stack, instance_schema, write_stack
from typer.testing import CliRunner

from mlinfra import Stack
from mlinfra.cli import app
from mlinfra.ops import cost

runner = CliRunner()
# n1-standard-4 (4 vCPUs × 0.031611 + 15 GB × 0.004237) + one T4 (0.35), us-central1 on-demand:
# the rows of mlinfra/clouds/gcp/gpus.toml, from [S5] (reference §6).
T4_VM = 0.54
CREATED = "2026-11-20T08:00:00.000-08:00"  # RFC 3339 with an offset, as the google provider records it
CREATED_S = dt.datetime.fromisoformat(CREATED).timestamp()


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


# -- GCP: spend from a recorded state ----------------------------------------------------------------


def write_gcp_state(stack, created: dict[str, str], machine_type: str = "n1-standard-4") -> dict:
    """A Terraform state (format 4) as `up` leaves it: ``google_compute_instance.node`` instances
    with the provider's attribute names (checked against the provider schema below), and the
    ``nodes`` output that templates/gcp/outputs.tf.j2 computes from them. Health URLs point at a
    closed loopback port: status probes them and finds nothing, at once."""
    instances, nodes = [], {}
    for key, timestamp in created.items():
        region, replica = key.rsplit("-", 1)
        attributes = {
            "name": f"{stack.name}-{key}",
            "zone": f"{region}-a",
            "machine_type": machine_type,
            "creation_timestamp": timestamp,
            "guest_accelerator": [{"type": "nvidia-tesla-t4", "count": 1}],
            "network_interface": [{"network_ip": "10.128.0.2", "access_config": [{"nat_ip": "127.0.0.1"}]}],
        }
        instances.append({"index_key": key, "schema_version": 6, "attributes": attributes})
        nodes[key] = {
            "name": attributes["name"],
            "region": region,
            "replica": int(replica),
            "zone": attributes["zone"],
            "machine_type": machine_type,
            "creation_timestamp": timestamp,
            "spot": False,
            "internal_ip": "10.128.0.2",
            "external_ip": "127.0.0.1",
            "endpoint": "http://127.0.0.1:9",
            "health_url": "http://127.0.0.1:9/health",
            "ssh": "mlinfra@127.0.0.1",
            "ssh_key": "",
        }
    state = {
        "version": 4,
        "terraform_version": "1.15.0",
        "serial": 3,
        "lineage": "0c5b7c1e-6c3e-4f3c-9d36-cost00000001",
        "outputs": {"nodes": {"value": nodes, "type": ["map", ["object", {}]]}},
        "resources": [
            {
                "mode": "managed",
                "type": "google_compute_instance",
                "name": "node",
                "provider": 'provider["registry.terraform.io/hashicorp/google"]',
                "instances": instances,
            }
        ],
    }
    stack.workdir.mkdir(parents=True, exist_ok=True)
    (stack.workdir / "terraform.tfstate").write_text(json.dumps(state))
    return state


def test_the_recorded_state_uses_the_providers_attribute_names(tmp_path):
    state = write_gcp_state(gcp_stack(tmp_path, "spend", compute={"gpu": "t4"}), {"us-central1-0": CREATED})
    block = instance_schema()

    def check(attributes: dict, block: dict) -> None:
        for name, value in attributes.items():
            if name in block.get("block_types", {}):
                for item in value:
                    check(item, block["block_types"][name]["block"])
            else:
                assert name in block["attributes"], name

    check(state["resources"][0]["instances"][0]["attributes"], block)
    assert block["attributes"]["creation_timestamp"]["computed"]  # set by the provider, read by `cost`


def test_the_gcp_nodes_output_reads_only_attributes_the_instance_has(tmp_path):
    stack = gcp_stack(tmp_path, "spend", compute={"gpu": "t4"})
    stack.render()
    outputs = (stack.workdir / "outputs.tf").read_text()
    used = set(re.findall(r"\bnode\.([a-z_]+)", outputs))
    assert "creation_timestamp" in used
    block = instance_schema()
    assert used <= set(block["attributes"]) | set(block["block_types"])


def test_gcp_spend_of_nodes_of_known_age(tmp_path):
    stack = gcp_stack(tmp_path, "spend", compute={"gpu": "t4", "replicas": 2})
    write_gcp_state(stack, {"us-central1-0": CREATED, "us-central1-1": "2026-11-20T14:00:00.000-08:00"})
    status = stack.status()
    assert [n.created_at for n in status.nodes] == [CREATED_S, CREATED_S + 6 * 3600]
    spend = cost.report(stack, status.nodes, now=CREATED_S + 10 * 3600)
    assert [(n.created_at, n.running_h, n.usd_per_hour, n.usd_so_far) for n in spend.nodes] == [
        ("2026-11-20T16:00:00Z", 10.0, T4_VM, round(10 * T4_VM, 4)),
        ("2026-11-20T22:00:00Z", 4.0, T4_VM, round(4 * T4_VM, 4)),
    ]
    assert (spend.model, spend.usd_per_hour, spend.usd_so_far, spend.usd_per_month) == (
        "on-demand",
        2 * T4_VM,
        round(14 * T4_VM, 4),
        round(2 * T4_VM * 730, 2),
    )
    [group] = spend.groups
    assert (group.region, group.environment, group.nodes, group.usd_so_far) == ("us-central1", None, 2, 7.56)
    assert spend.unknown == [] and spend.sources[0].startswith("S5: ") and "(mid-2025 or later)" in spend.sources[0]
    assert spend.line() == (
        "Cost so far: $7.56, longest-running node up 10h 00m (now $1.08/hour on-demand, ~$788/month)"
    )


def test_an_unknown_price_stays_unknown_in_its_region_and_the_total(tmp_path):
    stack = gcp_stack(tmp_path, "spend", compute={"gpu": "t4"}, gcp={"regions": ["us-central1", "europe-west4"]})
    write_gcp_state(stack, {"us-central1-0": CREATED, "europe-west4-0": CREATED})
    spend = cost.report(stack, stack.status().nodes, now=CREATED_S + 3600)
    groups = {g.region: g for g in spend.groups}
    assert groups["us-central1"].usd_so_far == T4_VM
    assert groups["europe-west4"].usd_so_far is None and groups["europe-west4"].usd_per_hour is None
    assert spend.usd_so_far is None and spend.usd_per_hour is None  # never 0, never a partial sum
    reason = "europe-west4-0: no known price (no price data for europe-west4 (the catalog has us-central1 prices))"
    assert spend.unknown == [reason]
    assert spend.line() == f"Cost so far: unknown ({reason}), longest-running node up 1h 00m"


def test_a_node_running_another_machine_type_than_the_file_is_not_priced_as_the_file(tmp_path):
    stack = gcp_stack(tmp_path, "spend", compute={"gpu": "t4", "machine_type": "n1-standard-4"})
    write_gcp_state(stack, {"us-central1-0": CREATED}, machine_type="n1-standard-8")
    [node] = cost.report(stack, stack.status().nodes, now=CREATED_S + 3600).nodes
    assert node.usd_per_hour is None and node.running_h == 1.0
    assert node.unknown == (
        "us-central1-0: runs as n1-standard-8, the stack file says n1-standard-4 (`mlinfra up` applies it)",
    )


def test_cost_and_status_commands_on_a_recorded_gcp_stack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(
        tmp_path,
        'name = "spend"\ntarget = "gcp"\n[gcp]\nproject = "ml-demo-123456"\n[compute]\ngpu = "t4"\nreplicas = 2\n',
    )
    write_gcp_state(Stack.load(tmp_path / "mlinfra.toml"), {"us-central1-0": CREATED, "us-central1-1": CREATED})
    result = runner.invoke(app, ["cost", "--json"])
    assert result.exit_code == 0, result.output
    spend = json.loads(result.stdout)
    running_h = spend["nodes"][0]["running_h"]
    assert running_h > 0 and spend["nodes"][0]["created_at"] == "2026-11-20T16:00:00Z"
    assert spend["usd_per_hour"] == 2 * T4_VM and spend["groups"][0]["region"] == "us-central1"
    assert spend["usd_so_far"] == pytest.approx(2 * T4_VM * running_h, abs=0.01)
    text = runner.invoke(app, ["cost"])
    assert text.exit_code == 0
    assert "Total: $1.080/hour, $" in text.stdout and "  prices: S5: skypilot-org" in text.stdout
    status = runner.invoke(app, ["status"])
    assert re.search(
        r"^Cost so far: \$[\d,]+\.\d\d, longest-running node up \d+d \d+h \(now \$1\.08/hour", status.stdout, re.M
    )
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["cost"]["usd_per_hour"] == 2 * T4_VM


# -- local: the nodes' real start times ------------------------------------------------------------


def process_start(pid: int) -> float:
    """When the kernel started ``pid`` (epoch s): boot time + its start in clock ticks."""
    boot = next(
        float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
    )
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def test_local_spend_counts_from_the_real_start_and_has_no_price(tmp_path, monkeypatch):
    path = write_stack(
        tmp_path, f'name = "spend-local"\n[local]\nregions = ["a", "b"]\n[serve]\ncommand = "{HTTP_SERVER}"\n'
    )
    stack = Stack.load(path)
    before = time.time()
    stack.up(verify=False)
    after = time.time()
    try:
        status = stack.status()
        for node in status.nodes:
            record = json.loads((stack.workdir / "nodes" / f"{node.key}.json").read_text())
            assert node.created_at == record["started_at"]  # what the launcher recorded, not a guess
            assert before <= node.created_at <= after
            assert process_start(node.pid) <= node.created_at + 0.01  # the server had started (tick granularity)
        spend = cost.report(stack, status.nodes, now=status.nodes[0].created_at + 2 * 3600)
        first = spend.nodes[0]
        assert (first.running_h, first.usd_per_hour, first.usd_so_far, first.usd_per_month) == (2.0, None, None, None)
        assert spend.model == "none" and spend.usd_so_far is None and spend.sources == []
        reason = "the local target has no price: its nodes are processes on this machine, not billed by a cloud"
        assert spend.unknown == [reason] and [g.region for g in spend.groups] == ["a", "b"]
        assert status.cost.line().startswith(f"Cost: {reason}, longest-running node up ")

        monkeypatch.chdir(tmp_path)
        shown = runner.invoke(app, ["status"])
        assert f"\nCost: {reason}, longest-running node up " in shown.stdout and "$0" not in shown.stdout
        as_json = json.loads(runner.invoke(app, ["status", "--json"]).stdout)["cost"]
        assert (as_json["model"], as_json["usd_so_far"], as_json["unknown"]) == ("none", None, [reason])
        listed = runner.invoke(app, ["cost"])
        assert listed.exit_code == 0 and "no prices" in listed.stdout.splitlines()[0]
        assert "Total: unknown/hour, unknown so far, unknown/month" in listed.stdout
    finally:
        stack.down()


def test_cost_of_a_stack_that_is_not_deployed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, 'name = "nothing"\n')
    result = runner.invoke(app, ["cost"])
    assert (result.exit_code, result.stderr) == (1, "error: stack 'nothing' is not deployed: run `mlinfra up` first\n")
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["cost"] is None  # nothing ran, nothing spent


# -- the budget guard ----------------------------------------------------------------------------------



def gcp_file(project: Path, limit: float, replicas: int = 3, regions: str = '"us-central1"') -> None:
    project.mkdir()
    write_stack(
        project,
        f'name = "budget"\ntarget = "gcp"\n[gcp]\nproject = "ml-demo-123456"\nregions = [{regions}]\n'
        f'[compute]\ngpu = "t4"\nreplicas = {replicas}\n[cost]\nmax_usd_per_hour = {limit}\n',
    )


# rebuild too: it would destroy the stack, then have its `up` refused.
@pytest.mark.parametrize("command", [["plan"], ["up", "--yes"], ["plan", "--json"], ["rebuild", "--yes"]])
def test_over_budget_plan_and_up_are_refused_before_terraform(command, tmp_path, monkeypatch, spy_terraform):
    project = tmp_path / "project"
    gcp_file(project, limit=1)
    monkeypatch.chdir(project)
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert result.stderr.endswith(
        "error: mlinfra.toml: cost.max_usd_per_hour: the on-demand estimate is $1.62/hour, $0.62 over the limit of "
        "$1.00; driven by 3 × n1-standard-4 (1 × nvidia-tesla-t4) in us-central1 at $0.54/hour each = $1.62/hour\n"
        "hint: fewer replicas or regions, a smaller machine type, compute.spot = true, or a higher limit\n"
    )
    assert sorted(p.name for p in project.iterdir()) == ["mlinfra.toml"]  # no work dir, no lock
    assert not spy_terraform.exists()  # Terraform never ran


def test_an_estimate_that_cannot_be_known_is_refused_under_a_limit(tmp_path, monkeypatch, spy_terraform):
    project = tmp_path / "project"
    gcp_file(project, limit=20, replicas=1, regions='"us-central1", "europe-west4"')
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["plan"])
    assert result.exit_code == 2
    assert result.stderr.endswith(
        "error: mlinfra.toml: cost.max_usd_per_hour: the on-demand estimate is unknown (no price data for "
        "europe-west4 (the catalog has us-central1 prices)), so the limit of $20.00/hour cannot be checked: "
        "choose a priced machine type (`mlinfra gpus`) or remove the limit\n"
    )
    assert sorted(p.name for p in project.iterdir()) == ["mlinfra.toml"] and not spy_terraform.exists()


def test_within_budget_and_without_a_price_the_guard_lets_terraform_run(tmp_path, monkeypatch, spy_terraform):
    project = tmp_path / "project"
    gcp_file(project, limit=2, replicas=3)  # $1.62 ≤ $2
    monkeypatch.chdir(project)
    assert runner.invoke(app, ["plan"]).exit_code == 1  # the spy "fails": it ran
    assert spy_terraform.exists()
    spy_terraform.unlink()
    local = tmp_path / "local"
    local.mkdir()
    write_stack(local, 'name = "budget-local"\n[cost]\nmax_usd_per_hour = 0.01\n')  # no cloud price to hold to it
    monkeypatch.chdir(local)
    assert runner.invoke(app, ["plan"]).exit_code == 1 and spy_terraform.exists()


def test_the_guard_is_for_changes_only(tmp_path, monkeypatch, spy_terraform):
    """An over-budget stack can still be rendered (ejected), looked at and destroyed."""
    project = tmp_path / "project"
    gcp_file(project, limit=1)
    monkeypatch.chdir(project)
    assert runner.invoke(app, ["render"]).exit_code == 0
    assert runner.invoke(app, ["down", "--yes"]).exit_code == 0
    assert runner.invoke(app, ["status"]).exit_code == 0
    assert not spy_terraform.exists()


def test_the_refusal_names_the_most_expensive_node_groups_first():
    from mlinfra.clouds.gcp.prices import Cost, NodeCost, Price

    def node(key: str, region: str, machine: str, gpu: str | None, rate: float) -> NodeCost:
        return NodeCost(key, region, machine, gpu, 1 if gpu else 0, Price(rate), Price(rate / 3))

    nodes = [node("a-0", "us-central1", "n1-standard-4", "nvidia-tesla-t4", 0.54)]
    nodes += [node(f"b-{i}", "us-east1", "a2-highgpu-1g", "nvidia-tesla-a100", 3.67) for i in range(2)]
    nodes += [
        node("c-0", "us-west1", "g2-standard-4", "nvidia-l4", 0.71),
        node("d-0", "eu", "n1-standard-4", None, 0.19),
    ]
    estimate = Cost(False, tuple(nodes), 8.78, None)
    assert cost.budget_drivers(estimate) == (
        "2 × a2-highgpu-1g (1 × nvidia-tesla-a100) in us-east1 at $3.67/hour each = $7.34/hour; "
        "1 × g2-standard-4 (1 × nvidia-l4) in us-west1 at $0.71/hour each = $0.71/hour; "
        "1 × n1-standard-4 (1 × nvidia-tesla-t4) in us-central1 at $0.54/hour each = $0.54/hour; and 1 more group(s)"
    )


# -- [autoscale] stacks: a head per region plus min..max GPU workers ---------------------------------

# a2-highgpu-1g: host 0.73948 + one A100 2.93391; the head, e2-standard-4: 0.13402 (always
# on-demand): the rows of mlinfra/clouds/gcp/gpus.toml, from [S5].
A100_VM = 0.73948 + 2.93391
HEAD_VM = 0.13402
SA = "ray-head@ml-demo-123456.iam.gserviceaccount.com"


def autoscale_file(project: Path, limit: float, low: int, high: int, spot: str = "false") -> None:
    project.mkdir()
    write_stack(
        project,
        f'name = "budget"\ntarget = "gcp"\n[gcp]\nproject = "ml-demo-123456"\nregions = ["us-central1"]\n'
        f'service_account = "{SA}"\n[compute]\ngpu = "a100"\nspot = {spot}\n'
        f"[autoscale]\nmin_replicas = {low}\nmax_replicas = {high}\n[cost]\nmax_usd_per_hour = {limit}\n",
    )


def test_an_autoscaled_stack_is_priced_as_head_plus_workers_floor_and_ceiling(tmp_path):
    stack = gcp_stack(
        tmp_path,
        "ray",
        compute={"gpu": "a100"},
        gcp={"service_account": SA},
        autoscale={"min_replicas": 2, "max_replicas": 10},
    )
    estimate = stack.cost()
    assert estimate.autoscale == (2, 10)
    assert estimate.on_demand_usd_per_hour == pytest.approx(HEAD_VM + 10 * A100_VM)  # the ceiling
    assert estimate.floor_on_demand_usd_per_hour == pytest.approx(HEAD_VM + 2 * A100_VM)
    # The head never runs as Spot: its Spot price is its on-demand one.
    assert estimate.floor_spot_usd_per_hour == pytest.approx(HEAD_VM + 2 * (0.29576 + 1.1472))
    roles = [(n.node, n.role, n.machine_type, n.in_floor) for n in estimate.nodes]
    assert roles[:3] == [
        ("us-central1-0", "head", "e2-standard-4", True),
        ("us-central1-worker-0", "worker", "a2-highgpu-1g", True),
        ("us-central1-worker-1", "worker", "a2-highgpu-1g", True),
    ]
    assert len(roles) == 11 and not roles[-1][3]
    data = estimate.as_dict()
    assert data["autoscale"]["min_replicas"] == 2 and data["autoscale"]["floor_usd_per_hour"] == pytest.approx(
        HEAD_VM + 2 * A100_VM
    )
    assert data["usd_per_hour"] == pytest.approx(HEAD_VM + 10 * A100_VM)


@pytest.mark.parametrize("low", [0, 2])
def test_the_budget_guard_judges_an_autoscaled_stack_at_its_ceiling(low, tmp_path, monkeypatch, spy_terraform):
    project = tmp_path / "project"
    autoscale_file(project, limit=5, low=low, high=10)
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["plan"])
    assert result.exit_code == 2, result.output
    ceiling, floor = HEAD_VM + 10 * A100_VM, HEAD_VM + low * A100_VM
    assert result.stderr.endswith(
        f"error: mlinfra.toml: cost.max_usd_per_hour: the on-demand estimate at autoscale.max_replicas = 10 (the "
        f"worst case) is ${ceiling:,.2f}/hour, ${ceiling - 5:,.2f} over the limit of $5.00 (at min_replicas = {low}: "
        f"${floor:,.2f}/hour); driven by 10 × a2-highgpu-1g (1 × nvidia-tesla-a100) in us-central1 at "
        f"${A100_VM:,.2f}/hour each = ${10 * A100_VM:,.2f}/hour; 1 × e2-standard-4 in us-central1 at "
        f"${HEAD_VM:,.2f}/hour each = ${HEAD_VM:,.2f}/hour\n"
        "hint: a lower autoscale.max_replicas, fewer regions, a smaller machine type, compute.spot = true, "
        "or a higher limit\n"
    )
    assert not spy_terraform.exists()


def test_plan_shows_an_autoscaled_stacks_floor_and_ceiling(tmp_path, monkeypatch, spy_terraform):
    project = tmp_path / "project"
    autoscale_file(project, limit=40, low=1, high=10)  # the ceiling, $36.87, fits
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["plan"])
    assert spy_terraform.exists()  # within budget: Terraform ran (the spy fails it)
    ceiling, floor = HEAD_VM + 10 * A100_VM, HEAD_VM + A100_VM
    assert (
        f"Estimated cost (on-demand): up to ${ceiling:,.2f}/hour, ${ceiling * 730:,.0f}/month at max_replicas "
        f"(10 GPU workers per region, the worst case), ${floor:,.2f}/hour, ${floor * 730:,.0f}/month at "
        "min_replicas (1), heads included"
    ) in result.output


def test_the_spend_of_an_autoscaled_stack_prices_its_heads_and_the_workers_that_joined(tmp_path):
    from mlinfra.nodes import Node

    stack = gcp_stack(
        tmp_path,
        "ray",
        compute={"gpu": "a100"},
        gcp={"service_account": SA, "regions": ["us-central1"]},
        autoscale={"min_replicas": 0, "max_replicas": 10},
    )
    head = Node("us-central1-0", "ray-us-central1-0-head", "us-central1", 0, "http://127.0.0.1:9", "")
    # What the head reports (templates/serve-local/mlinfra_serve_app.py status): Ray's live nodes, itself included.
    scaling = {"regions": {"us-central1": {"replicas": 3, "nodes": 4}}}
    spend = cost.report(stack, [head], now=CREATED_S, scaling=scaling)
    assert [(n.node, n.machine_type, n.usd_per_hour) for n in spend.nodes] == [
        ("us-central1-0", "e2-standard-4", HEAD_VM),
        ("us-central1-workers", "a2-highgpu-1g", round(3 * A100_VM, 5)),
    ]
    assert spend.usd_per_hour == pytest.approx(HEAD_VM + 3 * A100_VM)  # now: head + 3 workers
    assert spend.usd_so_far is None  # the workers' running time is not recorded: unknown, not $0
    assert any("not recorded" in reason for reason in spend.unknown)
    assert not any("not priced yet" in reason for reason in spend.unknown)
    unreachable = cost.report(
        stack, [head], now=CREATED_S, scaling={"regions": {"us-central1": {"error": "ssh: timed out"}}}
    )
    assert unreachable.usd_per_hour is None
    assert "us-central1: how many workers run is unknown (ssh: timed out)" in unreachable.unknown


def test_an_autoscaled_gcp_stacks_heads_spend_so_far_from_their_recorded_creation(tmp_path, monkeypatch):
    """The heads' running time, as for plain GCP nodes: the serve-gcp ``nodes`` output carries each
    head's creation_timestamp (recorded here in the output's own shape: its keys are read from the
    rendered outputs.tf). The workers' running time stays unknown, and says so."""
    from mlinfra.targets.serve.gcp import DRIVER, region_names
    from mlinfra.verify.runners import RunResult

    stack = gcp_stack(
        tmp_path,
        "ray",
        compute={"gpu": "a100"},
        gcp={"service_account": SA, "regions": ["us-central1"]},
        autoscale={"min_replicas": 0, "max_replicas": 10},
        serve={"ssh_cidrs": ["203.0.113.0/24"]},  # the head's figures are read over SSH
    )
    stack.render()
    block = (stack.workdir / "outputs.tf").read_text().split('output "nodes"')[1].split("\n  }\n")[0]
    keys = re.findall(r"^\s{6}([a-z_]+)\s+=", block, re.M)
    recorded = {
        "name": region_names("ray", "us-central1", "us-central1-0")["head"],
        "region": "us-central1",
        "replica": 0,
        "zone": "us-central1-a",
        "machine_type": "e2-standard-4",  # the provider records the short name, as for plain nodes
        "creation_timestamp": CREATED,
        "endpoint": "http://127.0.0.1:9",
        "health_url": "http://127.0.0.1:9/-/healthz",
        "ssh": "mlinfra@127.0.0.1",
        "ssh_key": "",
    }
    assert sorted(keys) == sorted(recorded)  # the recorded output is the one the template computes
    state = {
        "version": 4,
        "terraform_version": "1.15.0",
        "serial": 3,
        "lineage": "0c5b7c1e-6c3e-4f3c-9d36-cost00000002",
        "outputs": {"nodes": {"value": {"us-central1-0": recorded}, "type": ["map", ["object", {}]]}},
        "resources": [],
    }
    (stack.workdir / "terraform.tfstate").write_text(json.dumps(state))
    answer = RunResult(0, json.dumps({"app": "RUNNING", "replicas": 2, "nodes": 3}), "")  # the head + 2 workers
    monkeypatch.setattr(DRIVER, "gpu_runner", lambda node, workspace: type("R", (), {"run": lambda *a: answer})())
    status = stack.status()
    assert [n.created_at for n in status.nodes] == [CREATED_S]
    spend = cost.report(stack, status.nodes, now=CREATED_S + 5 * 3600, scaling=status.autoscale)
    head, workers = spend.nodes
    assert (head.node, head.created_at, head.running_h, head.usd_per_hour, head.usd_so_far) == (
        "us-central1-0",
        "2026-11-20T16:00:00Z",
        5.0,
        HEAD_VM,
        round(5 * HEAD_VM, 4),
    )
    assert head.unknown == ()
    assert (workers.usd_per_hour, workers.usd_so_far) == (round(2 * A100_VM, 5), None)
    assert spend.usd_so_far is None  # the workers' part is unknown: the total is, not the heads' $0.67
    assert not any("no creation time" in reason for reason in spend.unknown)


def test_without_ssh_an_autoscaled_gcp_stacks_worker_count_is_unknown_and_says_why(tmp_path, monkeypatch):
    """No serve.ssh_cidrs: the stack has no key and its heads no login, so nothing is tried over
    SSH and the workers' count (so the spend now) is unknown with the reason, not 0 workers."""
    from mlinfra.nodes import Node
    from mlinfra.targets.serve.gcp import DRIVER, NO_SSH

    def no_ssh(node, workspace):
        raise AssertionError("no SSH without serve.ssh_cidrs")

    monkeypatch.setattr(DRIVER, "gpu_runner", no_ssh)
    stack = gcp_stack(
        tmp_path,
        "ray",
        compute={"gpu": "a100"},
        gcp={"service_account": SA, "regions": ["us-central1"]},
        autoscale={"min_replicas": 0, "max_replicas": 10},
    )
    head = Node("us-central1-0", "ray-us-central1-0-head", "us-central1", 0, "http://127.0.0.1:9", "")
    scaling = DRIVER.autoscale_status(stack.spec, stack.workspace, [head])
    spend = cost.report(stack, [head], now=CREATED_S, scaling=scaling)
    assert spend.usd_per_hour is None
    assert f"us-central1: how many workers run is unknown ({NO_SSH})" in spend.unknown
    assert spend.nodes[1].name == "us-central1 workers (? of 10)"
