"""Local node ports: stable across applies, and never one another program holds.

A node keeps the port it had as long as the port is free or the node itself holds it (its
process record exists); a port some other program took meanwhile is replaced. New nodes start
probing from a hash of stack and node, so stacks side by side rarely probe the same ports.
"""

from __future__ import annotations

import json
import socket
import zlib
from collections.abc import Sequence
from pathlib import Path

from mlinfra.errors import MlinfraError
from mlinfra.targets.base import NodeSpec

# Away from the ephemeral range (32768+) and from the usual development ports.
PORT_RANGE = (20000, 29999)


def previous_ports(tfvars: Path) -> dict[str, int]:
    """The ports of the last render (its terraform.tfvars.json); {} when there was none."""
    try:
        data = json.loads(tfvars.read_text())
        return {key: int(node["port"]) for key, node in data.get("nodes", {}).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def assign(
    stack: str, nodes: Sequence[NodeSpec], previous: dict[str, int], running: set[str], asked: int | None = None
) -> dict[str, int]:
    """A port per node: ``previous`` kept where still usable (``running``: nodes with a record).
    ``asked`` (serve.port, when the stack file sets it): node i gets asked + i. Whether it is free
    is the launcher's question when the node starts (a render for `down` must never fail on it)."""
    if asked is not None:
        if asked + len(nodes) - 1 > 65535:
            raise MlinfraError(f"serve.port: {asked} + {len(nodes) - 1} more nodes goes past port 65535")
        return {node.key: asked + i for i, node in enumerate(nodes)}
    assigned: dict[str, int] = {}
    for node in nodes:
        kept = previous.get(node.key)
        if kept and (node.key in running or not port_in_use(kept)):
            assigned[node.key] = kept
    lo, hi = PORT_RANGE
    for node in nodes:
        if node.key in assigned:
            continue
        candidate = lo + zlib.crc32(f"{stack}/{node.key}".encode()) % (hi - lo)
        for _ in range(hi - lo):
            if candidate not in assigned.values() and not port_in_use(candidate):
                break
            candidate = lo if candidate >= hi else candidate + 1
        else:
            raise MlinfraError(f"no free port in {lo}–{hi} for node {node.key}")
        assigned[node.key] = candidate
    return assigned


def port_in_use(port: int) -> bool:
    """True when something listens on the port, or it cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
