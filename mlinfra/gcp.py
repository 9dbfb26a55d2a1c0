"""The GCP target: what Google Cloud would refuse, where each node goes, and the values for templates/gcp/.

``validate`` runs while a stack is built (so before any cloud call) and raises ``SpecError``
for every GPU, machine-type, count, zone and consumption rule of the reference
(``../shared/reference/gcp-gpu-facts.md``). ``placement`` decides each node's machine type
and zone, ``tfvars`` turns that into ``terraform.tfvars.json`` (the only way user values
reach Terraform), and the rest are one-line explanations for the CLI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mlinfra import catalog
from mlinfra.catalog import Gpu, MachineType
from mlinfra.errors import MlinfraError, SpecError

SSH_USER = "mlinfra"
SSH_KEY = "ssh_ed25519"  # in the work dir, beside the rendered module; the .pub sits next to it
ZONE_MOVES = "zone-moves.json"  # zone fallback's record: which node moved where, and why
# Deep Learning VM images need a boot disk of at least this size (unverified: not in the
# reference; refusing a smaller disk here costs a config edit, not a failed apply).
DLVM_MIN_DISK_GB = 50


@dataclass(frozen=True)
class Node:
    """Where one node goes and what it runs on."""

    key: str  # "<region>-<replica>", the for_each key
    region: str
    replica: int
    zone: str
    machine_type: str


@dataclass(frozen=True)
class _Resolved:
    gpu: Gpu | None
    machine: MachineType | None  # None: a CPU-only type mlinfra has no shape for
    machine_name: str
    zones: dict[str, list[str]]  # region -> candidate zones, in the order they are tried
    listed: dict[str, list[str]]  # region -> zones the user listed (replicas spread over these)


# -- validation -----------------------------------------------------------------------------------

def validate(stack) -> None:
    """Refuse what GCP would reject (GPU, machine type, count, zone, Spot rules), as SpecError."""
    _resolve(stack)


def _resolve(stack) -> _Resolved:
    compute = stack.compute
    gpu = compute.accelerator
    machine = _machine(compute, gpu)
    name = machine.name if machine else compute.machine_type
    if gpu is not None and machine is not None and not machine.on_demand and not compute.spot:
        alternatives = [m.name for m in catalog.machine_types_for(gpu) if m.on_demand]
        other = f", or use an on-demand machine type: {', '.join(alternatives)}" if alternatives else ""
        raise SpecError("compute.spot", f"{name} ({machine.gpus}× {gpu.name}) has no on-demand capacity on Google Cloud "
                        f"(Spot, Flex-start or reservations only): set compute.spot = true{other}")
    if stack.gcp.spot_termination != "STOP" and not compute.spot:
        raise SpecError("gcp.spot_termination", f"{stack.gcp.spot_termination!r} applies only to Spot VMs: set compute.spot = true or remove it")
    if gpu is not None and not stack.gcp.image and compute.disk_gb < DLVM_MIN_DISK_GB:
        raise SpecError("compute.disk_gb", f"{compute.disk_gb} GB is smaller than the Deep Learning VM image: use at least {DLVM_MIN_DISK_GB}")
    if not stack.serve.public and not stack.serve.allow_cidrs:
        raise SpecError("serve.allow_cidrs", "is empty, so nobody could reach the port: list who may (CIDR ranges), or set serve.public = true")
    zones, listed = _zones(stack, gpu, machine)
    return _Resolved(gpu, machine, name, zones, listed)


def _machine(compute, gpu: Gpu | None) -> MachineType | None:
    """The machine type: the one asked for, checked against the GPU, or the smallest valid one."""
    name = compute.machine_type
    if name and catalog.fractional_reason(name):
        raise SpecError("compute.machine_type", f"{name!r} is {catalog.fractional_reason(name)}")
    bundled = catalog.bundled_machine_types().get(name) if name else None
    if gpu is None:
        if bundled:
            short = catalog.gpus()[bundled.gpu].short
            raise SpecError("compute.machine_type", f"{name} comes with {bundled.gpus}× {bundled.gpu}, but compute.gpu is 'none': "
                            f"set compute.gpu = {short!r} (and gpu_count = {bundled.gpus})")
        return catalog.machine_type(name) if name else catalog.default_machine_type(None, 0)
    counts = catalog.counts_for(gpu)
    if gpu.attached:
        return _n1_host(compute, gpu, counts, bundled)
    if name:
        if bundled is None or bundled.gpu != gpu.name:
            valid = ", ".join(m.name for m in catalog.machine_types_for(gpu))
            what = f"comes with {bundled.gpu}, not {gpu.name}" if bundled else f"cannot carry {gpu.name}"
            raise SpecError("compute.machine_type", f"{name!r} {what}; {gpu.name} comes with its own machine types: {valid}")
        if bundled.gpus != compute.gpu_count:
            same = [m.name for m in catalog.machine_types_for(gpu, compute.gpu_count)]
            other = f", or use {' / '.join(same)} for {compute.gpu_count}" if same else ""
            raise SpecError("compute.gpu_count", f"{name} comes with {bundled.gpus}× {gpu.name}, not {compute.gpu_count}: "
                            f"set gpu_count = {bundled.gpus}{other}")
        return bundled
    if compute.gpu_count not in counts:
        offered = ", ".join(f"{m.gpus} ({m.name})" for m in _first_per_count(gpu))
        raise SpecError("compute.gpu_count", f"{compute.gpu_count}× {gpu.name} is not offered: machine types carry {offered}")
    return catalog.default_machine_type(gpu, compute.gpu_count)


def _n1_host(compute, gpu: Gpu, counts: list[int], bundled: MachineType | None) -> MachineType:
    name = compute.machine_type
    if compute.gpu_count not in counts:
        raise SpecError("compute.gpu_count", f"{compute.gpu_count}× {gpu.name} is not allowed: use {_or(counts)}")
    if not name:
        return catalog.default_machine_type(gpu, compute.gpu_count)
    if catalog.is_shared_core(name):
        raise SpecError("compute.machine_type", f"{name!r} is a shared-core type, which cannot take GPUs: use an N1 type such as n1-standard-4")
    if bundled is not None:
        raise SpecError("compute.machine_type", f"{name!r} comes with its own {bundled.gpu}; {gpu.name} attaches only to "
                        "N1 machine types (n1-standard-*, n1-highmem-*, n1-highcpu-*)")
    shape = catalog.n1_shape(name)
    if shape is None:
        if name.startswith("n1-"):
            raise SpecError("compute.machine_type", f"{name!r} is not an N1 machine type" + catalog.did_you_mean(name, catalog.n1_predefined_names()))
        raise SpecError("compute.machine_type", f"{name!r} cannot take {gpu.name}: attached GPUs need an N1 machine type "
                        "(n1-standard-*, n1-highmem-*, n1-highcpu-*), such as n1-standard-4")
    max_vcpus, max_gb = catalog.n1_limit(gpu, compute.gpu_count)
    if shape.vcpus > max_vcpus or shape.memory_gb > max_gb:
        fitting = [n for n in catalog.n1_predefined_names() if n.startswith("n1-standard-")
                   and catalog.n1_shape(n).vcpus <= max_vcpus and catalog.n1_shape(n).memory_gb <= max_gb]
        raise SpecError("compute.machine_type", f"{name} has {shape.vcpus} vCPUs and {shape.memory_gb:g} GB; {compute.gpu_count}× "
                        f"{gpu.short} allows at most {max_vcpus} vCPUs and {max_gb:g} GB: use {fitting[-1]} or smaller")
    return shape


def _first_per_count(gpu: Gpu) -> list[MachineType]:
    seen: dict[int, MachineType] = {}
    for machine in catalog.machine_types_for(gpu):
        seen.setdefault(machine.gpus, machine)
    return list(seen.values())


def _zones(stack, gpu: Gpu | None, machine: MachineType | None) -> tuple[dict, dict]:
    """Per region: the zones that offer the GPU and machine type, user-listed ones first."""
    listed_all = stack.gcp.zones
    bundled = machine if machine is not None and machine.bundled else None
    what = f"{bundled.name} ({gpu.name})" if bundled else (gpu.name if gpu else "")
    zones, listed = {}, {}
    for i, region in enumerate(stack.gcp.regions):
        mine = [z for z in listed_all if catalog.region_of(z) == region]
        offered = catalog.zones_for(gpu, bundled, region)
        if gpu is not None and offered is not None:
            offered = [z for z in offered if _fits_zone(stack.compute, gpu, machine, z)]
            if not offered:
                where = ", ".join(catalog.regions_for(gpu, bundled) or [])
                raise SpecError(f"gcp.regions[{i}]", f"{region} has no zone offering {what}; regions that do: {where}")
            for zone in mine:
                if zone not in offered:
                    index = listed_all.index(zone)
                    raise SpecError(f"gcp.zones[{index}]", f"{zone} does not offer {what}; zones in {region} that do: {', '.join(offered)}")
        elif gpu is not None and not mine:
            # Zones not verified (RTX PRO 6000): only the user can say where it is offered.
            raise SpecError("gcp.zones", f"mlinfra's catalog has no verified zones for {gpu.name}: list the zones to use in "
                            f"{region} (see `gcloud compute accelerator-types list --filter=name={gpu.name}`)")
        elif gpu is None and not mine:
            # CPU-only: the zones the catalog knows in the region exist; the first is as good as any.
            offered = sorted({z for g in catalog.gpus().values() for z in (g.zones or ()) if catalog.region_of(z) == region})
        zones[region] = mine or list(offered)
        listed[region] = mine
    return zones, listed


def _fits_zone(compute, gpu: Gpu, machine: MachineType | None, zone: str) -> bool:
    """4× P100 allows a smaller N1 host in three zones (reference §2.1)."""
    if not gpu.attached or machine is None or machine.vcpus is None:
        return True
    limit = catalog.n1_limit(gpu, compute.gpu_count, zone)
    return limit is not None and machine.vcpus <= limit[0] and machine.memory_gb <= limit[1]


def _or(values: list) -> str:
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


# -- placement ------------------------------------------------------------------------------------

def candidate_zones(stack, region: str) -> list[str]:
    """The zones a node of ``stack`` in ``region`` may use, in the order zone fallback tries them."""
    return _resolve(stack).zones.get(region, [])


def placement(stack, workdir: Path | None = None) -> list[Node]:
    """Every node's zone and machine type. Replicas spread over the zones the user listed;
    without a list, all go to the first zone that offers the GPU. Zone moves recorded in
    ``workdir`` by stockout fallback win while the zone is still a candidate."""
    resolved = _resolve(stack)
    moved = zone_overrides(workdir) if workdir else {}
    nodes = []
    for region in stack.gcp.regions:
        spread = resolved.listed[region] or resolved.zones[region][:1]
        for replica in range(stack.compute.replicas):
            key = f"{region}-{replica}"
            zone = moved.get(key) if moved.get(key) in resolved.zones[region] else spread[replica % len(spread)]
            nodes.append(Node(key, region, replica, zone, resolved.machine_name))
    return nodes


def choices(stack) -> list[str]:
    """What mlinfra chose where the stack left it open, one line each, for the CLI to show."""
    resolved = _resolve(stack)
    lines = []
    gpu, machine = resolved.gpu, resolved.machine
    if not stack.compute.machine_type:
        if gpu is None:
            why = "the smallest n1-standard with 4 vCPUs"
        elif gpu.attached:
            why = f"the smallest n1-standard with 4 vCPUs; {stack.compute.gpu_count}× {gpu.short} allows up to " \
                  f"{catalog.n1_limit(gpu, stack.compute.gpu_count)[0]} vCPUs"
        else:
            why = f"the smallest type with {stack.compute.gpu_count}× {gpu.short}"
        lines.append(f"compute.machine_type: chose {machine.name} ({why})")
    for region in stack.gcp.regions:
        if not resolved.listed[region]:
            offered = f"offers {gpu.short}" + (f" on {machine.name}" if machine and machine.bundled else "") if gpu else "is known"
            lines.append(f"gcp.zones: chose {resolved.zones[region][0]} for {region} (the first zone that {offered})")
    if gpu is not None and not stack.gcp.image:
        lines.append(f"gcp.image: chose {catalog.default_image(gpu)} (driver new enough for {gpu.short})")
    return lines


def public_warning(stack) -> str | None:
    """The warning `plan` and `up` print when a stack opens a port to the whole internet."""
    if stack.target != "gcp":
        return None
    open_ssh = [c for c in stack.serve.ssh_cidrs if c.endswith("/0")]
    parts = []
    if stack.serve.public:
        parts.append(f"port {stack.serve.port} on every node is open to the whole internet (0.0.0.0/0)")
    if open_ssh:
        parts.append(f"SSH is open to {', '.join(open_ssh)}")
    return "serve.public = true: " + "; ".join(parts) if parts else None


# -- values for templates/gcp/ --------------------------------------------------------------------

def tfvars(stack, workdir: Path) -> dict:
    """Every value templates/gcp/ needs: the only way user values reach Terraform."""
    resolved = _resolve(stack)
    gpu, machine = resolved.gpu, resolved.machine
    count = stack.compute.gpu_count if gpu else 0
    private_key, public_key = ssh_key(workdir, stack.name)
    image = _image(stack.gcp.image, gpu)
    disk_type = machine.disk if machine else "pd-balanced"
    nodes = {}
    for node in placement(stack, workdir):
        nodes[node.key] = {
            "region": node.region, "replica": node.replica, "zone": node.zone, "machine_type": node.machine_type,
            "attached_gpus": [{"type": gpu.name, "count": count}] if gpu and gpu.attached else [],
            "gpus": count, "has_gpu": count > 0, "spot": stack.compute.spot, "spot_termination": stack.gcp.spot_termination,
            "image": image, "disk_gb": stack.compute.disk_gb, "disk_type": disk_type,
            "node_config": {"stack": stack.name, "node": node.key, "command": stack.serve.command,
                            "env": dict(stack.serve.env), "port": stack.serve.port,
                            "health_path": stack.serve.health_path, "gpus": count},
        }
    uses_reference_server = stack.serve.command.split()[:1] == ["mlinfra"]
    return {
        "project": stack.gcp.project, "stack": stack.name, "network": stack.gcp.network,
        "port": stack.serve.port, "health_path": stack.serve.health_path,
        "serve_cidrs": ["0.0.0.0/0"] if stack.serve.public else list(stack.serve.allow_cidrs),
        "ssh_cidrs": list(stack.serve.ssh_cidrs), "ssh_user": SSH_USER, "ssh_public_key": public_key,
        "ssh_private_key_file": str(private_key), "service_account": stack.gcp.service_account,
        "reference_server": resources.files("mlinfra").joinpath("serve.py").read_text() if uses_reference_server else "",
        "nodes": nodes,
    }


def _image(image: str, gpu: Gpu | None) -> str:
    """gcp.image: a full path (".../images/family/F", "P/F") as is; a bare name is a DLVM family."""
    if not image:
        return catalog.default_image(gpu)
    if "/" in image:
        return image
    return f"projects/deeplearning-platform-release/global/images/family/{image}"


def ssh_key(workdir: Path, stack_name: str) -> tuple[Path, str]:
    """The stack's ed25519 key pair in ``workdir`` (made once, mode 0600); returns (private path, public key).

    ssh-keygen makes it: the OpenSSH client is needed anyway to reach the nodes, and Python's
    standard library has no ed25519. The private key is never read or printed here.
    """
    workdir = Path(workdir).resolve()
    private = workdir / SSH_KEY
    public = private.with_name(SSH_KEY + ".pub")
    if not (private.is_file() and public.is_file()):
        keygen = shutil.which("ssh-keygen")
        if keygen is None:
            raise MlinfraError("ssh-keygen not found: install the OpenSSH client (it is also what reaches the nodes)")
        workdir.mkdir(parents=True, exist_ok=True)
        private.unlink(missing_ok=True)
        public.unlink(missing_ok=True)
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"mlinfra-{stack_name}", "-f", str(private)],
                       check=True, stdin=subprocess.DEVNULL, capture_output=True)
    private.chmod(0o600)
    return private, public.read_text().strip()


# -- zone fallback's record -----------------------------------------------------------------------

def zone_moves(workdir: Path) -> list[dict]:
    """Recorded moves, oldest first: {"node", "from", "to", "reason", "at"}."""
    try:
        return list(json.loads((Path(workdir) / ZONE_MOVES).read_text()).get("moves", []))
    except (FileNotFoundError, ValueError, AttributeError):
        return []


def zone_overrides(workdir: Path) -> dict[str, str]:
    """The zone each moved node now uses (its latest move)."""
    return {move["node"]: move["to"] for move in zone_moves(workdir) if "node" in move and "to" in move}


def record_zone_move(workdir: Path, node: str, from_zone: str, to_zone: str, reason: str) -> dict:
    """Remember that ``node`` moved (the next render places it in ``to_zone``); returns the record."""
    move = {"node": node, "from": from_zone, "to": to_zone, "reason": reason,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = Path(workdir) / ZONE_MOVES
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"moves": zone_moves(workdir) + [move]}, indent=2) + "\n")
    return move


# -- Terraform's own failures, explained ----------------------------------------------------------

# Summaries Terraform's `init` gives when it cannot get a provider (recorded with the bundled
# Terraform 1.15 offline: tests/data/gcp/init-*.json).
_PROVIDER_INSTALL_FAILURES = ("Failed to query available provider packages", "Failed to install provider",
                              "Failed to install provider from shared cache", "Invalid provider registry host")


def explain_init_failure(diagnostics) -> str | None:
    """One line for `plan`/`up` when the google provider cannot be installed, else None.

    ``diagnostics``: tfevents.Diagnostic objects, Terraform's JSON diagnostic dicts, or strings.
    """
    for diag in diagnostics or ():
        if isinstance(diag, dict):
            summary, detail = diag.get("summary", ""), diag.get("detail", "")
        elif isinstance(diag, str):
            summary, detail = diag, diag
        else:
            summary, detail = getattr(diag, "summary", ""), getattr(diag, "detail", "")
        if any(summary.startswith(known) for known in _PROVIDER_INSTALL_FAILURES) and "provider" in (summary + detail):
            return ("the hashicorp/google provider could not be installed (no route to the Terraform registry?): "
                    "`mlinfra render` works offline and writes the module; to plan here, configure a provider mirror "
                    "(provider_installation in your Terraform CLI configuration, TF_CLI_CONFIG_FILE)")
    return None
