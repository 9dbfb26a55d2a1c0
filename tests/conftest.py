"""Shared test helpers: stack files in temp dirs, process checks, guaranteed teardown."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from mlinfra import Stack

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


@pytest.fixture
def deployed():
    """Collects stacks a test brings up and always tears them down afterwards."""
    stacks: list[Stack] = []
    yield stacks.append
    for stack in stacks:
        stack.down(force=True)
        assert stack_processes(stack.name) == [], f"processes left behind by {stack.name}"
