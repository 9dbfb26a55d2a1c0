"""Nodes as deployed: read from Terraform outputs, probed for liveness and readiness.

On the local target a node's process record (written by the node launcher,
``templates/local/node.py``) sits in ``<workdir>/nodes/<key>.json``. A GCP node
also carries its SSH target (for the GPU check).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path



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
    ssh_host: str = ""
    ssh_port: int = 22
    ssh_user: str = ""
    ssh_key: str = ""  # the stack's private key (GCP), for the GPU check over SSH
    zone: str = ""


def from_outputs(outputs: dict, workdir: Path) -> list[Node]:
    found = []
    for key, out in sorted((outputs.get("nodes") or {}).items()):
        record = _record(workdir, key)
        user, _, host = (out.get("ssh") or "").rpartition("@")  # GCP: "user@external-ip"
        found.append(Node(
            key=key, name=out.get("name", key), region=out["region"], replica=int(out["replica"]),
            endpoint=out["endpoint"], health_url=out["health_url"],
            pid=record.get("pid"), log=record.get("log", ""),
            ssh_user=user, ssh_host=host, ssh_port=int(out.get("ssh_port", 22)), ssh_key=out.get("ssh_key") or "",
            zone=out.get("zone") or "",
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


def probe(node: Node) -> Node:
    """The node with its liveness (process) and readiness (one health GET) filled in."""
    from mlinfra.verify.health import READY, probe as probe_url  # only verify talks to endpoints

    attempt = probe_url(node.health_url, timeout_s=2.0)
    return replace(node, alive=_pid_alive(node.pid) if node.pid else None,
                   ready=attempt.outcome == READY, health_status=attempt.status)
