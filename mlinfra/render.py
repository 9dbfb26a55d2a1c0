"""Stack → a plain Terraform root module in a directory.

Jinja decides structure only (which backend, which blocks); every value the
user wrote goes to ``terraform.tfvars.json``. That split is what makes HCL or
shell injection impossible by construction: the templates never see a user
string (``template_context`` below is the whole list of what they see).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from mlinfra.errors import MlinfraError
from mlinfra.spec import StackSpec

TFVARS = "terraform.tfvars.json"
BACKEND_CONFIG = "backend.tfbackend.json"
# Local node ports come from this range: away from the ephemeral range (32768+) and from the
# usual development ports, so a node rarely meets another program's port.
PORT_RANGE = (20000, 29999)


@dataclass(frozen=True)
class NodeSpec:
    key: str  # "<region>-<replica>", the for_each key
    region: str
    replica: int

    def name(self, stack: str) -> str:
        return f"{stack}-{self.key}"


@dataclass
class RenderResult:
    workdir: Path
    files: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    changed: bool = False  # whether any file differs from what was there


def templates_dir() -> Path:
    """Inside the wheel: mlinfra/templates. In a source checkout: ./templates."""
    packaged = Path(__file__).parent / "templates"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"


def nodes(stack: StackSpec) -> list[NodeSpec]:
    return [NodeSpec(f"{region}-{i}", region, i) for region in stack.regions for i in range(stack.compute.replicas)]


def template_context(stack: StackSpec) -> dict:
    """The only things templates may branch on: choices from fixed sets, never user text."""
    return {"target": stack.target, "backend": stack.state.backend}


def render(stack: StackSpec, out: Path | None = None) -> RenderResult:
    """Write the root module for ``stack`` into ``out`` (default: its work dir)."""
    import jinja2  # lazy: keeps `mlinfra --help` fast

    workdir = Path(out) if out else stack.workdir
    source = templates_dir() / stack.target
    if not source.is_dir():
        raise MlinfraError(f"no templates for target {stack.target!r} in {source}")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(source)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    files: dict[str, str] = {}
    context = template_context(stack)
    for template in sorted(source.iterdir()):
        if template.name.endswith(".tf.j2"):
            files[template.name[: -len(".j2")]] = env.get_template(template.name).render(context)
        elif template.suffix in (".py", ".sh"):
            files[template.name] = template.read_text()
    files[TFVARS] = json.dumps(tfvars(stack, workdir), indent=2, sort_keys=True) + "\n"
    if stack.state.backend == "gcs":
        files[BACKEND_CONFIG] = json.dumps(backend_config(stack), indent=2, sort_keys=True) + "\n"

    workdir.mkdir(parents=True, exist_ok=True)
    changed = False
    for name, text in files.items():
        changed |= write_if_changed(workdir / name, text)
    # A file this renderer wrote before but no longer produces would still be loaded by Terraform.
    for stale in workdir.glob("*.tf"):
        if stale.name not in files:
            stale.unlink()
            changed = True
    return RenderResult(workdir=workdir, files=sorted(files), nodes=[n.key for n in nodes(stack)], changed=changed)


def write_if_changed(path: Path, text: str) -> bool:
    """Atomically replace ``path`` with ``text``; untouched when equal (keeps mtimes stable)."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    # A name of its own: two `up`s render before either holds the stack lock.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def tfvars(stack: StackSpec, workdir: Path) -> dict:
    """Every value the module needs, from the stack: the only way user values reach Terraform."""
    if stack.target == "gcp":
        from mlinfra import gcp

        return gcp.tfvars(stack, workdir)
    return local_tfvars(stack, workdir)


def local_tfvars(stack: StackSpec, workdir: Path) -> dict:
    ports = _assign_ports(stack, workdir)
    cwd = str((stack.path.parent if stack.path else Path.cwd()).resolve())
    return {
        "stack": stack.name,
        "python": sys.executable,
        "nodes": {
            node.key: {
                "region": node.region,
                "replica": node.replica,
                "port": ports[node.key],
                "command": stack.serve.command,
                "health_path": stack.serve.health_path,
                "cwd": cwd,
                "env": dict(stack.serve.env),
            }
            for node in nodes(stack)
        },
    }


def backend_config(stack: StackSpec) -> dict:
    config = {"bucket": stack.state.bucket, "prefix": stack.state.prefix or f"mlinfra/{stack.name}"}
    if stack.state.endpoint:
        config["storage_custom_endpoint"] = stack.state.endpoint.rstrip("/") + "/storage/v1/"
    return config


def previous_ports(workdir: Path) -> dict[str, int]:
    try:
        data = json.loads((workdir / TFVARS).read_text())
        return {key: int(node["port"]) for key, node in data.get("nodes", {}).items()}
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _assign_ports(stack: StackSpec, workdir: Path) -> dict[str, int]:
    """Keep each node's port across renders; give new nodes a free one.

    A kept port stays as long as it is free or this node holds it (its pid record exists);
    a port some other program took meanwhile is replaced.
    """
    previous = previous_ports(workdir)
    assigned: dict[str, int] = {}
    for node in nodes(stack):
        port = previous.get(node.key)
        if port and (_node_running(workdir, node.key) or not port_in_use(port)):
            assigned[node.key] = port
    lo, hi = PORT_RANGE
    for node in nodes(stack):
        if node.key in assigned:
            continue
        # Start from a hash of stack and node so parallel stacks rarely probe the same ports.
        candidate = lo + zlib.crc32(f"{stack.name}/{node.key}".encode()) % (hi - lo)
        for _ in range(hi - lo):
            if candidate not in assigned.values() and not port_in_use(candidate):
                break
            candidate = lo if candidate >= hi else candidate + 1
        else:
            raise MlinfraError(f"no free port in {lo}–{hi} for node {node.key}")
        assigned[node.key] = candidate
    return assigned


def _node_running(workdir: Path, key: str) -> bool:
    return (workdir / "nodes" / f"{key}.json").exists()


def port_in_use(port: int) -> bool:
    """True when something listens on the port, or it cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
