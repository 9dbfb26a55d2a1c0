"""Nodes as deployed: read from Terraform outputs, probed for liveness and readiness.

On the local target a node's process record (written by the node launcher,
``templates/local/node.py``) sits in ``<workdir>/nodes/<key>.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mlinfra.errors import MlinfraError


@dataclass(frozen=True)
class Node:
    key: str
    name: str
    region: str
    replica: int
    endpoint: str
    health_url: str
    pid: int | None = None
    alive: bool | None = None  # the process exists (local target)
    ready: bool | None = None  # the health path answered 200
    health_status: int | None = None
    log: str = ""


def from_outputs(outputs: dict, workdir: Path) -> list[Node]:
    found = []
    for key, out in sorted((outputs.get("nodes") or {}).items()):
        record = _record(workdir, key)
        found.append(Node(
            key=key, name=out.get("name", key), region=out["region"], replica=int(out["replica"]),
            endpoint=out["endpoint"], health_url=out["health_url"],
            pid=record.get("pid"), log=record.get("log", ""),
        ))
    return found


def _record(workdir: Path, key: str) -> dict:
    try:
        return json.loads((workdir / "nodes" / f"{key}.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; it just has not been reaped yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def health_status(url: str, timeout_s: float = 2.0) -> int | None:
    """The HTTP status of one GET, or None when nothing answered."""
    import urllib.error  # lazy: urllib.request costs ~40 ms of start-up on every command
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def probe(node: Node) -> Node:
    status = health_status(node.health_url)
    return replace(node, alive=_pid_alive(node.pid) if node.pid else None,
                   ready=status == 200, health_status=status)


def wait_ready(found: list[Node], timeout_s: float, interval_s: float = 0.1) -> list[Node]:
    """Poll every node's health URL until all answer 200, or fail naming the laggards."""
    deadline = time.monotonic() + timeout_s
    pending = {node.key: node for node in found}
    done: dict[str, Node] = {}
    while pending:
        for key, node in list(pending.items()):
            probed = probe(node)
            if probed.ready:
                done[key] = probed
                del pending[key]
            elif probed.alive is False:
                raise MlinfraError(f"node {node.name}: its process exited before becoming ready (log: {node.log})")
            else:
                pending[key] = probed
        if pending and time.monotonic() >= deadline:
            laggards = ", ".join(f"{n.name} ({n.health_status or 'not listening'})" for n in pending.values())
            raise MlinfraError(f"not ready after {timeout_s:.0f}s: {laggards}")
        if pending:
            time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))
            interval_s = min(interval_s * 1.5, 2.0)
    return [done[node.key] for node in found]
