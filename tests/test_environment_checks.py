"""Checks that depend on this machine apply to the chosen environment only; every environment's
shape is still checked (the bad-input corpus holds 150 and 151 for the one-line errors)."""

from __future__ import annotations

from typer.testing import CliRunner

from helpers import write_stack
from mlinfra.cli import app

runner = CliRunner()

# dev runs on this laptop from a gitignored ./weights; prod on GCP from GCS: a CI job for prod has
# no ./weights, and must not need one.
DEV_LOCAL_PROD_GCS = """
    name = "ranker"
    [serve]
    command = "python -m http.server $PORT"
    [env.dev.model]
    uri = "./weights"
    [env.prod]
    target = "gcp"
    [env.prod.gcp]
    project = "ml-demo-123456"
    service_account = "ranker@ml-demo-123456.iam.gserviceaccount.com"
    [env.prod.compute]
    gpu = "t4"
    [env.prod.model]
    uri = "gs://ml-demo-models/ranker/"
"""


def test_another_environments_missing_local_path_does_not_fail_the_chosen_one(tmp_path, monkeypatch):
    write_stack(tmp_path, DEV_LOCAL_PROD_GCS)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["render", "--env", "prod"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / ".mlinfra" / "ranker-prod" / "terraform.tfvars.json").is_file()


def test_the_chosen_environments_local_path_is_still_checked(tmp_path, monkeypatch):
    write_stack(tmp_path, DEV_LOCAL_PROD_GCS)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["render", "--env", "dev"])
    assert result.exit_code == 2
    assert "env.dev.model.uri: './weights': no such file or directory" in result.stderr
    (tmp_path / "weights").write_bytes(b"weights")
    assert runner.invoke(app, ["render", "--env", "dev"]).exit_code == 0


def test_another_environments_shape_is_still_checked(tmp_path, monkeypatch):
    write_stack(tmp_path, DEV_LOCAL_PROD_GCS.replace('uri = "./weights"', 'uri = "./my weights"'))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["render", "--env", "prod"])
    assert result.exit_code == 2
    assert "env.dev.model.uri: './my weights' must be a gs:// URI or a path, without spaces" in result.stderr


# dev tries a custom scaling policy that lives only in a developer's checkout; prod scales on queue depth.
DEV_POLICY = """
    name = "scaler"
    [serve]
    command = "python -m http.server $PORT"
    [autoscale]
    max_replicas = 2
    [env.dev.autoscale]
    policy = "experiments.latency_policy:decide"
    [env.prod.autoscale]
    max_replicas = 3
"""


def test_another_environments_policy_module_is_looked_up_only_when_chosen(tmp_path, monkeypatch):
    write_stack(tmp_path, DEV_POLICY)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["render", "--env", "prod"])
    assert result.exit_code == 0, result.output
    chosen = runner.invoke(app, ["render", "--env", "dev"])
    assert chosen.exit_code == 2
    assert "autoscale.policy: cannot import module 'experiments.latency_policy'" in chosen.stderr
