"""The values for ``templates/gcp/``: the only way user values reach the GCP module, plus the
stack's own SSH key and zone fallback's record, which live in the work dir beside it (the moves
it keeps also go into the state, as ``zone_fallbacks``: what a fresh work dir reads back, adopt.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from mlinfra import workload
from mlinfra.clouds.gcp import catalog, rules
from mlinfra.clouds.gcp.catalog import Gpu
from mlinfra.errors import MlinfraError
from mlinfra.timeutil import utc_now
from mlinfra.workspace import Workspace

SSH_USER = "mlinfra"
STATE_RECORD = "from-state.json"  # what adopt.py read back from the state: its presence means done


def read_back_done(workspace: Workspace) -> bool:
    return (workspace / STATE_RECORD).is_file()


def tfvars(stack, resolved: rules.Resolved, workspace: Workspace) -> dict[str, Any]:
    """Every value templates/gcp/ needs: the only way user values reach Terraform."""
    gpu, machine = resolved.gpu, resolved.machine
    count = resolved.gpu_count
    private_key, public_key = ssh_key(workspace, stack)
    image = image_path(stack.gcp.image, gpu)
    disk_type = machine.disk if machine else "pd-balanced"
    nodes = {}
    placed = rules.placement(resolved, zone_overrides(workspace))
    for node in placed:
        nodes[node.key] = {
            "region": node.region,
            "replica": node.replica,
            "zone": node.zone,
            "machine_type": node.machine_type,
            "attached_gpus": [{"type": gpu.name, "count": count}] if gpu and gpu.attached else [],
            "gpus": count,
            "has_gpu": count > 0,
            "spot": stack.compute.spot,
            "spot_termination": stack.gcp.spot_termination,
            "image": image,
            "disk_gb": stack.compute.disk_gb,
            "disk_type": disk_type,
            # Shielded VM's Secure Boot loads only signed kernel modules, and the Deep Learning VM
            # images' NVIDIA driver is not signed for it: on for CPU-only nodes (templates/gcp/main.tf.j2).
            "secure_boot": count == 0,
            "node_config": {
                "stack": stack.name,
                "node": node.key,
                "command": stack.serve.command,
                "env": dict(stack.serve.env),
                "secrets": dict(stack.serve.secrets),  # references only: the node reads the values
                "port": stack.serve.port,
                "health_path": stack.serve.health_path,
                "gpus": count,
            },
        }
    from mlinfra.targets.gcp import node_checks

    uses_reference_server = not stack.serve.image and stack.serve.command.split()[:1] == ["mlinfra"]
    return {
        "project": stack.gcp.project,
        "stack": stack.name,
        # On every resource; a deployment of an [env.<name>] also says which one (values meet GCP's
        # label rules: the name and environment follow the stricter resource-name rules).
        "labels": {"stack": stack.name, "managed-by": "mlinfra"}
        | ({"environment": stack.environment} if stack.environment else {}),
        "network": stack.gcp.network,
        "port": stack.serve.port,
        "health_path": stack.serve.health_path,
        "serve_cidrs": ["0.0.0.0/0"] if stack.serve.public else list(stack.serve.allow_cidrs),
        "ssh_cidrs": list(stack.serve.ssh_cidrs),
        "ssh_user": SSH_USER,
        "ssh_public_key": public_key,
        "ssh_private_key_file": str(private_key) if public_key else "",
        "service_account": stack.gcp.service_account,
        "public_ip": stack.gcp.public_ip,
        "disk_kms_key": stack.gcp.disk_kms_key or None,  # null: Google-managed encryption
        # The reference server is two files (HTTP and model); the node puts them side by side.
        "reference_server": resources.files("mlinfra").joinpath("serve.py").read_text()
        if uses_reference_server
        else "",
        "reference_model": resources.files("mlinfra").joinpath("demand.py").read_text()
        if uses_reference_server
        else "",
        # Its OpenAI-compatible endpoints and their language model (issue 11), beside demand.py.
        **{
            variable: resources.files("mlinfra").joinpath(name).read_text() if uses_reference_server else ""
            for variable, name in REFERENCE_TEXTGEN.items()
        },
        "nodes": nodes,
        "zone_fallbacks": zone_fallbacks(workspace, placed),  # in the state (zone_fallback.tf): adopt.py
        "node_config_extra": node_config_extra(stack),
        "node_check": node_checks.settings(stack),  # what each node checks on itself (guest_report.py)
    }


def node_config_extra(stack) -> dict[str, Any]:
    """Fields added to node_config after it first shipped, each only when the stack uses it.

    node_config is what replaces a VM when it changes (templates/gcp/node_config.tf.j2): a field
    rendered empty for every stack would replace every VM on the first `up` after an upgrade.
    """
    extra: dict[str, Any] = {}
    values = workload.node_values(stack)  # image, setup, model (templates/node/workload.py)
    if any(values.values()):
        extra["workload"] = values
    return extra


def node_config(values: dict[str, Any], key: str) -> dict[str, Any]:
    """What node ``key`` of rendered ``values`` (tfvars) was asked to run: its node_config with the extra fields."""
    node = (values.get("nodes") or {}).get(key) or {}
    return (node.get("node_config") or {}) | (values.get("node_config_extra") or {})


# terraform variable -> file of the package. Each is one metadata value on the node, which holds
# 256 KiB at most (all of an instance's keys and values together: 512 KB; Compute Engine API,
# Metadata.items[].value): textgen.json is about 94 KB.
REFERENCE_TEXTGEN = {
    "reference_completions": "completions.py",
    "reference_textgen": "textgen.py",
    "reference_textgen_data": "textgen.json",
}


def image_path(image: str, gpu: Gpu | None) -> str:
    """gcp.image: a full path (".../images/family/F", "P/F") as is; a bare name is a DLVM family."""
    if not image:
        return catalog.default_image(gpu)
    if "/" in image:
        return image
    return f"projects/deeplearning-platform-release/global/images/family/{image}"


def public_key_file(workspace: Workspace) -> Path:
    private = workspace.ssh_key.resolve()
    return private.with_name(private.name + ".pub")


def ssh_key(workspace: Workspace, stack) -> tuple[Path, str]:
    """The stack's ed25519 key pair in the work dir (made once, mode 0600); returns (private path, public key).

    Only a stack that lets SSH in (serve.ssh_cidrs) has one: the gate's checks run on the node
    itself (guest_report.py), so nothing else needs a login, and a key the module does not carry
    cannot change between two checkouts. Public key "": none (no login at all).

    With remote state and a work dir that has not read it yet (a fresh checkout: adopt.py), no key
    is made: the nodes may already carry one, which adopt.py reads back after ``terraform init``.

    ssh-keygen makes it: the OpenSSH client is needed anyway to reach the nodes, and Python's
    standard library has no ed25519. The private key is never read or printed here.
    """
    private = workspace.ssh_key.resolve()
    public = public_key_file(workspace)
    if not stack.serve.ssh_cidrs:
        return private, ""
    if public.is_file():  # made here, or read back from state (then the private key is elsewhere)
        if private.is_file():
            private.chmod(0o600)
        return private, public.read_text().strip()
    if stack.state.backend != "local" and not read_back_done(workspace):
        return private, ""  # rendered again once adopt.py has looked at the state
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise MlinfraError("ssh-keygen not found: install the OpenSSH client (it is also what reaches the nodes)")
    private.parent.mkdir(parents=True, exist_ok=True)
    private.unlink(missing_ok=True)
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"mlinfra-{stack.name}", "-f", str(private)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    private.chmod(0o600)
    return private, public.read_text().strip()


# -- zone fallback's record -----------------------------------------------------------------------


def zone_moves(workspace: Workspace) -> list[dict]:
    """Recorded moves, oldest first: {"node", "from", "to", "reason", "at"}."""
    try:
        return list(json.loads(workspace.zone_moves.read_text()).get("moves", []))
    except (FileNotFoundError, ValueError, AttributeError):
        return []


def latest_moves(workspace: Workspace) -> dict[str, dict]:
    """Each moved node's latest move."""
    return {move["node"]: move for move in zone_moves(workspace) if "node" in move and "to" in move}


def zone_overrides(workspace: Workspace) -> dict[str, str]:
    """The zone each moved node now uses (its latest move)."""
    return {node: move["to"] for node, move in latest_moves(workspace).items()}


def zone_fallbacks(workspace: Workspace, placed: list[rules.NodePlace]) -> dict[str, dict[str, str]]:
    """The module's record of the moves the placement kept (templates/gcp/zone_fallback.tf.j2): by
    node key, {from, to}. A move whose zone is no longer a candidate (gcp.zones changed) is not kept,
    so it is not recorded either; {} for a stack that never moved a node."""
    latest = latest_moves(workspace)
    return {
        node.key: {"from": str(latest[node.key].get("from", "")), "to": node.zone}
        for node in placed
        if node.key in latest and latest[node.key]["to"] == node.zone
    }


def record_zone_move(workspace: Workspace, node: str, from_zone: str, to_zone: str, reason: str) -> dict:
    """Remember that ``node`` moved (the next render places it in ``to_zone``); returns the record."""
    move = {"node": node, "from": from_zone, "to": to_zone, "reason": reason, "at": utc_now()}
    path = workspace.zone_moves
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"moves": zone_moves(workspace) + [move]}, indent=2) + "\n")
    return move
