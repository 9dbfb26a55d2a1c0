"""Shared test helpers: paths, stack files in temp dirs, process and port checks.

Imported as ``from helpers import ...`` (``tests/`` is on the path: pyproject's pytest
``pythonpath``); fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import os
import socket
import sys
import textwrap
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
    return gcp_stack(
        tmp_path,
        "demand-predictor",
        gcp={"regions": ["us-central1"], "zones": ["us-central1-a"]},
        compute={"gpu": "nvidia-tesla-t4", "gpu_count": 1, "machine_type": "n1-standard-4"},
        serve={"port": 8000, **serve},
    )
