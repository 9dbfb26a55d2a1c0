"""Nodes as deployed: read from Terraform outputs, probed for liveness and readiness.

Every target's module has a ``nodes`` output, one object per node (name, region, replica,
endpoint, health_url; GCP adds its SSH target and zone). A target's driver adds what it
keeps beside the state (the local target: the node's process record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Node:
    key: str
    name: str
    region: str
    replica: int
    endpoint: str
    health_url: str
    pid: int | None = None
    alive: bool | None = None  # the node's process runs and owns its port (local target); None: cannot tell
    problem: str = ""  # why it is not alive: how its process ended, or who holds its port
    ready: bool | None = None  # the health path answered 200
    health_status: int | None = None
    log: str = ""
    # What the node runs (issue 11): image or command, model URI, generation and checksum, setup
    # result; the local launcher's record, or what the stack asked of a GCP node.
    workload: dict[str, Any] = field(default_factory=dict)
    ssh_host: str = ""
    ssh_port: int = 22
    ssh_user: str = ""
    ssh_key: str = ""  # the stack's private key (GCP), for the GPU check over SSH
    zone: str = ""
    # When the node was created (epoch s; GCP: the instance's creation_timestamp, local: its start)
    # and the machine type it runs as (GCP): what `mlinfra cost` prices. None/"": not known.
    created_at: float | None = None
    machine_type: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def from_outputs(outputs: dict[str, Any]) -> list[Node]:
    """The nodes in the ``nodes`` output, sorted by key."""
    from mlinfra.timeutil import parse_epoch

    found = []
    for key, out in sorted((outputs.get("nodes") or {}).items()):
        user, _, host = (out.get("ssh") or "").rpartition("@")  # GCP: "user@external-ip"
        found.append(
            Node(
                key=key,
                name=out.get("name", key),
                region=out["region"],
                replica=int(out["replica"]),
                endpoint=out["endpoint"],
                health_url=out["health_url"],
                ssh_user=user,
                ssh_host=host,
                ssh_port=int(out.get("ssh_port", 22)),
                ssh_key=out.get("ssh_key") or "",
                zone=out.get("zone") or "",
                created_at=parse_epoch(out["creation_timestamp"]) if out.get("creation_timestamp") else None,
                machine_type=out.get("machine_type") or "",
            )
        )
    return found


def probe_all(nodes: list[Node], exited: Callable[[Node], Callable[[], str | None] | None]) -> list[Node]:
    """``probe`` every node, at the same time when there are several: a node that does not answer
    costs its 2 s timeout once, not once per node before it (GCP nodes closed to this machine)."""
    if len(nodes) < 2:
        return [probe(node, exited(node)) for node in nodes]
    from concurrent.futures import ThreadPoolExecutor  # only here: most commands never probe

    with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
        return list(pool.map(lambda node: probe(node, exited(node)), nodes))


def probe(node: Node, exited: Callable[[], str | None] | None = None) -> Node:
    """The node with its liveness (``exited``, from its target) and readiness (one health GET)."""
    from mlinfra.verify.health import READY
    from mlinfra.verify.health import probe as probe_url  # only verify talks to endpoints

    attempt = probe_url(node.health_url, timeout_s=2.0)
    problem = exited() if exited is not None else None
    return replace(
        node,
        alive=None if exited is None else problem is None,
        problem=problem or "",
        ready=attempt.outcome == READY and not problem,
        health_status=attempt.status,
    )
