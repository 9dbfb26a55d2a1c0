"""Autoscaled serving on this machine (``templates/serve-local/``): per region, a real Ray head
with its own ports and temp dir, running a Serve app whose replicas run ``serve.command``.

The region's "node" is its head: its endpoint is the Serve proxy (a stable port per stack and
region), its health URL the proxy's own ``/-/healthz`` — so `mlinfra status` never wakes a
stack that scaled to zero; the first request through the endpoint does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError, SpecError
from mlinfra.targets.base import NodeSpec, Placement, node_specs, read_json
from mlinfra.targets.local import LocalDriver, ports, process
from mlinfra.targets.serve.section import refuse_secrets_with_autoscale

# The ports of one head; each is stable across applies like a local node's port.
PORTS = ("gcs", "serve", "client", "agent", "metrics")
READY_TIMEOUT_S = 600.0  # how long a replica waits for serve.command's health path (a model load)
STATUS_TIMEOUT_S = 60.0


POLICY_FILES_MAX_BYTES = 200_000  # shipped in the head VM's metadata (GCE: 256 KB a value)


def _stack_dir(spec) -> Path:
    return (spec.path.parent if spec.path else Path.cwd()).resolve()


def check_policy(spec) -> Path | None:
    """``autoscale.policy`` names a module that can be found from the stack's directory (where
    the Ray workers look too) and a function name; the module is not imported here (a dotted
    name's parent packages are, as ``importlib.util.find_spec`` does). Returns its file."""
    from mlinfra.environments import machine_checks

    policy = spec.autoscale.policy
    if not policy or not machine_checks():  # another environment's module may live on another machine
        return None
    module = policy.partition(":")[0]
    base = str(_stack_dir(spec))
    sys.path.insert(0, base)
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    finally:
        sys.path.remove(base)
    if found is None:
        raise SpecError(
            "autoscale.policy", f"cannot import module {module!r} (looked in the stack's directory and sys.path)"
        )
    return Path(found.origin) if found.origin else None


def policy_files(spec) -> dict[str, str]:
    """The custom policy's source for a head on another machine (GCP): its module file and the
    ``__init__.py`` of each package above it, by path relative to the stack's directory. Only a
    policy that lives there can be shipped; one installed elsewhere would be missing on the head."""
    from mlinfra.environments import machine_checks

    origin = check_policy(spec)
    if not spec.autoscale.policy or not machine_checks():
        return {}
    base, module = _stack_dir(spec), spec.autoscale.policy.partition(":")[0]
    if origin is None or origin.suffix != ".py" or not origin.resolve().is_relative_to(base):
        raise SpecError(
            "autoscale.policy",
            f"module {module!r} is not a .py file in the stack's directory: only such a module can be "
            "shipped to the head VMs",
        )
    parts = module.split(".")
    packages = [base.joinpath(*parts[:depth], "__init__.py") for depth in range(1, len(parts))]
    files = {str(f.relative_to(base)): f.read_text() for f in [*packages, origin.resolve()] if f.is_file()}
    if sum(len(text.encode()) for text in files.values()) > POLICY_FILES_MAX_BYTES:
        raise SpecError(
            "autoscale.policy",
            f"module {module!r} is over {POLICY_FILES_MAX_BYTES // 1000} KB with its packages' __init__.py: "
            "too large for the head VM's metadata; keep the policy in a small module of its own",
        )
    return files


def autoscale_values(spec) -> dict[str, Any]:
    a = spec.autoscale
    return {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "max_queued_requests": a.max_queued_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
        "policy": a.policy,
        "ready_timeout_s": min(READY_TIMEOUT_S, spec.verify.health_timeout_s),
    }


def _temp_dir(workdir: Path, key: str) -> str:
    # Ray puts Unix sockets under its temp dir, and a socket path has 107 bytes at most:
    # a short per-head directory, not the (possibly long) work dir.
    digest = hashlib.sha256(f"{workdir.resolve()}/{key}".encode()).hexdigest()[:12]
    return str(Path(tempfile.gettempdir()) / "mlinfra-ray" / digest)


class ServeLocalDriver(LocalDriver):
    """The local target's regions, process records, orphan sweep and GPU check; Ray heads for nodes."""

    name = "local"
    templates = "serve-local"
    shared_templates = ()  # the Ray templates run no workload.py (serve.image, setup and [model] are refused)
    node_resource = "terraform_data.head"
    rebuild_budget_s = 120.0  # `ray start` ~6 s and Serve ~3 s on two cores, plus min_replicas starts

    def validate(self, spec) -> Placement:
        refuse_secrets_with_autoscale(spec)
        check_policy(spec)
        return Placement(node_specs(self.regions(spec), 1))  # one head per region

    def notes(self, spec, placement: Placement) -> list[str]:
        a = spec.autoscale
        return [f"autoscaled by Ray Serve: {a.min_replicas}–{a.max_replicas} replicas per region"]

    def tfvars(self, spec, placement: Placement, workspace) -> dict[str, Any]:
        require_ray()
        previous = {
            f"{key}/{name}": int(head[f"{name}_port"])
            for key, head in read_json(workspace.tfvars).get("heads", {}).items()
            for name in PORTS
            if isinstance(head, dict) and f"{name}_port" in head
        }
        wanted = [NodeSpec(f"{n.key}/{name}", n.region, 0) for n in placement.nodes for name in PORTS]
        running = {s.key for s in wanted if workspace.node_record(s.key.partition("/")[0]).exists()}
        assigned = ports.assign(spec.name, wanted, previous, running)
        cwd = str(_stack_dir(spec))
        heads = {}
        for node in placement.nodes:
            heads[node.key] = {f"{name}_port": assigned[f"{node.key}/{name}"] for name in PORTS} | {
                "region": node.region,
                "temp_dir": _temp_dir(workspace.root, node.key),
                "command": spec.serve.command,
                "health_path": spec.serve.health_path,
                "cwd": cwd,
                "env": dict(spec.serve.env),
                "autoscale": autoscale_values(spec),
            }
        return {"stack": spec.name, "python": sys.executable, "heads": heads}

    def exited(self, node, workspace) -> Callable[[], str | None] | None:
        if not node.pid:
            return None
        return lambda: None if process.pid_alive(node.pid) else f"the Ray head (GCS pid {node.pid}) is not running"

    def autoscale_status(self, spec, workspace, nodes: list) -> dict[str, Any] | None:
        regions = {}
        heads = read_json(workspace.tfvars).get("heads", {})
        for node in nodes:
            head = heads.get(node.key)
            serving = head_status(workspace.root, head) if head and node.alive is not False else {}
            regions[node.region] = {"endpoint": node.endpoint, **serving}
        return summary(spec, regions)


def summary(spec, regions: dict[str, dict]) -> dict[str, Any]:
    """The status's ``autoscale`` object: totals first, then each region's own figures.
    ``queue_depth``: requests waiting for a replica or in flight at one (what Serve scales on);
    None when no region could say."""
    a = spec.autoscale
    depths = [r["queue_depth"] for r in regions.values() if r.get("queue_depth") is not None]
    # Totals over the regions that answered; None when none did (an unread count is not a zero).
    read = [r for r in regions.values() if "replicas" in r]
    return {
        "engine": "ray-serve",
        "replicas": sum(r["replicas"] for r in read) if read else None,
        "starting": sum(r.get("starting", 0) for r in read) if read else None,
        "queue_depth": sum(depths) if depths else None,
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "max_queued_requests": a.max_queued_requests,
        "policy": a.policy or "queue-depth",
        "regions": regions,
    }


def head_status(module_dir: Path, head: dict) -> dict[str, Any]:
    """The Serve app's replicas, queue depth and Ray nodes, asked of the running cluster by a
    short Python that imports Ray (this process never does). An unreachable cluster is
    ``{"error": ...}``, not an exception."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLINFRA_")}
    # The stack's directory too: Serve's status carries the deployment's config, and with it a
    # custom policy that unpickles only where its module imports.
    path = os.pathsep.join([str(module_dir), head["cwd"]])
    env |= {"PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0", "MLINFRA_HEAD": json.dumps(head)}
    code = "import sys, mlinfra_serve_app; sys.exit(mlinfra_serve_app.main())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, "status"], env=env, capture_output=True, text=True, timeout=STATUS_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"the Ray cluster did not answer: {exc}"}
    return parse_status(done.returncode, done.stdout, done.stderr)


def parse_status(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    """What ``mlinfra_serve_app.py status`` printed (here or on a GCP head, over SSH): its last
    line of JSON, or ``{"error": ...}`` with the last lines it wrote to stderr."""
    lines = stdout.strip().splitlines()
    try:
        if returncode == 0 and lines:
            return dict(json.loads(lines[-1]))
    except ValueError:
        pass
    tail = " | ".join(stderr.strip().splitlines()[-2:])
    return {"error": "the Ray cluster did not answer" + (f": {tail}" if tail else "")}


def require_ray() -> None:
    """An autoscaled stack needs Ray in mlinfra's interpreter (the ``ray`` extra)."""
    if importlib.util.find_spec("ray") is None:
        raise MlinfraError("[autoscale] needs Ray: pip install 'mlinfra[ray]'")


DRIVER = ServeLocalDriver()
