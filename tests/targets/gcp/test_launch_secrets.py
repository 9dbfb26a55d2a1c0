"""templates/gcp/launch.py reads serve.secrets on the node: a token from the metadata server,
then Secret Manager's `versions.access`, into the server's environment only.

GCP is not reachable here, so both services are local stand-ins built from Google's references:
- metadata server: GET /computeMetadata/v1/instance/service-accounts/default/token with header
  "Metadata-Flavor: Google" → {"access_token", "expires_in", "token_type": "Bearer"}
  (cloud.google.com/compute/docs/access/authenticate-workloads#applications);
- Secret Manager v1: GET /v1/{name=projects/*/secrets/*/versions/*}:access with a Bearer token →
  AccessSecretVersionResponse {"name", "payload": {"data": base64, "dataCrc32c"}}
  (cloud.google.com/secret-manager/docs/reference/rest/v1/projects.secrets.versions/access).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from helpers import TEMPLATES, gcp_stack

SECRET = "hf_gcp-s3cr3t-0123456789"
TOKEN = "ya29.stand-in-token"
VERSION = "projects/ml-demo-123456/secrets/hf-token/versions/latest"


class Google(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/computeMetadata/v1/instance/service-accounts/default/token":
            if self.headers.get("Metadata-Flavor") != "Google":
                return self.send_error(403)
            return self.reply({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"})
        if self.path == f"/v1/{VERSION}:access":
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.send_error(401)
            data = base64.b64encode(SECRET.encode()).decode()
            return self.reply({"name": VERSION.replace("latest", "3"), "payload": {"data": data, "dataCrc32c": "1"}})
        self.send_error(404)

    def reply(self, body):
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def serve_google():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Google)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


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
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert out.read_text() == SECRET
    assert SECRET not in done.stdout + done.stderr


def test_a_secret_that_cannot_be_read_stops_the_node_naming_it(tmp_path):
    server, address = serve_google()
    try:
        done, out = launch(tmp_path, {"HF_TOKEN": "sm:projects/ml-demo-123456/secrets/other/versions/1"}, address)
    finally:
        server.shutdown()
    assert done.returncode == 1 and not out.exists()
    assert "mlinfra: secret HF_TOKEN: cannot read projects/ml-demo-123456/secrets/other/versions/1" in done.stderr


def test_the_rendered_module_carries_the_reference_not_the_value(tmp_path):
    stack = gcp_stack(tmp_path, "secrets", gcp={"service_account": "ml-node@ml-demo-123456.iam.gserviceaccount.com"},
                      serve={"secrets": {"HF_TOKEN": f"sm:{VERSION}"}})
    values = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())
    assert values["nodes"]["us-central1-0"]["node_config"]["secrets"] == {"HF_TOKEN": f"sm:{VERSION}"}
