"""`mlinfra envs` reads each environment's state without rendering or running Terraform, and an
environment whose bucket cannot be reached is listed as unknown, with the reason, while the
others are still listed. Against a real fake-gcs-server (tests/helpers.py ``Emulator``) and a
dead endpoint: a closed local port, which refuses at once."""

from __future__ import annotations

import json
import socket

from typer.testing import CliRunner

from helpers import write_stack
from mlinfra.cli import app

runner = CliRunner()
ENDPOINT = "http://127.0.0.1:8123"  # the dev node's endpoint in the recorded state



def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recorded_state(node_key: str) -> bytes:
    """A state as Terraform's gcs backend stores it, with the ``nodes`` output of templates/local."""
    node = {
        "name": f"ro-dev-{node_key}",
        "region": "a",
        "replica": 0,
        "endpoint": ENDPOINT,
        "health_url": f"{ENDPOINT}/",
    }
    return json.dumps(
        {
            "version": 4,
            "serial": 2,
            "lineage": "0c5b7c1e-envs-read-only",
            "outputs": {"nodes": {"value": {node_key: node}, "type": ["map", ["object", {}]]}},
            "resources": [],
        }
    ).encode()


def test_envs_reads_state_without_terraform_and_reports_an_unreachable_bucket_as_unknown(
    tmp_path, emulator, spy_terraform, monkeypatch
):
    dead = f"http://127.0.0.1:{closed_port()}"
    write_stack(
        tmp_path,
        f"""
        name = "ro"
        default_env = "dev"
        [local]
        regions = ["a"]
        [serve]
        command = "python -m http.server $PORT"
        [state]
        backend = "gcs"
        bucket = "tf-state"
        prefix = "stacks/ro"
        endpoint = "{emulator.url}"
        [env.dev.model]
        uri = "./weights"  # absent here: a listing needs no file of this machine's
        [env.prod.state]
        endpoint = "{dead}"
        [env.qa]
        [env.stage]
    """,
    )
    emulator.create_bucket("tf-state")
    emulator.upload("tf-state", "stacks/ro/dev/default.tfstate", recorded_state("a-0"))
    emulator.upload("tf-state", "stacks/ro/stage/default.tfstate", b'{"version": 4, "serial": 2, "outp')  # cut off
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(app, ["envs", "--json"])
    assert result.exit_code == 0, result.output
    envs = {e["name"]: e for e in json.loads(result.stdout)["environments"]}
    assert (envs["dev"]["deployed"], envs["dev"]["endpoints"], envs["dev"]["unknown"]) == (True, [ENDPOINT], "")
    assert (envs["qa"]["deployed"], envs["qa"]["endpoints"]) == (False, [])  # no state object yet
    assert envs["prod"]["deployed"] is None
    assert envs["stage"]["deployed"] is None  # a damaged state object is that environment's problem only
    assert envs["stage"]["unknown"].startswith("reading the state: gs://tf-state/stacks/ro/stage/default.tfstate is not")
    assert envs["prod"]["unknown"].startswith(f"cannot reach the state bucket's endpoint {dead}: Connection refused")

    text = runner.invoke(app, ["envs"])
    assert text.exit_code == 0, text.output
    assert f"prod: ro-prod, unknown (cannot reach the state bucket's endpoint {dead}" in text.stdout
    assert "dev (default): ro-dev, deployed" in text.stdout and f"endpoint: {ENDPOINT}" in text.stdout

    assert not spy_terraform.exists()  # no init, no output: Terraform never ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlinfra.toml", "terraform"]  # no work dir rendered
