"""templates/gcp/launch.py reads serve.secrets on the node: a token from the metadata server,
then Secret Manager's `versions.access`, into the server's environment only.

GCP is not reachable here, so both services are the local stand-in tests/standins/google.py,
built from Google's references (named there).
"""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import TEMPLATES, gcp_stack
from standins.google import Google

SECRET = "hf_gcp-s3cr3t-0123456789"
VERSION = "projects/ml-demo-123456/secrets/hf-token/versions/latest"


def serve_google():
    google = Google.start(secrets={VERSION: SECRET})
    return google, google.address


def launch(tmp_path, secrets, address):
    out = tmp_path / "seen"
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"stack": "s", "node": "us-central1-0", "port": 8000, "gpus": 0, "env": {},
                                  "secrets": secrets, "command": 'printf %s "$HF_TOKEN" > seen'}))
    env = {"PATH": "/usr/bin:/bin", "GCE_METADATA_HOST": address, "MLINFRA_SECRET_MANAGER_URL": f"http://{address}"}
    done = subprocess.run([sys.executable, str(TEMPLATES / "gcp" / "launch.py"), "run", str(config)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=30)
    return done, out


def test_a_node_reads_its_secret_into_the_server_environment_only(tmp_path):
    server, address = serve_google()
    try:
        done, out = launch(tmp_path, {"HF_TOKEN": f"sm:{VERSION}"}, address)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    assert out.read_text() == SECRET
    assert SECRET not in done.stdout + done.stderr


def test_a_secret_that_cannot_be_read_stops_the_node_naming_it(tmp_path):
    server, address = serve_google()
    try:
        done, out = launch(tmp_path, {"HF_TOKEN": "sm:projects/ml-demo-123456/secrets/other/versions/1"}, address)
    finally:
        server.stop()
    assert done.returncode == 1 and not out.exists()
    assert "mlinfra: secret HF_TOKEN: cannot read projects/ml-demo-123456/secrets/other/versions/1" in done.stderr


def test_the_rendered_module_carries_the_reference_not_the_value(tmp_path):
    stack = gcp_stack(tmp_path, "secrets", gcp={"service_account": "ml-node@ml-demo-123456.iam.gserviceaccount.com"},
                      serve={"secrets": {"HF_TOKEN": f"sm:{VERSION}"}})
    values = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())
    assert values["nodes"]["us-central1-0"]["node_config"]["secrets"] == {"HF_TOKEN": f"sm:{VERSION}"}
