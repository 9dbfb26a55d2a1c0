"""The GPU catalog: which GPUs Google Cloud offers, on which machine types, in which zones.

The facts live in ``gpus.toml`` with their sources; this module loads and
queries them: GPUs, machine types, zones, images, prices, the `mlinfra gpus` rows and a
stack's estimated cost. Whether a stack is valid is ``gcp``'s call, not this module's.
The data file is read lazily, once, so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mlinfra.errors import UnknownGpu  # noqa: F401 (raised here; re-exported for callers)

# Memory per vCPU is what sets an N1 shape; the GPU caps (reference §2.1) are per vCPU and GB.
# GCP location names, shared by the stack's checks and the error classifier.
REGION_PATTERN = r"[a-z]+-[a-z]+[0-9]+"  # us-central1
# Resource names (RFC 1035): a lowercase letter first, then letters, digits, hyphens.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
ZONE_PATTERN = REGION_PATTERN + r"-[a-z]"  # us-central1-a
_N1_PREDEFINED = re.compile(r"^n1-(standard|highmem|highcpu)-(\d+)$")
# N1 custom types: custom-<vCPUs>-<memory MB>[-ext] (N1 is the default custom family).
_N1_CUSTOM = re.compile(r"^custom-(\d+)-(\d+)(-ext)?$")
_SHARED_CORE = ("f1-micro", "g1-small")


@dataclass(frozen=True)
class Gpu:
    name: str  # the GCP accelerator type, e.g. "nvidia-tesla-t4"
    aliases: tuple[str, ...]
    memory_gb: int
    display: str = ""
    attach: str = "n1"  # "n1": attached with guest_accelerator; "bundled": comes with the machine type
    n1_limits: dict[int, tuple[int, float]] = field(default_factory=dict, compare=False)
    n1_zone_limits: dict[int, tuple[tuple[str, ...], tuple[int, float]]] = field(default_factory=dict, compare=False)
    zones: tuple[str, ...] | None = None  # None: not verified
    quota: str | None = None  # the regional quota metric; Spot uses the PREEMPTIBLE_ twin
    image_family: str = ""

    @property
    def short(self) -> str:
        return self.aliases[0] if self.aliases else self.name

    @property
    def attached(self) -> bool:
        return self.attach == "n1"

    def quota_metric(self, spot: bool) -> str | None:
        return None if self.quota is None else ("PREEMPTIBLE_" + self.quota if spot else self.quota)


@dataclass(frozen=True)
class MachineType:
    name: str
    family: str  # "n1", "g2", "a2", "a3", "a4", "g4", or the prefix of any other series
    gpu: str | None = None  # the bundled accelerator, None for N1 and CPU-only types
    gpus: int = 0
    vcpus: int | None = None
    memory_gb: float | None = None
    on_demand: bool = True  # False: Spot/Flex-start/reservations only (reference §4)
    zones: tuple[str, ...] | None = None  # VM rows, where they narrow the accelerator's zones
    disk: str = "pd-balanced"

    @property
    def bundled(self) -> bool:
        return self.gpu is not None


@functools.cache
def data() -> dict:
    # A plain path, not importlib.resources (~20 ms to import): the wheel installs data/ as files.
    text = (Path(__file__).parent / "gpus.toml").read_text()
    return tomllib.loads(text)


@functools.cache
def gpus() -> dict[str, Gpu]:
    return {name: _gpu(name, row) for name, row in data()["gpus"].items()}


def _gpu(name: str, row: dict) -> Gpu:
    limits = {int(count): (lim[0], float(lim[1])) for count, lim in row.get("n1_limits", {}).items()}
    zone_limits = {
        int(count): (tuple(spec["zones"]), (spec["limit"][0], float(spec["limit"][1])))
        for count, spec in row.get("n1_zone_limits", {}).items()
    }
    zones = row.get("zones")
    return Gpu(
        name=name,
        aliases=tuple(row.get("aliases", ())),
        memory_gb=row["memory_gb"],
        display=row.get("display", name),
        attach=row.get("attach", "n1"),
        n1_limits=limits,
        n1_zone_limits=zone_limits,
        zones=tuple(zones) if zones is not None else None,
        quota=row.get("quota"),
        image_family=row.get("image", ""),
    )


@functools.cache
def bundled_machine_types() -> dict[str, MachineType]:
    """Accelerator-optimized machine types, in catalog order (smallest first per GPU)."""
    rows = data()["machine_types"]
    found = {}
    for name, row in rows.items():
        zones = row.get("zones") or rows.get(row.get("zones_like", ""), {}).get("zones")
        found[name] = MachineType(
            name=name,
            family=name.split("-")[0],
            gpu=row["gpu"],
            gpus=row["gpus"],
            vcpus=row.get("vcpus"),
            memory_gb=row.get("memory_gb"),
            on_demand=row.get("on_demand", True),
            zones=tuple(zones) if zones else None,
            disk=row.get("disk", "pd-balanced"),
        )
    return found


def gcp_regions() -> list[str]:
    return list(data()["regions"]["gcp"])


def refused_reason(name: str) -> str | None:
    return data().get("refused", {}).get(name)


def fractional_reason(machine_type: str) -> str | None:
    return data().get("fractional", {}).get(machine_type)


def lookup_gpu(text: str) -> Gpu:
    """Find a GPU by accelerator name or alias (case-insensitive).

    Raises UnknownGpu with a user-facing message (refusal reason or suggestion).
    """
    key = text.strip().lower()
    for gpu in gpus().values():
        if key == gpu.name or key in gpu.aliases:
            return gpu
    refused = refused_reason(key)
    if refused:
        raise UnknownGpu(f"GPU {text!r} is not allowed: {refused}")
    names = [alias for gpu in gpus().values() for alias in gpu.aliases] + list(gpus())
    raise UnknownGpu(f"unknown GPU {text!r}" + did_you_mean(key, names))


def did_you_mean(word: str, choices: list[str]) -> str:
    """' — did you mean 'x'?' when a close match exists, else ''."""
    import difflib  # only for a mistake: every stack load reaches this module

    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" — did you mean {match[0]!r}?" if match else ""


# -- machine types --------------------------------------------------------------------------------


def machine_type(name: str) -> MachineType | None:
    """What mlinfra knows of a machine type: bundled GPU types and N1 shapes; None otherwise."""
    return bundled_machine_types().get(name) or n1_shape(name)


def n1_shape(name: str) -> MachineType | None:
    """An N1 predefined or custom type with its vCPUs and memory, or None if it is not one."""
    predefined = _N1_PREDEFINED.match(name)
    if predefined:
        kind, vcpus = predefined.group(1), int(predefined.group(2))
        shape = data()["n1"][kind]
        if vcpus not in shape["sizes"]:
            return None
        return MachineType(name=name, family="n1", vcpus=vcpus, memory_gb=vcpus * shape["memory_per_vcpu"])
    custom = _N1_CUSTOM.match(name)
    if custom:
        return MachineType(name=name, family="n1", vcpus=int(custom.group(1)), memory_gb=int(custom.group(2)) / 1024)
    return None


def n1_predefined_names() -> list[str]:
    """Every predefined N1 type, smallest first within each kind."""
    return [f"n1-{kind}-{size}" for kind, shape in data()["n1"].items() for size in shape["sizes"]]


def is_shared_core(name: str) -> bool:
    return name in _SHARED_CORE


def n1_limit(gpu: Gpu, count: int, zone: str | None = None) -> tuple[int, float] | None:
    """(max vCPUs, max GB) an N1 host may have with ``count`` of ``gpu``; None if the count is not allowed."""
    limit = gpu.n1_limits.get(count)
    exception = gpu.n1_zone_limits.get(count)
    if limit and exception and zone in exception[0]:
        return exception[1]
    return limit


def machine_types_for(gpu: Gpu, count: int | None = None) -> list[MachineType]:
    """Bundled machine types that carry ``gpu`` (with exactly ``count``), smallest first."""
    return [m for m in bundled_machine_types().values() if m.gpu == gpu.name and (count is None or m.gpus == count)]


def counts_for(gpu: Gpu) -> list[int]:
    if gpu.attached:
        return sorted(gpu.n1_limits)
    return sorted({m.gpus for m in machine_types_for(gpu)})


def default_machine_type(gpu: Gpu | None, count: int) -> MachineType | None:
    """The smallest valid machine type for ``count`` × ``gpu``, or None when the count is not offered.

    N1: n1-standard-4, the smallest n1-standard with 4 vCPUs (a floor for a model server and the
    Deep Learning VM image; not a GCP rule), which every allowed count admits. CPU-only: the same.
    """
    if gpu is None or gpu.attached:
        if gpu is not None and count not in gpu.n1_limits:
            return None
        return n1_shape("n1-standard-4")
    matching = machine_types_for(gpu, count)
    return matching[0] if matching else None


# -- zones ----------------------------------------------------------------------------------------


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def zones_for(gpu: Gpu | None, machine: MachineType | None = None, region: str | None = None) -> list[str] | None:
    """Zones that offer the GPU (and, for bundled types, the machine type); None when not verified.

    For bundled types the VM rows and the accelerator rows of the source disagree in places; only
    zones in both are returned (reference §5: the conservative choice).
    """
    if gpu is None:
        return None
    if gpu.zones is None:
        return None
    zones = list(gpu.zones)
    if machine is not None and machine.zones is not None:
        allowed = set(machine.zones)
        zones = [z for z in zones if z in allowed]
    if region is not None:
        zones = [z for z in zones if region_of(z) == region]
    return zones


def regions_for(gpu: Gpu, machine: MachineType | None = None) -> list[str] | None:
    zones = zones_for(gpu, machine)
    if zones is None:
        return None
    return sorted({region_of(z) for z in zones})


def default_image(gpu: Gpu | None) -> str:
    """The boot image: a Deep Learning VM family new enough for the GPU's driver, or Ubuntu LTS."""
    images = data()["images"]
    if gpu is None:
        return images["cpu"]
    return f"projects/{images['gpu_project']}/global/images/family/{gpu.image_family}"
