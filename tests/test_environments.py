"""Environments ([env.<name>]): selection, deep merge, each one its own deployment, and the
`envs`, `plan --detailed-exitcode` and `--env` surfaces, end to end on the local target."""

from __future__ import annotations

import json
import urllib.request

import pytest
from typer.testing import CliRunner

from helpers import HTTP_SERVER, SCHEMA, stack_processes, write_stack
from mlinfra import SpecError, Stack
from mlinfra.cli import app
from mlinfra.clouds.gcp import catalog, schema
from mlinfra.engine.events import plan_summary
from mlinfra.results import PlanResult

runner = CliRunner()

GCP_ENVS = """
    name = "ranker"
    target = "gcp"
    default_env = "dev"
    [gcp]
    project = "ml-demo-123456"
    regions = ["us-central1"]
    [compute]
    gpu = "t4"
    [state]
    backend = "gcs"
    bucket = "ml-demo-state"
    prefix = "stacks/ranker"
    [serve.env]
    LOG_LEVEL = "info"
    MODEL = "small"
    [env.dev.compute]
    spot = true
    [env.prod]
    protected = true
    [env.prod.compute]
    replicas = 2
    [env.prod.gcp]
    regions = ["us-central1", "europe-west4"]
    [env.prod.serve.env]
    MODEL = "large"
"""


def local_envs(tmp_path, dev_replicas: int = 1):
    return write_stack(
        tmp_path,
        f"""
        name = "envs-e2e"
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
        [env.dev.compute]
        replicas = {dev_replicas}
        [env.prod]
        protected = true
        [env.prod.local]
        regions = ["east", "west"]
    """,
    )


# -- selection and merge ---------------------------------------------------------------------------


def test_an_environment_is_the_stack_deep_merged_with_its_table(tmp_path):
    path = write_stack(tmp_path, GCP_ENVS)
    prod = Stack.load(path, env="prod")
    assert prod.name == "ranker-prod" and prod.spec.environment == "prod"
    assert prod.compute.replicas == 2 and prod.compute.gpu == "t4" and not prod.compute.spot
    assert prod.gcp.regions == ("us-central1", "europe-west4") and prod.gcp.project == "ml-demo-123456"
    assert prod.serve.env == {"LOG_LEVEL": "info", "MODEL": "large"}  # tables merge key by key
    assert prod.protected
    dev = Stack.load(path)  # default_env
    assert dev.name == "ranker-dev" and dev.compute.spot and dev.compute.replicas == 1
    assert not dev.protected and dev.serve.env["MODEL"] == "small"
    assert "compute.replicas" in prod.spec.given and "compute.replicas" not in dev.spec.given


def test_each_environment_has_its_own_work_dir_state_and_lock(tmp_path):
    path = write_stack(tmp_path, GCP_ENVS)
    dev, prod = Stack.load(path, "dev"), Stack.load(path, "prod")
    assert dev.workdir == tmp_path / ".mlinfra" / "ranker-dev" and prod.workdir == tmp_path / ".mlinfra" / "ranker-prod"
    assert dev.backend.prefix == "stacks/ranker/dev" and prod.backend.prefix == "stacks/ranker/prod"
    assert dev.lock().name != prod.lock().name
    # Without an explicit prefix the default one carries the environment through the name.
    plain = write_stack(tmp_path, GCP_ENVS.replace('prefix = "stacks/ranker"\n', ""), name="plain.toml")
    assert {Stack.load(plain, e).backend.prefix for e in ("dev", "prod")} == {
        "mlinfra/ranker-dev",
        "mlinfra/ranker-prod",
    }


def test_one_environment_holding_its_lock_does_not_block_another(tmp_path):
    from mlinfra.state.lock import LockHeld

    path = local_envs(tmp_path)
    dev, prod, dev_again = Stack.load(path, "dev"), Stack.load(path, "prod"), Stack.load(path, "dev")
    held = dev.lock()
    held.acquire("apply")
    try:
        other = prod.lock()
        other.acquire("plan")  # prod's own lock: free while dev's is held
        other.release()
        with pytest.raises(LockHeld):
            dev_again.lock().acquire("plan")
    finally:
        held.release()


def test_envs_lists_nothing_for_a_file_without_environments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, 'name = "single"\n')
    result = runner.invoke(app, ["envs"])
    assert result.exit_code == 0 and result.stdout == "mlinfra.toml defines no environments ([env.<name>] tables).\n"
    monkeypatch.setenv("MLINFRA_ENV", "")  # a CI matrix without environments sets it empty
    assert runner.invoke(app, ["render", "--json"]).exit_code == 0


def test_an_error_the_environment_causes_elsewhere_names_the_environment(tmp_path):
    path = write_stack(
        tmp_path,
        """
        name = "open"
        default_env = "dev"
        [serve]
        allow_cidrs = ["0.0.0.0/0"]
        public = true
        [env.dev]
        [env.prod.serve]
        public = false
    """,
    )
    with pytest.raises(SpecError) as info:
        Stack.load(path)  # dev is fine; prod is checked too, and is not
    assert info.value.key == "serve.allow_cidrs"
    assert info.value.message.endswith("set serve.public = true to mean it (environment 'prod')")


def test_a_file_without_environments_is_unchanged(tmp_path):
    path = write_stack(tmp_path, 'name = "single"\n')
    stack = Stack.load(path)
    assert stack.name == "single" and stack.spec.environment == "" and stack.workdir.name == "single"
    with pytest.raises(SpecError, match="defines no environments, so --env prod means nothing"):
        Stack.load(path, env="prod")


@pytest.mark.parametrize(
    "env,message",
    [
        ("prd", "no environment 'prd'; the file defines dev, prod — did you mean 'prod'?"),
        ("staging", "no environment 'staging'; the file defines dev, prod"),
    ],
)
def test_unknown_environment_is_bad_input_with_a_suggestion(tmp_path, monkeypatch, env, message):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, GCP_ENVS)
    result = runner.invoke(app, ["plan", "--env", env])
    assert result.exit_code == 2
    assert result.stderr == f"error: mlinfra.toml: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlinfra.toml"]


def test_mlinfra_env_selects_and_env_option_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, GCP_ENVS)
    monkeypatch.setenv("MLINFRA_ENV", "prod")
    result = runner.invoke(app, ["render", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["workdir"].endswith("ranker-prod")
    result = runner.invoke(app, ["render", "--json", "--env", "dev"])
    assert json.loads(result.stdout)["workdir"].endswith("ranker-dev")


def test_every_command_that_loads_a_stack_takes_env():
    import typer.main

    group = typer.main.get_command(app)

    def commands(cmd, path):
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                yield from commands(sub, f"{path} {name}".strip())
        else:
            yield path, cmd

    loaders = {path: cmd for path, cmd in commands(group, "") if any("--file" in p.opts for p in cmd.params)}
    assert {"up", "plan", "down", "status", "verify", "render", "rebuild", "heal", "check", "state pull"} <= set(
        loaders
    )
    for path, cmd in loaders.items():
        if path in ("ci github", "envs"):  # a path inside the repository; every environment at once
            continue
        env = [p for p in cmd.params if "--env" in p.opts]
        assert env and env[0].envvar == "MLINFRA_ENV", path


# -- GCP: overrides rendered and checked against the provider schema -------------------------------


def test_gcp_environment_renders_its_overrides_and_fits_the_provider_schema(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, GCP_ENVS)
    out = tmp_path / "ejected-prod"
    result = runner.invoke(app, ["render", "--env", "prod", "--out", str(out)])
    assert result.exit_code == 0, result.output
    tfvars = json.loads((out / "terraform.tfvars.json").read_text())
    assert tfvars["stack"] == "ranker-prod"  # the prefix of every resource name
    assert tfvars["labels"] == {"stack": "ranker-prod", "managed-by": "mlinfra", "environment": "prod"}
    assert sorted(tfvars["nodes"]) == ["europe-west4-0", "europe-west4-1", "us-central1-0", "us-central1-1"]
    assert all(not node["spot"] for node in tfvars["nodes"].values())
    assert Stack.load(tmp_path / "mlinfra.toml", "prod").backend.config()["prefix"] == "stacks/ranker/prod"
    if SCHEMA.is_file():
        assert schema.check_module(out, SCHEMA) == []
    dev = Stack.load(tmp_path / "mlinfra.toml", "dev").render(tmp_path / "ejected-dev")
    dev_vars = json.loads((dev.workdir / "terraform.tfvars.json").read_text())
    assert dev_vars["stack"] == "ranker-dev" and list(dev_vars["nodes"]) == ["us-central1-0"]
    assert dev_vars["nodes"]["us-central1-0"]["spot"] is True
    if SCHEMA.is_file():
        assert schema.check_module(dev.workdir, SCHEMA) == []


def test_the_longest_name_an_environment_allows_still_fits_gcp_names(tmp_path):
    # 30 characters with the environment: the node name in the longest GPU region is 63 at most.
    path = write_stack(tmp_path, GCP_ENVS.replace('name = "ranker"', f'name = "{"x" * 25}"'))
    stack = Stack.load(path, "prod")
    assert len(stack.name) == 30
    longest = max(catalog.gcp_regions(), key=len)
    assert len(f"{stack.name}-{longest}-19") <= 63


# -- drift and --detailed-exitcode -------------------------------------------------------------------


# A `terraform plan -json` line as Terraform prints it for an object changed outside Terraform
# (internal/command/views/json_view.go, ResourceDrift: "<addr>: Drift detected (<action>)").
DRIFT_EVENT = {
    "@level": "info",
    "@message": 'terraform_data.node["local-0"]: Drift detected (update)',
    "@module": "terraform.ui",
    "type": "resource_drift",
    "change": {
        "resource": {
            "addr": 'terraform_data.node["local-0"]',
            "module": "",
            "resource": 'terraform_data.node["local-0"]',
            "implied_provider": "terraform",
            "resource_type": "terraform_data",
            "resource_name": "node",
            "resource_key": "local-0",
        },
        "action": "update",
    },
}


def test_drift_is_read_from_terraform_events_and_reported(tmp_path):
    from mlinfra.console import plan_markdown

    summary = plan_summary([DRIFT_EVENT, {"type": "change_summary", "changes": {"operation": "plan"}}])
    assert not summary.has_changes and [c.address for c in summary.drift] == ['terraform_data.node["local-0"]']
    result = PlanResult("s", tmp_path, summary)
    assert result.exit_code == 0  # drift the plan leaves alone (ignored attributes): nothing to do
    assert result.as_dict()["drift"] == [{"address": 'terraform_data.node["local-0"]', "action": "update"}]
    assert "drift" in plan_markdown(result)
    assert PlanResult("s", tmp_path, plan_summary([])).exit_code == 0


# -- end to end on the local target ----------------------------------------------------------------


def test_two_environments_up_at_once_and_down_dev_touches_only_dev(tmp_path, monkeypatch, deployed):
    path = local_envs(tmp_path)
    dev, prod = Stack.load(path, "dev"), Stack.load(path, "prod")
    deployed(dev)
    deployed(prod)
    assert [n.key for n in dev.up(verify=False).nodes] == ["local-0"]
    prod_nodes = prod.up(verify=False).nodes
    assert [n.key for n in prod_nodes] == ["east-0", "west-0"]
    assert len(stack_processes("envs-e2e-dev")) == 1 and len(stack_processes("envs-e2e-prod")) == 2
    assert (dev.workdir / "terraform.tfstate").is_file() and (prod.workdir / "terraform.tfstate").is_file()
    assert dev.workdir != prod.workdir

    monkeypatch.chdir(tmp_path)
    listed = runner.invoke(app, ["envs", "--json"])
    assert listed.exit_code == 0, listed.output
    envs = {e["name"]: e for e in json.loads(listed.stdout)["environments"]}
    assert envs["prod"]["deployed"] and envs["dev"]["deployed"] and envs["prod"]["protected"]
    assert envs["prod"]["endpoints"] == [n.endpoint for n in prod_nodes]
    assert envs["prod"]["overrides"] == {"protected": True, "local.regions": ["east", "west"]}

    # Cost is per environment: prod's two regions are grouped under prod (the local target has no price).
    spent = runner.invoke(app, ["cost", "--env", "prod", "--json"])
    assert spent.exit_code == 0, spent.output
    cost = json.loads(spent.stdout)
    assert cost["environment"] == "prod" and len(cost["nodes"]) == 2
    assert sorted((g["region"], g["environment"]) for g in cost["groups"]) == [("east", "prod"), ("west", "prod")]
    assert cost["usd_so_far"] is None  # unknown, never $0

    # prod is protected; dev is not: protection belongs to the one environment.
    refused = runner.invoke(app, ["down", "--env", "prod", "--yes"])
    assert refused.exit_code == 2 and "protected" in refused.stderr
    gone = runner.invoke(app, ["down", "--env", "dev", "--yes", "--json"])
    assert gone.exit_code == 0, gone.output
    assert json.loads(gone.stdout)["summary"]["destroy"] == 1
    assert stack_processes("envs-e2e-dev") == [] and len(stack_processes("envs-e2e-prod")) == 2
    for node in prod_nodes:
        with urllib.request.urlopen(node.health_url, timeout=5) as response:
            assert response.status == 200
    assert prod.status().deployed and not dev.status().deployed


def test_detailed_exitcode_with_no_change_and_with_a_real_change(tmp_path, monkeypatch, deployed):
    path = local_envs(tmp_path)
    monkeypatch.chdir(tmp_path)
    dev = Stack.load(path, "dev")
    deployed(dev)
    dev.up(verify=False)
    same = runner.invoke(app, ["plan", "--env", "dev", "--detailed-exitcode", "--json"])
    assert same.exit_code == 0, same.output
    assert json.loads(same.stdout)["drift"] == [] and not json.loads(same.stdout)["summary"]["has_changes"]

    local_envs(tmp_path, dev_replicas=2)  # the file now asks for a second dev node
    changed = runner.invoke(app, ["plan", "--env", "dev", "--detailed-exitcode", "--json"])
    assert changed.exit_code == 3, changed.output
    assert json.loads(changed.stdout)["summary"]["add"] == 1
    plain = runner.invoke(app, ["plan", "--env", "dev"])  # without the flag a pending change is success
    assert plain.exit_code == 0, plain.output
    assert "--detailed-exitcode" in runner.invoke(app, ["plan", "--help"]).stdout


def _gcp_node_event(kind: str, action: str) -> dict:
    """A GCP node's event as Terraform's JSON UI prints it (internal/command/views/json_view.go):
    ``resource_drift`` names the object and an action, never which attributes differ."""
    address = 'google_compute_instance.node["us-central1-0"]'
    message = "Drift detected" if kind == "resource_drift" else "Plan to"
    return {
        "@level": "info",
        "@message": f"{address}: {message} ({action})",
        "type": kind,
        "change": {
            "resource": {
                "addr": address,
                "resource_type": "google_compute_instance",
                "resource_name": "node",
                "resource_key": "us-central1-0",
                "implied_provider": "google",
            },
            "action": action,
        },
    }


def test_drift_in_ignored_metadata_after_heal_does_not_fail_the_drift_check(tmp_path):
    """`heal` and `verify --fresh` set the mlinfra-check-request key, which the module ignores
    (lifecycle ignore_changes): refresh reports the node as drifted, the plan changes nothing."""
    drift = _gcp_node_event("resource_drift", "update")
    summary = plan_summary([drift, {"type": "change_summary", "changes": {"add": 0, "change": 0, "remove": 0,
                                                                          "operation": "plan"}}])
    assert PlanResult("s", tmp_path, summary).exit_code == 0
    assert [c.address for c in summary.drift] == ['google_compute_instance.node["us-central1-0"]']  # still shown

    # Someone edited what the module manages (a label, say): the plan puts it back, so exit 3.
    undone = plan_summary([drift, _gcp_node_event("planned_change", "update"),
                           {"type": "change_summary", "changes": {"add": 0, "change": 1, "remove": 0,
                                                                  "operation": "plan"}}])
    assert PlanResult("s", tmp_path, undone).exit_code == 3
