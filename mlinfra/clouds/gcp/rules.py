"""Google Cloud's GPU rules: what it would refuse, and where each node may go.

``resolve`` runs while a stack is built (so before any cloud call) and raises ``SpecError``
for every GPU, machine-type, count, zone and consumption rule of the reference
(``../shared/reference/gcp-gpu-facts.md``). Its answer, ``Resolved``, is computed once per
stack; ``placement`` turns it into each node's machine type and zone, and ``choices`` into
the lines that tell the user what was chosen for them. Shared by every target that puts GPUs
on Google Cloud.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mlinfra.clouds.gcp import catalog
from mlinfra.clouds.gcp.catalog import Gpu, MachineType
from mlinfra.errors import SpecError

# Deep Learning VM images need a boot disk of at least this size (unverified: not in the
# reference; refusing a smaller disk here costs a config edit, not a failed apply).
DLVM_MIN_DISK_GB = 50


@dataclass(frozen=True)
class NodePlace:
    """Where one node goes and what it runs on."""

    key: str  # "<region>-<replica>", the for_each key
    region: str
    replica: int
    zone: str
    machine_type: str


@dataclass(frozen=True)
class Resolved:
    """A stack's GPU, machine type and candidate zones, as Google Cloud allows them."""

    gpu: Gpu | None
    machine: MachineType | None  # None: a CPU-only type mlinfra has no shape for
    machine_name: str
    gpu_count: int
    regions: tuple[str, ...]
    replicas: int
    zones: Mapping[str, tuple[str, ...]]  # region -> candidate zones, in the order they are tried
    listed: Mapping[str, tuple[str, ...]]  # region -> zones the user listed (replicas spread over these)


# -- validation -----------------------------------------------------------------------------------


def resolve(stack) -> Resolved:
    """Refuse what GCP would reject (GPU, machine type, count, zone, Spot rules), as SpecError;
    otherwise the machine type and zones every node may use."""
    compute = stack.compute
    gpu = compute.accelerator
    machine = _machine(compute, gpu)
    name = machine.name if machine else compute.machine_type
    if gpu is not None and machine is not None and not machine.on_demand and not compute.spot:
        alternatives = [m.name for m in catalog.machine_types_for(gpu) if m.on_demand]
        other = f", or use an on-demand machine type: {', '.join(alternatives)}" if alternatives else ""
        raise SpecError(
            "compute.spot",
            f"{name} ({machine.gpus}× {gpu.name}) has no on-demand capacity on Google Cloud "
            f"(Spot, Flex-start or reservations only): set compute.spot = true{other}",
        )
    if stack.gcp.spot_termination != "STOP" and not compute.spot:
        raise SpecError(
            "gcp.spot_termination",
            f"{stack.gcp.spot_termination!r} applies only to Spot VMs: set compute.spot = true or remove it",
        )
    if gpu is not None and not stack.gcp.image and compute.disk_gb < DLVM_MIN_DISK_GB:
        raise SpecError(
            "compute.disk_gb",
            f"{compute.disk_gb} GB is smaller than the Deep Learning VM image: use at least {DLVM_MIN_DISK_GB}",
        )
    if not stack.serve.public and not stack.serve.allow_cidrs:
        raise SpecError(
            "serve.allow_cidrs",
            "is empty, so nobody could reach the port: list who may (CIDR ranges), or set serve.public = true",
        )
    zones, listed = _zones(stack, gpu, machine)
    return Resolved(
        gpu,
        machine,
        name,
        compute.gpu_count if gpu else 0,
        tuple(stack.gcp.regions),
        compute.replicas,
        {r: tuple(z) for r, z in zones.items()},
        {r: tuple(z) for r, z in listed.items()},
    )


def _machine(compute, gpu: Gpu | None) -> MachineType | None:
    """The machine type: the one asked for, checked against the GPU, or the smallest valid one."""
    name = compute.machine_type
    if name and catalog.fractional_reason(name):
        raise SpecError("compute.machine_type", f"{name!r} is {catalog.fractional_reason(name)}")
    bundled = catalog.bundled_machine_types().get(name) if name else None
    if gpu is None:
        if bundled:
            short = catalog.gpus()[bundled.gpu].short
            raise SpecError(
                "compute.machine_type",
                f"{name} comes with {bundled.gpus}× {bundled.gpu}, but compute.gpu is 'none': "
                f"set compute.gpu = {short!r} (and gpu_count = {bundled.gpus})",
            )
        return catalog.machine_type(name) if name else catalog.default_machine_type(None, 0)
    counts = catalog.counts_for(gpu)
    if gpu.attached:
        return _n1_host(compute, gpu, counts, bundled)
    if name:
        if bundled is None or bundled.gpu != gpu.name:
            valid = ", ".join(m.name for m in catalog.machine_types_for(gpu))
            what = f"comes with {bundled.gpu}, not {gpu.name}" if bundled else f"cannot carry {gpu.name}"
            raise SpecError(
                "compute.machine_type", f"{name!r} {what}; {gpu.name} comes with its own machine types: {valid}"
            )
        if bundled.gpus != compute.gpu_count:
            same = [m.name for m in catalog.machine_types_for(gpu, compute.gpu_count)]
            other = f", or use {' / '.join(same)} for {compute.gpu_count}" if same else ""
            raise SpecError(
                "compute.gpu_count",
                f"{name} comes with {bundled.gpus}× {gpu.name}, not {compute.gpu_count}: "
                f"set gpu_count = {bundled.gpus}{other}",
            )
        return bundled
    if compute.gpu_count not in counts:
        offered = ", ".join(f"{m.gpus} ({m.name})" for m in _first_per_count(gpu))
        raise SpecError(
            "compute.gpu_count", f"{compute.gpu_count}× {gpu.name} is not offered: machine types carry {offered}"
        )
    return catalog.default_machine_type(gpu, compute.gpu_count)


def _n1_host(compute, gpu: Gpu, counts: list[int], bundled: MachineType | None) -> MachineType:
    name = compute.machine_type
    if compute.gpu_count not in counts:
        raise SpecError("compute.gpu_count", f"{compute.gpu_count}× {gpu.name} is not allowed: use {_or(counts)}")
    if not name:
        return catalog.default_machine_type(gpu, compute.gpu_count)
    if catalog.is_shared_core(name):
        raise SpecError(
            "compute.machine_type",
            f"{name!r} is a shared-core type, which cannot take GPUs: use an N1 type such as n1-standard-4",
        )
    if bundled is not None:
        raise SpecError(
            "compute.machine_type",
            f"{name!r} comes with its own {bundled.gpu}; {gpu.name} attaches only to "
            "N1 machine types (n1-standard-*, n1-highmem-*, n1-highcpu-*)",
        )
    shape = catalog.n1_shape(name)
    if shape is None:
        if name.startswith("n1-"):
            raise SpecError(
                "compute.machine_type",
                f"{name!r} is not an N1 machine type" + catalog.did_you_mean(name, catalog.n1_predefined_names()),
            )
        raise SpecError(
            "compute.machine_type",
            f"{name!r} cannot take {gpu.name}: attached GPUs need an N1 machine type "
            "(n1-standard-*, n1-highmem-*, n1-highcpu-*), such as n1-standard-4",
        )
    max_vcpus, max_gb = catalog.n1_limit(gpu, compute.gpu_count)
    if shape.vcpus > max_vcpus or shape.memory_gb > max_gb:
        fitting = [
            n
            for n in catalog.n1_predefined_names()
            if n.startswith("n1-standard-")
            and catalog.n1_shape(n).vcpus <= max_vcpus
            and catalog.n1_shape(n).memory_gb <= max_gb
        ]
        raise SpecError(
            "compute.machine_type",
            f"{name} has {shape.vcpus} vCPUs and {shape.memory_gb:g} GB; {compute.gpu_count}× "
            f"{gpu.short} allows at most {max_vcpus} vCPUs and {max_gb:g} GB: use {fitting[-1]} or smaller",
        )
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
                    raise SpecError(
                        f"gcp.zones[{index}]",
                        f"{zone} does not offer {what}; zones in {region} that do: {', '.join(offered)}",
                    )
        elif gpu is not None and not mine:
            # Zones not verified (RTX PRO 6000): only the user can say where it is offered.
            raise SpecError(
                "gcp.zones",
                f"mlinfra's catalog has no verified zones for {gpu.name}: list the zones to use in "
                f"{region} (see `gcloud compute accelerator-types list --filter=name={gpu.name}`)",
            )
        elif gpu is None and not mine:
            # CPU-only: the zones the catalog knows in the region exist; the first is as good as any.
            offered = sorted(
                {z for g in catalog.gpus().values() for z in (g.zones or ()) if catalog.region_of(z) == region}
            )
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


def candidate_zones(resolved: Resolved, region: str) -> list[str]:
    """The zones a node in ``region`` may use, in the order zone fallback tries them."""
    return list(resolved.zones.get(region, ()))


def placement(resolved: Resolved, moved: Mapping[str, str] | None = None) -> list[NodePlace]:
    """Every node's zone and machine type. Replicas spread over the zones the user listed;
    without a list, all go to the first zone that offers the GPU. Zone moves (``moved``: node
    key → zone, recorded by stockout fallback) win while the zone is still a candidate."""
    moved = moved or {}
    nodes = []
    for region in resolved.regions:
        spread = resolved.listed[region] or resolved.zones[region][:1]
        for replica in range(resolved.replicas):
            key = f"{region}-{replica}"
            zone = moved.get(key) if moved.get(key) in resolved.zones[region] else spread[replica % len(spread)]
            nodes.append(NodePlace(key, region, replica, zone, resolved.machine_name))
    return nodes


def choices(stack, resolved: Resolved) -> list[str]:
    """What mlinfra chose where the stack left it open, one line each, for the CLI to show."""
    lines = []
    gpu, machine = resolved.gpu, resolved.machine
    if not stack.compute.machine_type:
        if gpu is None:
            why = "the smallest n1-standard with 4 vCPUs"
        elif gpu.attached:
            why = (
                f"the smallest n1-standard with 4 vCPUs; {stack.compute.gpu_count}× {gpu.short} allows up to "
                f"{catalog.n1_limit(gpu, stack.compute.gpu_count)[0]} vCPUs"
            )
        else:
            why = f"the smallest type with {stack.compute.gpu_count}× {gpu.short}"
        lines.append(f"compute.machine_type: chose {machine.name} ({why})")
    for region in stack.gcp.regions:
        if not resolved.listed[region]:
            offered = (
                f"offers {gpu.short}" + (f" on {machine.name}" if machine and machine.bundled else "")
                if gpu
                else "is known"
            )
            lines.append(f"gcp.zones: chose {resolved.zones[region][0]} for {region} (the first zone that {offered})")
    if gpu is not None and not stack.gcp.image:
        lines.append(f"gcp.image: chose {catalog.default_image(gpu)} (driver new enough for {gpu.short})")
    return lines
