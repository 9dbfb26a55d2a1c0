"""The catalog, preflight and plan-summary commands through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import HTTP_SERVER, SCHEMA, write_stack
from typer.testing import CliRunner

from mlinfra.cli import app

runner = CliRunner()
SEED = """
    name = "seed"
    target = "gcp"
    [gcp]
    project = "ml-demand-predictor"
    regions = ["us-central1"]
    [compute]
    gpu = "t4"
    machine_type = "n1-standard-4"
    [serve]
    port = 8000
"""


def test_gpus_for_one_gpu_and_region():
    result = runner.invoke(app, ["gpus", "--gpu", "t4", "--region", "us-central1"])
    assert result.exit_code == 0
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    # Reference §2.1: T4 comes in 1, 2 or 4; §5: us-central1-a, -b, -c and -f offer it.
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        ("t4", "nvidia-tesla-t4", n, "n1-standard-4") for n in ("1", "2", "4")]
    assert all(r[-4:] == ["a", "b", "c", "f"] for r in rows)


def test_gpus_json_marks_spot_only_types_and_unknown_prices():
    rows = json.loads(runner.invoke(app, ["gpus", "--json"]).stdout)
    h100_1g = next(r for r in rows if r["machine_type"] == "a3-highgpu-1g")
    assert h100_1g["on_demand"] is False  # reference §4: no plain on-demand capacity
    assert all(r["on_demand_usd_per_hour"] is None or r["on_demand_usd_per_hour"] > 0 for r in rows)


def test_gpus_unknown_gpu_is_bad_input():
    result = runner.invoke(app, ["gpus", "--gpu", "a10"])
    assert (result.exit_code, result.stderr) == (2, "error: unknown GPU 'a10' — did you mean 'a100'?\n")


def test_plan_markdown_for_a_pull_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, f'name = "pr"\n[local]\nregions = ["a", "b"]\n[serve]\ncommand = "{HTTP_SERVER}"\n')
    result = runner.invoke(app, ["plan", "--markdown"])
    assert result.exit_code == 0
    assert result.stdout == (
        "### mlinfra plan `pr`: 2 to add, 0 to change, 0 to destroy\n\n"
        "| action | resource |\n| --- | --- |\n"
        '| create | `terraform_data.node["a-0"]` |\n| create | `terraform_data.node["b-0"]` |\n'
    )


def test_gcp_plan_offline_says_what_to_do_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, SEED)
    result = runner.invoke(app, ["plan"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    # What mlinfra chose is said first (reference §5: us-central1-a is the first zone with T4s).
    assert lines[0] == "gcp.zones: chose us-central1-a for us-central1 (the first zone that offers t4)"
    assert lines[1].startswith("gcp.image: chose ") and "nvidia" in lines[1]
    assert lines[-1].startswith("error: the hashicorp/google provider could not be installed")
    assert "`mlinfra render` works offline" in lines[-1] and "provider mirror" in lines[-1]
    # The price is known without Terraform, so it is shown even here. By the sources: a T4 is
    # $0.35 on-demand / $0.14 spot (reference §6); an n1-standard-4 host is 4 vCPU + 15 GB at the
    # N1 rates of the same SkyPilot catalog commit; a month is 730 hours.
    on_demand = 0.35 + 4 * 0.031611 + 15 * 0.004237
    spot = 0.14 + 4 * 0.0081306 + 15 * 0.0010418
    assert result.stdout.splitlines() == [
        f"Estimated cost (on-demand): ${on_demand:.2f}/hour, ${on_demand * 730:,.0f}/month",
        f"  spot would be: ${spot:.2f}/hour, ${spot * 730:,.0f}/month"]


def test_public_stack_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, SEED + '    public = true\n    allow_cidrs = ["0.0.0.0/0"]\n')
    result = runner.invoke(app, ["plan"])
    assert "warning: serve.public = true: port 8000 on every node is open to the whole internet (0.0.0.0/0)" \
        in result.stderr.splitlines()


def test_check_schema_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "not-a-real-token")  # credentials: present
    write_stack(tmp_path, SEED)
    result = runner.invoke(app, ["check", "--schema", str(SCHEMA), "--json"])
    items = {item["name"]: item for item in json.loads(result.stdout)}
    assert result.exit_code == 0, result.stdout
    assert list(items) == ["stack", "engine", "render", "credentials", "schema"]
    assert re.fullmatch(r"Terraform 1\.15\.\d+", items["engine"]["detail"])
    # A module that breaks the schema is caught: an argument the provider does not have.
    main = tmp_path / ".mlinfra" / "seed" / "main.tf"
    from mlinfra.clouds.gcp import schema

    main.write_text(main.read_text().replace("machine_type", "machine_typo", 1))
    problems = schema.check_module(main.parent, SCHEMA)
    assert any("machine_typo" in str(p) for p in problems)


def test_check_local_stack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, 'name = "pre"\n')
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [["ok", "stack"], ["ok", "engine"], ["ok", "render"]]
