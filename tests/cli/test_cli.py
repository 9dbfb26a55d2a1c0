"""The CLI through Typer's runner: whole outputs, exit codes, stdout for data only."""

from __future__ import annotations

import json
import re

from helpers import HTTP_SERVER, write_stack
from typer.testing import CliRunner

from mlinfra import Stack
from mlinfra.cli import app

runner = CliRunner()


def stack_file(tmp_path, name="cli", regions='["a", "b"]', extra=""):
    return write_stack(tmp_path, f"""
        name = "{name}"
        {extra}
        [local]
        regions = {regions}
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
    """)


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = re.findall(r"^  (\w+) ", result.stdout.split("Commands:")[1], re.M)
    assert commands == ["render", "plan", "up", "verify", "down", "status", "envs", "cost", "rebuild", "heal", "serve", "version",
                        "new", "gpus", "check", "ci", "state"]


def test_render_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack_file(tmp_path)
    result = runner.invoke(app, ["render"])
    assert result.exit_code == 0
    workdir = tmp_path.resolve() / ".mlinfra" / "cli"
    assert result.stdout == (
        f"Rendered 7 files for 2 node(s) into {workdir}\n"
        "  main.tf\n  node.py\n  outputs.tf\n  terraform.tfvars.json\n  variables.tf\n  versions.tf\n  workload.py\n"
    )


def test_status_when_not_deployed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack_file(tmp_path)
    result = runner.invoke(app, ["status"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "Stack 'cli' is not deployed.\n", "")
    assert runner.invoke(app, ["status", "--check"]).exit_code == 1  # not deployed: not a pass for scripts
    result = runner.invoke(app, ["status", "--json"])
    data = json.loads(result.stdout)
    assert (data["deployed"], data["nodes"], data["stack"]) == (False, [], "cli")


def test_down_when_nothing_is_deployed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack_file(tmp_path)
    result = runner.invoke(app, ["down"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "Nothing to destroy.\n")
    assert not (tmp_path / ".mlinfra").exists()


def test_plan_text_and_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack_file(tmp_path)
    result = runner.invoke(app, ["plan"])
    assert result.exit_code == 0
    assert result.stdout == (
        '  + terraform_data.node["a-0"] (create)\n'
        '  + terraform_data.node["b-0"] (create)\n'
        "Plan: 2 to add, 0 to change, 0 to destroy.\n"
    )
    assert result.stderr == "Initializing Terraform…\n"
    result = runner.invoke(app, ["plan", "--json"])
    data = json.loads(result.stdout)  # stdout holds the JSON document and nothing else
    assert data["summary"]["add"] == 2 and data["summary"]["has_changes"] is True
    assert [c["address"] for c in data["summary"]["changes"]] == ['terraform_data.node["a-0"]', 'terraform_data.node["b-0"]']


def test_up_without_a_terminal_needs_yes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack_file(tmp_path, regions='["a"]')
    result = runner.invoke(app, ["up"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        "Initializing Terraform…\n"
        '  + terraform_data.node["a-0"] (create)\n'
        "Plan: 1 to add, 0 to change, 0 to destroy.\n"
        "error: refusing to apply these changes without confirmation: stdin is not a terminal; pass --yes\n"
    )
    assert not (tmp_path / ".mlinfra" / "cli" / "terraform.tfstate").exists()


def test_up_status_down_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack_file(tmp_path, name="cli-life")
    try:
        result = runner.invoke(app, ["up", "--yes", "--json", "--no-verify"])
        assert result.exit_code == 0, result.output
        up = json.loads(result.stdout)
        assert up["applied"] is True and [n["ready"] for n in up["nodes"]] == [True, True]
        ports = [n["endpoint"].rsplit(":", 1)[1] for n in up["nodes"]]

        result = runner.invoke(app, ["status"])
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        assert lines[0] == "Stack 'cli-life' (local): 2/2 node(s) ready"
        assert re.fullmatch(r"node\s+region\s+endpoint\s+pid\s+state", lines[1])
        assert re.fullmatch(rf"cli-life-a-0\s+a\s+http://127\.0\.0\.1:{ports[0]}\s+\d+\s+ready", lines[2])
        assert re.fullmatch(rf"cli-life-b-0\s+b\s+http://127\.0\.0\.1:{ports[1]}\s+\d+\s+ready", lines[3])
        assert lines[4].startswith("Cost: the local target has no price: ") and len(lines) == 5  # not "$0"
        assert runner.invoke(app, ["status", "--check"]).exit_code == 0  # deployed, every node ready

        result = runner.invoke(app, ["up", "--yes", "--no-verify"])
        assert result.exit_code == 0
        assert result.stderr == "No changes: the stack matches its file.\n"
    finally:
        result = runner.invoke(app, ["down", "--yes"])
    assert result.exit_code == 0
    # --yes: one Terraform run plans and destroys; its progress, then the plan it carried out.
    assert re.fullmatch(
        r"(  terraform_data\.node\[\"[ab]-0\"\]: delete(…| done \(\d+s\))\n){4}"
        r'  - terraform_data\.node\["a-0"\] \(delete\)\n  - terraform_data\.node\["b-0"\] \(delete\)\n'
        r"Plan: 0 to add, 0 to change, 2 to destroy\.\n"
        r"Destroyed 2 resource\(s\) in \d+\.\ds\.\n", result.stderr)


def test_protected_stack_refuses_down_without_force(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack_file(tmp_path, extra="protected = true")
    result = runner.invoke(app, ["down", "--yes"])
    assert result.exit_code == 2
    assert result.stderr == "error: stack 'cli' is protected (protected = true); pass --force to destroy it\n"
    assert runner.invoke(app, ["down", "--yes", "--force"]).stderr == "Nothing to destroy.\n"


def test_version(tmp_path):
    result = runner.invoke(app, ["version", "--json"])
    data = json.loads(result.stdout)
    assert data["mlinfra"] == "0.1.0" and re.fullmatch(r"1\.15\.\d+", data["terraform"])


def test_serve_help_comes_from_the_server():
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--load-seconds" in result.stdout and "--delay-ms" in result.stdout


def test_python_api_and_cli_agree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = stack_file(tmp_path)
    from_cli = json.loads(runner.invoke(app, ["render", "--json"]).stdout)
    from_api = Stack.load(path).render()
    assert from_cli["files"] == from_api.files and from_cli["nodes"] == from_api.nodes == ["a-0", "b-0"]
