"""The local target: each node is a real process on this machine (``templates/local/``).

``terraform_data`` + ``local-exec`` run the node launcher (``templates/local/node.py``), which
starts ``serve.command`` in a session of its own with a token in its environment, and stops
exactly the processes carrying that token. No provider download, no cloud account. Here:
the module's values (``ports`` keeps each node's port), what the launcher recorded
(``process``), and the GPU check on this machine's own ``nvidia-smi``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlinfra import workload
from mlinfra.errors import SpecError
from mlinfra.targets.base import Driver, Placement, read_json
from mlinfra.targets.local import ports, process


class LocalDriver(Driver):
    name = "local"
    templates = "local"
    shared_templates: tuple[str, ...] = ("node/workload.py",)
    node_resource = "terraform_data.node"
    rebuild_budget_s = 60.0  # a local node starts in seconds
    health_poll_cap_s = 0.25  # a probe on loopback costs microseconds: ready is seen within 250 ms
    # No estimate (``cost`` is None), not $0: nothing here is billed by a cloud, and this machine's
    # own cost is not mlinfra's to know.
    no_price = "the local target has no price: its nodes are processes on this machine, not billed by a cloud"

    def regions(self, spec) -> tuple[str, ...]:
        # Names only: a "region" is a group of local processes, so a multi-region stack can be
        # rehearsed on one machine.
        return spec.local.regions

    def validate(self, spec) -> Placement:
        for name, ref in spec.serve.secrets.items():
            if not ref.startswith("env:"):
                raise SpecError(
                    f"serve.secrets.{name}",
                    f"{ref!r}: the local target reads secrets from this machine's "
                    "environment when a node starts: use 'env:NAME'",
                )
        workload.check_local(spec)
        return super().validate(spec)

    def tfvars(self, spec, placement: Placement, workspace) -> dict[str, Any]:
        running = {n.key for n in placement.nodes if workspace.node_record(n.key).exists()}
        # serve.port written in the stack file is honoured (node i: port + i); otherwise free ports.
        asked = spec.serve.port if "serve.port" in spec.given else None
        assigned = ports.assign(spec.name, placement.nodes, ports.previous_ports(workspace.tfvars), running, asked)
        cwd = str((spec.path.parent if spec.path else Path.cwd()).resolve())
        return {
            "stack": spec.name,
            "python": sys.executable,
            "nodes": {
                node.key: {
                    "region": node.region,
                    "replica": node.replica,
                    "port": assigned[node.key],
                    "command": spec.serve.command,
                    "health_path": spec.serve.health_path,
                    "cwd": cwd,
                    "env": dict(spec.serve.env),
                    "secrets": dict(spec.serve.secrets),  # references only: the launcher reads the values
                    "workload": workload.node_values(spec),  # image, setup, model (templates/node/workload.py)
                    "gpus": spec.compute.gpu_count if spec.compute.accelerator else 0,  # a container's GPU flags
                }
                for node in placement.nodes
            },
        }

    def discover(self, outputs: dict[str, Any], workspace) -> list:
        found = super().discover(outputs, workspace)
        records = {node.key: process.read_record(workspace.nodes_dir, node.key) for node in found}
        return [
            replace(
                node,
                pid=records[node.key].get("pid"),
                log=records[node.key].get("log", ""),
                workload=read_json(workspace.nodes_dir / f"{node.key}.workload.json"),
                created_at=records[node.key].get("started_at"),  # the launcher's clock when it started the server
            )
            for node in found
        ]

    def exited(self, node, workspace) -> Callable[[], str | None] | None:
        if not node.pid:
            return None  # no record: nothing to ask (health alone decides)
        return lambda: process.identity_problem(workspace.nodes_dir, node.key)

    def orphans(self, workspace) -> list[int]:
        return process.orphans(workspace.nodes_dir)

    def sweep(self, workspace, pids: list[int] | None = None) -> int:
        found = list(process.stack_processes(workspace.nodes_dir)) if pids is None else pids
        return process.stop_processes(found)

    def gpu_runner(self, node, workspace) -> Any:
        from mlinfra.verify.runners import LocalRunner

        return LocalRunner()

    def ci_notes(self, spec, stack_file: str) -> list[str]:
        return [
            f"{stack_file} has target = 'local': the job rebuilds it on the runner, and its Google Cloud "
            "authentication step fails until the GCP variables are set (delete that step if you never will)"
        ]


DRIVER = LocalDriver()
