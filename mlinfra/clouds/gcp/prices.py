"""Prices (reference §6): one VM's price from the catalog's rows, the `mlinfra gpus` table, and
a stack's estimated cost. Every figure carries its source and date; an unknown price is None
with the reason, never 0."""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlinfra.clouds.gcp.catalog import (
    Gpu,
    MachineType,
    counts_for,
    data,
    default_machine_type,
    gpus,
    lookup_gpu,
    machine_type,
    machine_types_for,
    n1_limit,
    zones_for,
)

# -- prices (reference §6): one VM's price from the data file's rows ------------------------------


@dataclass(frozen=True)
class Price:
    """One VM's price per hour, or None with the reasons it is unknown."""

    usd_per_hour: float | None
    missing: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()


def vm_price(machine: MachineType, gpu: Gpu | None, count: int, region: str, spot: bool) -> Price:
    """Host plus GPUs for one VM in ``region``: from whole-VM, host and per-GPU rows of the data file."""
    model = "spot" if spot else "on_demand"
    table = data().get("prices", {}).get(region)
    if table is None:
        return Price(None, (f"no price data for {region} (the catalog has us-central1 prices)",))
    whole = table.get("vm", {}).get(machine.name, {})
    if model in whole:
        return Price(float(whole[model]), (), (_cite(whole),))
    host = _host_price(table, machine, model)
    parts, missing, sources = [], [], []
    if host is None:
        missing.append(f"{model.replace('_', '-')} price of the {machine.name} host in {region}")
    else:
        parts.append(host[0])
        sources.append(host[1])
    if gpu is not None and count:
        row = table.get("gpu", {}).get(gpu.name, {})
        if model in row:
            parts.append(count * float(row[model]))
            sources.append(_cite(row))
        else:
            missing.append(f"{model.replace('_', '-')} price of {gpu.name} in {region}")
    if missing:
        return Price(None, tuple(missing), tuple(dict.fromkeys(sources)))
    return Price(round(sum(parts), 5), (), tuple(dict.fromkeys(sources)))


def gpu_price(gpu: Gpu, region: str, spot: bool) -> Price:
    """One GPU's own price per hour in ``region``, without its host: the number users compare
    across clouds. Unknown where the catalog has no per-GPU row (some bundled GPUs are priced
    only as whole VMs)."""
    model = "spot" if spot else "on_demand"
    row = data().get("prices", {}).get(region, {}).get("gpu", {}).get(gpu.name, {})
    if model not in row:
        return Price(None, (f"{model.replace('_', '-')} price of {gpu.name} alone in {region}",))
    return Price(float(row[model]), (), (_cite(row),))


def _host_price(table: dict, machine: MachineType, model: str) -> tuple[float, str] | None:
    row = table.get("host", {}).get(machine.name, {})
    if model in row:
        return float(row[model]), _cite(row)
    rates = table.get("rates", {}).get(machine.family)
    if rates and machine.vcpus is not None and machine.memory_gb is not None:
        value = machine.vcpus * rates[f"{model}_vcpu"] + machine.memory_gb * rates[f"{model}_gb"]
        return value, _cite(rates)
    return None


def _cite(row: dict) -> str:
    source = data()["sources"].get(row.get("source", ""), {})
    return f"{row.get('source', '?')}: {source.get('title', 'unknown source')} ({row.get('date', source.get('date', 'undated'))})"


# -- what the CLI shows: the GPU table and a stack's cost -----------------------------------------

HOURS_PER_MONTH = 730  # Google's billing convention for a month of use
PRICE_REGION = "us-central1"  # the only region with price rows


@dataclass(frozen=True)
class GpuRow:
    """One line of `mlinfra gpus`: a GPU at one count, on its default machine type."""

    gpu: str
    alias: str
    display: str
    memory_gb: int
    count: int
    machine_type: str  # the default for this count (N1: n1-standard-4)
    machine_types: tuple[str, ...]  # bundled: every type with this count; N1: ("n1-*",)
    host_limit: str  # N1: the vCPU/memory cap for this count; bundled: the shape
    on_demand: bool  # plain on-demand capacity exists
    zones: tuple[str, ...] | None  # in the region asked for; None: not verified
    # One GPU on its own, and the whole VM (the default machine type with ``count`` GPUs); None: unknown.
    gpu_usd_per_hour: float | None
    vm_usd_per_hour: float | None  # None too where the type has no plain on-demand capacity
    spot_gpu_usd_per_hour: float | None
    spot_vm_usd_per_hour: float | None
    price_region: str
    price_sources: tuple[str, ...]
    quota_metric: str | None

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def gpu_rows(region: str | None = None, gpu: str | None = None) -> list[GpuRow]:
    """The catalog as rows: every GPU × allowed count, optionally only those offered in ``region``.

    Prices are for the default machine type in ``region`` (us-central1 when no region is given).
    Raises UnknownGpu for an unknown ``gpu``.
    """
    wanted = [lookup_gpu(gpu)] if gpu else list(gpus().values())
    price_region = region or PRICE_REGION
    rows = []
    for item in wanted:
        for count in counts_for(item):
            default = default_machine_type(item, count)
            zones = zones_for(item, default if not item.attached else None, region)
            if region is not None and zones is not None and not zones:
                continue
            types: tuple[str, ...]
            if item.attached:
                limit = n1_limit(item, count)
                types, host = ("n1-*",), f"up to {limit[0]} vCPUs, {limit[1]:g} GB"
            else:
                types = tuple(m.name for m in machine_types_for(item, count))
                host = f"{default.vcpus or '?'} vCPUs, {default.memory_gb or '?'} GB"
            prices = (
                gpu_price(item, price_region, False),
                vm_price(default, item, count, price_region, False) if default.on_demand else Price(None),
                gpu_price(item, price_region, True),
                vm_price(default, item, count, price_region, True),
            )
            rows.append(
                GpuRow(
                    gpu=item.name,
                    alias=item.short,
                    display=item.display,
                    memory_gb=item.memory_gb,
                    count=count,
                    machine_type=default.name,
                    machine_types=types,
                    host_limit=host,
                    on_demand=default.on_demand,
                    zones=tuple(zones) if zones is not None else None,
                    gpu_usd_per_hour=prices[0].usd_per_hour,
                    vm_usd_per_hour=prices[1].usd_per_hour,
                    spot_gpu_usd_per_hour=prices[2].usd_per_hour,
                    spot_vm_usd_per_hour=prices[3].usd_per_hour,
                    price_region=price_region,
                    price_sources=tuple(dict.fromkeys(s for p in prices for s in p.sources)),
                    quota_metric=item.quota,
                )
            )
    return rows


@dataclass(frozen=True)
class NodeCost:
    node: str
    region: str
    machine_type: str
    gpu: str | None
    gpu_count: int
    on_demand: Price
    spot: Price
    role: str = "node"  # an [autoscale] stack's "head" or GPU "worker"
    in_floor: bool = True  # runs at min_replicas too; False: an [autoscale] worker above the minimum


@dataclass(frozen=True)
class Cost:
    """A stack's estimated price: both models, so a plan can say what Spot would save.

    An [autoscale] stack's totals are its ceiling (heads plus max_replicas workers per region: the
    worst case, which the budget guard judges); ``floor_*`` is heads plus min_replicas workers."""

    spot: bool  # the model the stack uses
    nodes: tuple[NodeCost, ...]
    on_demand_usd_per_hour: float | None  # None: some part is unknown (see ``missing``)
    spot_usd_per_hour: float | None
    missing: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    autoscale: tuple[int, int] | None = None  # (min_replicas, max_replicas) GPU workers per region
    floor_on_demand_usd_per_hour: float | None = None
    floor_spot_usd_per_hour: float | None = None

    @property
    def floor_usd_per_hour(self) -> float | None:
        return self.floor_spot_usd_per_hour if self.spot else self.floor_on_demand_usd_per_hour

    @property
    def floor_usd_per_month(self) -> float | None:
        return _month(self.floor_usd_per_hour)

    @property
    def usd_per_hour(self) -> float | None:
        return self.spot_usd_per_hour if self.spot else self.on_demand_usd_per_hour

    @property
    def usd_per_month(self) -> float | None:
        return _month(self.usd_per_hour)

    @property
    def on_demand_usd_per_month(self) -> float | None:
        return _month(self.on_demand_usd_per_hour)

    @property
    def spot_usd_per_month(self) -> float | None:
        return _month(self.spot_usd_per_hour)

    def as_dict(self) -> dict:
        return {
            "spot": self.spot,
            "usd_per_hour": self.usd_per_hour,
            "usd_per_month": self.usd_per_month,
            "on_demand_usd_per_hour": self.on_demand_usd_per_hour,
            "on_demand_usd_per_month": self.on_demand_usd_per_month,
            "spot_usd_per_hour": self.spot_usd_per_hour,
            "spot_usd_per_month": self.spot_usd_per_month,
            "missing": list(self.missing),
            "sources": list(self.sources),
            "notes": list(self.notes),
            # [autoscale]: the totals above are the ceiling (max_replicas), the floor is min_replicas.
            "autoscale": None
            if self.autoscale is None
            else {
                "min_replicas": self.autoscale[0],
                "max_replicas": self.autoscale[1],
                "floor_usd_per_hour": self.floor_usd_per_hour,
                "floor_usd_per_month": self.floor_usd_per_month,
                "floor_on_demand_usd_per_hour": self.floor_on_demand_usd_per_hour,
                "floor_spot_usd_per_hour": self.floor_spot_usd_per_hour,
            },
            "nodes": [
                {
                    "node": n.node,
                    "region": n.region,
                    "machine_type": n.machine_type,
                    "gpu": n.gpu,
                    "gpu_count": n.gpu_count,
                    "on_demand_usd_per_hour": n.on_demand.usd_per_hour,
                    "spot_usd_per_hour": n.spot.usd_per_hour,
                    "role": n.role,
                    "in_floor": n.in_floor,
                }
                for n in self.nodes
            ],
        }


def _month(per_hour: float | None) -> float | None:
    return None if per_hour is None else round(per_hour * HOURS_PER_MONTH, 2)


def estimate_cost(stack, head_machine: str = "") -> Cost:
    """$/hour and $/month for every node of ``stack`` (a validated GCP StackSpec), Spot and on-demand.

    An [autoscale] stack is priced as what it runs: per region a CPU head (``head_machine``,
    always on-demand) and its GPU workers, min_replicas of them at the floor and max_replicas at
    the ceiling. Covers the VMs (host + GPUs); not the boot disk, network egress, or discounts.
    A price the catalog does not have makes the total None, with the reason in ``missing``.
    """
    gpu = stack.compute.accelerator
    count = stack.compute.gpu_count if gpu else 0
    machine = (
        machine_type(stack.compute.machine_type) if stack.compute.machine_type else default_machine_type(gpu, count)
    )

    def gpu_node(key: str, region: str) -> NodeCost:
        if machine is None:  # a CPU-only type mlinfra has no shape for
            unknown = Price(None, (f"price of {stack.compute.machine_type}",))
            prices = (unknown, unknown)
        else:
            prices = (vm_price(machine, gpu, count, region, False), vm_price(machine, gpu, count, region, True))
        name = machine.name if machine else stack.compute.machine_type
        return NodeCost(key, region, name, gpu.name if gpu else None, count, *prices)

    scaling = stack.autoscale
    nodes = []
    for region in stack.gcp.regions:
        if scaling is None:
            nodes += [gpu_node(f"{region}-{replica}", region) for replica in range(stack.compute.replicas)]
            continue
        nodes.append(_head(region, head_machine))
        nodes += [
            replace(gpu_node(f"{region}-worker-{i}", region), role="worker", in_floor=i < scaling.min_replicas)
            for i in range(scaling.max_replicas)
        ]

    def total(pick, among) -> float | None:
        values = [pick(n).usd_per_hour for n in among]
        return None if any(v is None for v in values) else round(sum(values), 5)

    floor = [n for n in nodes if n.in_floor]
    missing = tuple(dict.fromkeys(m for n in nodes for p in (n.on_demand, n.spot) for m in p.missing))
    sources = tuple(dict.fromkeys(s for n in nodes for p in (n.on_demand, n.spot) for s in p.sources))
    notes: tuple[str, ...] = (
        "VM price only: boot disk, egress and discounts are not included",
        "Spot prices change as often as daily",
    )
    if scaling is not None:
        notes += (
            f"[autoscale]: per region a head VM (never Spot) and {scaling.min_replicas} (floor) to "
            f"{scaling.max_replicas} (ceiling) GPU workers; the total is the ceiling, the worst case",
        )
    return Cost(
        stack.compute.spot,
        tuple(nodes),
        total(lambda n: n.on_demand, nodes),
        total(lambda n: n.spot, nodes),
        missing,
        sources,
        notes,
        (scaling.min_replicas, scaling.max_replicas) if scaling is not None else None,
        total(lambda n: n.on_demand, floor) if scaling is not None else None,
        total(lambda n: n.spot, floor) if scaling is not None else None,
    )


def _head(region: str, machine: str) -> NodeCost:
    """An [autoscale] region's head: a CPU VM with standard provisioning, so its "Spot" price is
    its on-demand one. Keyed ``<region>-0`` like the head's node in the stack's outputs."""
    if not machine:
        price = Price(None, ("price of the [autoscale] head's machine type (the target names none)",))
    else:
        price = vm_price(MachineType(name=machine, family=machine.split("-")[0]), None, 0, region, False)
    return NodeCost(f"{region}-0", region, machine or "?", None, 0, price, price, role="head")
