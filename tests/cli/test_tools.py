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
    assert "Sources: S5:" in result.stderr  # the prices' region and sources, beside the table


def test_gpus_json_marks_spot_only_types_and_unknown_prices():
    rows = json.loads(runner.invoke(app, ["gpus", "--json"]).stdout)
    h100_1g = next(r for r in rows if r["machine_type"] == "a3-highgpu-1g")
    assert h100_1g["on_demand"] is False  # reference §4: no plain on-demand capacity
    assert all(r["vm_usd_per_hour"] is None or r["vm_usd_per_hour"] > 0 for r in rows)
    assert h100_1g["vm_usd_per_hour"] is None and h100_1g["spot_vm_usd_per_hour"] > 0


def test_gpus_shows_the_gpu_alone_beside_the_whole_vm():
    """Issue 13: a T4 costs $0.35/h on its own in us-central1 (reference §6, [S5]); the VM around it more."""
    rows = json.loads(runner.invoke(app, ["gpus", "--gpu", "t4", "--json"]).stdout)
    one = rows[0]
    assert (one["count"], one["gpu_usd_per_hour"], one["spot_gpu_usd_per_hour"]) == (1, 0.35, 0.14)
    assert one["vm_usd_per_hour"] == 0.54 and one["spot_vm_usd_per_hour"] == 0.18815  # 0.14 + 4 × 0.0081306 + 15 × 0.0010418
    assert one["price_region"] == "us-central1" and one["price_sources"][0].startswith("S5: skypilot-org")
    result = runner.invoke(app, ["gpus", "--gpu", "t4"])
    header, first = result.stdout.splitlines()[:2]
    assert header.split()[6:12] == ["GPU", "$/h", "VM", "$/h", "spot", "GPU"]
    assert first.split()[5:9] == ["$0.35", "$0.54", "$0.14", "$0.19"]
    assert result.stderr.startswith("USD per hour in us-central1: GPU = one GPU on its own; VM = the machine type")


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


def test_plan_and_check_say_before_applying_that_latency_cannot_run_from_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, SEED)
    warned = [line for line in runner.invoke(app, ["plan"]).stderr.splitlines() if "latency" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: the latency check cannot run from this machine: ")
    for words in ("admits only ranges that are not on the internet", "measures latency on each node instead (server time, without "
                  "the network)", "serve.allow_cidrs", "35.235.240.0/20", "gcloud compute start-iap-tunnel"):
        assert words in warned[0]
    # This machine's address, when the user states it, decides: out of the list, then in it.
    monkeypatch.setenv("MLINFRA_CLIENT_IP", "203.0.113.7")
    check = runner.invoke(app, ["check"]).stdout
    assert "warn  reach         the latency check cannot run from this machine: this machine (203.0.113.7, " \
        "MLINFRA_CLIENT_IP) is not in serve.allow_cidrs (10.0.0.0/8)" in check
    write_stack(tmp_path, SEED + '    allow_cidrs = ["203.0.113.0/24", "34.72.10.0/24"]\n')
    assert "latency" not in runner.invoke(app, ["plan"]).stderr
    monkeypatch.setenv("MLINFRA_CLIENT_IP", "198.18.0.1")  # `up` says it too, before Terraform runs
    up = runner.invoke(app, ["up", "--yes"]).stderr.splitlines()
    assert up[2].startswith("warning: the latency check cannot run from this machine: this machine (198.18.0.1")
    # Without the address and with a public range allowed, mlinfra says it cannot tell.
    monkeypatch.delenv("MLINFRA_CLIENT_IP")
    stderr = runner.invoke(app, ["plan"]).stderr
    assert "warning: latency from here: mlinfra cannot tell offline whether this machine's public address is " \
        "in serve.allow_cidrs (203.0.113.0/24, 34.72.10.0/24); set MLINFRA_CLIENT_IP=ADDRESS to say it. If it cannot, the gate" \
        in stderr


def test_check_schema_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "not-a-real-token")  # credentials: present
    write_stack(tmp_path, SEED)
    result = runner.invoke(app, ["check", "--schema", str(SCHEMA), "--json"])
    items = {item["name"]: item for item in json.loads(result.stdout)}
    assert result.exit_code == 0, result.stdout
    # The default stack (serve.allow_cidrs = 10.0.0.0/8) cannot be reached from here: said, not failed.
    assert list(items) == ["stack", "engine", "render", "credentials", "schema", "reach"]
    assert items["reach"]["ok"] and items["reach"]["warning"]
    assert "measures latency on each node instead" in items["reach"]["detail"]
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
