"""A local stand-in for the Google endpoints a GCP node and its operator talk to, in one HTTP
server, so a node-side write is what the operator-side read sees. GCP is not reachable here;
every path and body below is built from Google's references:

Metadata server (what the node sees at http://metadata.google.internal, header "Metadata-Flavor: Google"):
- GET /computeMetadata/v1/instance/service-accounts/default/token → {"access_token", "expires_in",
  "token_type": "Bearer"} (cloud.google.com/compute/docs/access/authenticate-workloads#applications);
- GET /computeMetadata/v1/instance/attributes/KEY → the value as text with an ETag header;
  ``?wait_for_change=true&last_etag=E&timeout_sec=N`` answers when the value's ETag differs from E
  (cloud.google.com/compute/docs/metadata/querying-metadata, "Waiting for metadata changes");
- GET /computeMetadata/v1/instance/network-interfaces/0/ip → the VM's internal (VPC) address as text
  (cloud.google.com/compute/docs/metadata/predefined-metadata-keys, instance/network-interfaces/);
- what a metadata read can meet on the way, by attribute KEY (or "network-interfaces/0/ip"):
  ``flaky[KEY]``, statuses answered before the value (a 503 is what the metadata server answers while
  it is unavailable; curl's --retry retries 408, 429, 500, 502, 503 and 504), and ``cut``, keys whose
  value stops halfway (the full Content-Length, half the body, then the connection closes: curl
  exits 18, "partial file");
- PUT and GET /computeMetadata/v1/instance/guest-attributes/NAMESPACE/KEY: write and read a guest
  attribute (cloud.google.com/compute/docs/metadata/manage-guest-attributes).

Secret Manager v1: GET /v1/{name=projects/*/secrets/*/versions/*}:access with a Bearer token →
AccessSecretVersionResponse {"name", "payload": {"data": base64, "dataCrc32c"}}
(cloud.google.com/secret-manager/docs/reference/rest/v1/projects.secrets.versions/access).

Compute API v1, under /compute/v1 (cloud.google.com/compute/docs/reference/rest/v1/instances):
- GET .../instances/I/getGuestAttributes?queryPath=NS/ → {"kind": "compute#guestAttributes",
  "queryPath", "queryValue": {"items": [{"namespace", "key", "value"}]}, "selfLink"}; 404 (Google's
  JSON error body) while nothing is under the path;
- GET .../instances/I → an Instance, of which the stand-in fills "name" and "metadata"
  ({"kind": "compute#metadata", "fingerprint", "items": [{"key", "value"}]});
- POST .../instances/I/setMetadata with a Metadata body → an Operation; 412 conditionNotMet when
  the fingerprint is not the current one (the optimistic locking the reference describes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

TOKEN = "ya29.stand-in-token"
METADATA = "/computeMetadata/v1/instance/"
COMPUTE = "/compute/v1/projects/"


class Google:
    """Start with ``Google.start(...)``; ``address`` is host:port; ``stop()`` when done."""

    def __init__(self, *, secrets: dict[str, str] | None = None, attributes: dict[str, str] | None = None,
                 network_ip: str = "10.128.0.7"):
        self.secrets = dict(secrets or {})  # version name → value
        self.attributes = dict(attributes or {})  # instance metadata (one instance)
        self.network_ip = network_ip
        self.flaky: dict[str, list[int]] = {}  # metadata key → statuses to answer first, in order
        self.cut: set[str] = set()  # metadata keys whose value stops halfway
        self.reads: list[str] = []  # the metadata keys asked for, in order (each try)
        self.guest: dict[tuple[str, str], str] = {}  # (namespace, key) → value
        self.puts: list[str] = []  # the guest-attribute paths written, in order
        self.changed = threading.Condition()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    @classmethod
    def start(cls, **options) -> Google:
        google = cls(**options)
        threading.Thread(target=google.server.serve_forever, daemon=True).start()
        return google

    def stop(self) -> None:
        with self.changed:
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def etag(self, key: str) -> str:
        return hashlib.sha256(self.attributes.get(key, "").encode()).hexdigest()[:16]

    def fingerprint(self) -> str:
        return base64.b64encode(hashlib.sha256(json.dumps(self.attributes, sort_keys=True).encode()).digest()[:8]).decode()

    def set_attribute(self, key: str, value: str) -> None:
        with self.changed:
            self.attributes[key] = value
            self.changed.notify_all()

    def wait_for_guest(self, namespace: str, key: str, timeout_s: float, differs_from: str | None = None) -> str | None:
        with self.changed:
            self.changed.wait_for(lambda: self.guest.get((namespace, key), differs_from) != differs_from, timeout_s)
            return self.guest.get((namespace, key))


def _handler(google: Google):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, body, status: int = 200, headers: dict | None = None):
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def api_error(self, status: int, reason: str, message: str):
            self.reply({"error": {"code": status, "message": message, "errors": [
                {"message": message, "domain": "global", "reason": reason}]}}, status)

        def metadata_only(self) -> bool:
            if self.headers.get("Metadata-Flavor") != "Google":
                self.send_error(403)
                return False
            return True

        def compute_only(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                self.api_error(401, "authError", "Request had invalid authentication credentials.")
                return False
            return True

        def do_GET(self):
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == METADATA + "service-accounts/default/token":
                if self.metadata_only():
                    self.reply({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"})
                return None
            if url.path.startswith(METADATA + "attributes/"):
                return self.metadata_attribute(url.path.removeprefix(METADATA + "attributes/"), query)
            if url.path == METADATA + "network-interfaces/0/ip":
                if self.metadata_only() and self.answered_as_asked("network-interfaces/0/ip", google.network_ip):
                    self.reply(google.network_ip)
                return None
            if url.path.startswith(METADATA + "guest-attributes/"):
                namespace, _, key = url.path.removeprefix(METADATA + "guest-attributes/").partition("/")
                if self.metadata_only():
                    if (namespace, key) in google.guest:
                        self.reply(google.guest[(namespace, key)])
                    else:
                        self.send_error(404)
                return None
            if url.path.startswith("/v1/") and url.path.endswith(":access"):
                version = url.path.removeprefix("/v1/").removesuffix(":access")
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self.send_error(401)
                if version not in google.secrets:
                    return self.send_error(404)
                data = base64.b64encode(google.secrets[version].encode()).decode()
                return self.reply({"name": version.replace("latest", "3"), "payload": {"data": data, "dataCrc32c": "1"}})
            if url.path.startswith(COMPUTE):
                return self.compute(url.path, query)
            return self.send_error(404)

        def answered_as_asked(self, key: str, value: str) -> bool:
            """False when a ``flaky`` status or a ``cut`` answered this read instead of the value."""
            google.reads.append(key)
            if google.flaky.get(key):
                self.send_error(google.flaky[key].pop(0))
                return False
            if key in google.cut:
                raw = value.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw[: len(raw) // 2])
                self.wfile.flush()
                self.close_connection = True
                return False
            return True

        def metadata_attribute(self, key: str, query: dict):
            if not self.metadata_only():
                return None
            if not self.answered_as_asked(key, google.attributes.get(key, "")):
                return None
            with google.changed:
                if key not in google.attributes:
                    return self.send_error(404)
                if query.get("wait_for_change") == "true":
                    last = query.get("last_etag", google.etag(key))
                    google.changed.wait_for(lambda: google.etag(key) != last, float(query.get("timeout_sec", 60)))
                value, etag = google.attributes.get(key, ""), google.etag(key)
            return self.reply(value, headers={"ETag": etag})

        def compute(self, path: str, query: dict):
            if not self.compute_only():
                return None
            parts = path.removeprefix(COMPUTE).split("/")  # P zones Z instances I [method]
            instance = parts[4]
            if parts[5:] == ["getGuestAttributes"]:
                namespace = query.get("queryPath", "").rstrip("/")
                items = [{"namespace": ns, "key": k, "value": v} for (ns, k), v in sorted(google.guest.items())
                         if ns == namespace]
                if not items:
                    return self.api_error(404, "notFound", f"The resource '{path}' was not found")
                return self.reply({"kind": "compute#guestAttributes", "queryPath": query["queryPath"],
                                   "queryValue": {"items": items}, "selfLink": f"https://www.googleapis.com{path}"})
            if parts[5:] == []:
                items = [{"key": k, "value": v} for k, v in google.attributes.items()]
                return self.reply({"kind": "compute#instance", "name": instance, "metadata": {
                    "kind": "compute#metadata", "fingerprint": google.fingerprint(), "items": items}})
            return self.send_error(404)

        def do_POST(self):
            url = urlsplit(self.path)
            if not (url.path.startswith(COMPUTE) and url.path.endswith("/setMetadata")):
                return self.send_error(404)
            if not self.compute_only():
                return None
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with google.changed:
                if body.get("fingerprint") != google.fingerprint():
                    return self.api_error(412, "conditionNotMet",
                                          "Supplied fingerprint does not match current metadata fingerprint.")
                google.attributes = {item["key"]: item["value"] for item in body.get("items", [])}
                google.changed.notify_all()
            return self.reply({"kind": "compute#operation", "operationType": "setMetadata", "status": "RUNNING",
                               "targetLink": f"https://www.googleapis.com{url.path.removesuffix('/setMetadata')}"})

        def do_PUT(self):
            url = urlsplit(self.path)
            if not url.path.startswith(METADATA + "guest-attributes/"):
                return self.send_error(404)
            if not self.metadata_only():
                return None
            namespace, _, key = url.path.removeprefix(METADATA + "guest-attributes/").partition("/")
            value = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            with google.changed:
                google.guest[(namespace, key)] = value
                google.puts.append(f"{namespace}/{key}")
                google.changed.notify_all()
            return self.reply("")

    return Handler
