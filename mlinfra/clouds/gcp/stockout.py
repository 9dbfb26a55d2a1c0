"""GCP capacity and quota failures: name the cause in one line, and move stocked-out nodes.

When ``apply`` fails because a zone has no capacity (``ZONE_RESOURCE_POOL_EXHAUSTED``,
``..._WITH_DETAILS``, "does not have enough resources available") or a quota is used up
(``QUOTA_EXCEEDED``, "Quota 'NVIDIA_T4_GPUS' exceeded"), ``classify`` turns the provider's
error text into a ``Capacity``: which GPU, machine type, zone or region, and quota metric.

A stockout is per zone, so the same node may fit in another zone of its region:
``next_zone`` and ``plan_moves`` pick it from the zones that offer the GPU and machine type
(``rules.candidate_zones``). A quota is per region or project, so moving zones cannot help;
those failures are reported, not retried. Everything here is pure: text and resolved placements in,
values out. Recording a move is the GCP target's job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from mlinfra.clouds.gcp import catalog
from mlinfra.clouds.gcp.rules import Resolved, candidate_zones
from mlinfra.targets.base import Move

_ZONE = catalog.ZONE_PATTERN
_STOCKOUT_CODE = re.compile(r"\b(ZONE_RESOURCE_POOL_EXHAUSTED(?:_WITH_DETAILS)?)\b")
_STOCKOUT_TEXT = re.compile(
    r"does not have enough resources available to fulfill the request"
    r"|is currently unavailable in the \S+ zone|state:STOCKOUT",
    re.IGNORECASE,
)
_QUOTA = [
    # Compute API: "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 1.0 in region us-central1."
    re.compile(
        r"Quota '(?P<metric>[A-Za-z0-9_]+)' exceeded\.?\s*(?:Limit:\s*(?P<limit>[\d.]+)\s*"
        rf"(?:in region (?P<region>{catalog.REGION_PATTERN})|(?P<global>globally))?)?"
    ),
    # "Quota limit 'X' has been exceeded. Limit: 0 in region us-central1."
    re.compile(
        r"Quota limit '(?P<metric>[A-Za-z0-9_]+)' has been exceeded\.?\s*(?:Limit:\s*(?P<limit>[\d.]+)\s*"
        rf"(?:in region (?P<region>{catalog.REGION_PATTERN}))?)?"
    ),
    # 'insufficient regional quota to satisfy request: resource "CPUS"' / 'Insufficient project quota ...'
    re.compile(
        r"[Ii]nsufficient (?:regional|project) quota to satisfy request: resource \"(?P<metric>[A-Z0-9_]+)\""
        r"(?:.*?project has a quota of '(?P<limit>[\d.]+)')?"
    ),
]
_QUOTA_CODE = re.compile(r"\bQUOTA_EXCEEDED\b|\bquotaExceeded\b")
_ZONE_IN_PATH = re.compile(rf"zones/({_ZONE})\b")
_ZONE_FIELD = re.compile(rf"\bzone:\s*'?({_ZONE})\b")
_ZONE_WORDS = re.compile(rf"\bin the ({_ZONE}) zone\b")
_ZONES_AVAILABLE = re.compile(r"zonesAvailable:\s*'?([a-z0-9,\- ]*)'?")
_ZONES_SUGGESTED = re.compile(rf"trying your request\s+in the ((?:{_ZONE}(?:,\s*)?)+)\s+zone")
_GPU_WORDS = re.compile(r"with (\d+) (nvidia-[a-z0-9-]+) accelerator")
_GPU_FIELD = re.compile(r"attachment:\s*'?(nvidia-[a-z0-9-]+):(\d+)")
_MACHINE_WORDS = re.compile(r"\bA ([a-z0-9]+-[a-z0-9-]+) VM instance\b")
_MACHINE_FIELD = re.compile(r"\bvmType:\s*'?([a-z0-9]+-[a-z0-9-]+)")
_NODE_ADDRESS = re.compile(r'google_compute_instance\.[A-Za-z0-9_-]+\["([^"]+)"\]')


@dataclass(frozen=True)
class Capacity:
    """Why a VM could not be created, as far as the error text tells."""

    kind: Literal["stockout", "quota"]  # the zone has no capacity, or a limit is used up
    code: str  # ZONE_RESOURCE_POOL_EXHAUSTED[_WITH_DETAILS], QUOTA_EXCEEDED, or the metric's family
    zone: str | None = None
    region: str | None = None
    gpu: str | None = None  # accelerator type, e.g. "nvidia-tesla-t4"
    gpu_count: int | None = None
    machine_type: str | None = None
    metric: str | None = None  # quota metric, e.g. "NVIDIA_T4_GPUS" or "PREEMPTIBLE_NVIDIA_T4_GPUS"
    limit: float | None = None
    spot: bool | None = None  # quota metric of Spot/preemptible capacity
    zones_available: tuple[str, ...] = ()  # zones GCP itself suggested

    @property
    def fallback_helps(self) -> bool:
        """Whether another zone of the same region may work: yes for a stockout, never for a quota."""
        return self.kind == "stockout"

    def describe(self) -> str:
        """One line for the user, instead of the provider's error."""
        if self.kind == "stockout":
            what = self.machine_type or "the VM"
            if self.gpu:
                what += f" with {self.gpu_count or '?'}× {self.gpu}"
            where = self.zone or self.region or "its zone"
            hint = f"; GCP suggests {', '.join(self.zones_available)}" if self.zones_available else ""
            return f"no capacity for {what} in {where} right now ({self.code}){hint}"
        subject = f"quota {self.metric}" if self.metric else "a quota"
        if self.gpu:
            subject += f" ({self.gpu}, {'Spot' if self.spot else 'on-demand'})"
        scope = (
            f" in {self.region}"
            if self.region
            else (" across all regions" if self.metric and "ALL_REGIONS" in self.metric else "")
        )
        limit = f" (limit {self.limit:g})" if self.limit is not None else ""
        return f"{subject} exceeded{scope}{limit}: request more in the console (IAM & Admin > Quotas); another zone will not help"


def classify(error_text: str) -> Capacity | None:
    """A capacity or quota failure in ``error_text`` (any of GCP's formats), or None."""
    if not error_text:
        return None
    quota = _quota(error_text)
    if quota is not None:
        return quota
    code = _STOCKOUT_CODE.search(error_text)
    if code is None and not _STOCKOUT_TEXT.search(error_text):
        return None
    zone = _first(error_text, _ZONE_FIELD, _ZONE_WORDS, _ZONE_IN_PATH)
    gpu, count = None, None
    if (match := _GPU_FIELD.search(error_text)) is not None:
        gpu, count = match.group(1), int(match.group(2))
    elif (match := _GPU_WORDS.search(error_text)) is not None:
        gpu, count = match.group(2), int(match.group(1))
    return Capacity(
        kind="stockout",
        code=code.group(1) if code else "ZONE_RESOURCE_POOL_EXHAUSTED",
        zone=zone,
        region=catalog.region_of(zone) if zone else None,
        gpu=gpu,
        gpu_count=count,
        machine_type=_first(error_text, _MACHINE_FIELD, _MACHINE_WORDS),
        zones_available=_suggested(error_text),
    )


def _quota(text: str) -> Capacity | None:
    for pattern in _QUOTA:
        match = pattern.search(text)
        if match is None:
            continue
        metric = match.group("metric")
        groups = match.groupdict()
        spot = metric.startswith("PREEMPTIBLE_")
        gpu = _gpu_for_metric(metric.removeprefix("PREEMPTIBLE_"))
        region = groups.get("region")
        zone = _first(text, _ZONE_FIELD, _ZONE_IN_PATH)
        return Capacity(
            kind="quota",
            code="QUOTA_EXCEEDED",
            zone=zone,
            region=region or (catalog.region_of(zone) if zone else None),
            gpu=gpu,
            metric=metric,
            limit=float(groups["limit"]) if groups.get("limit") else None,
            spot=spot if gpu else None,
        )
    if _QUOTA_CODE.search(text):
        return Capacity(kind="quota", code="QUOTA_EXCEEDED")
    return None


def _gpu_for_metric(metric: str) -> str | None:
    for gpu in catalog.gpus().values():
        if gpu.quota == metric:
            return gpu.name
    return "nvidia-tesla-k80" if metric == "NVIDIA_K80_GPUS" else None


def _first(text: str, *patterns: re.Pattern) -> str | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def _suggested(text: str) -> tuple[str, ...]:
    match = _ZONES_AVAILABLE.search(text) or _ZONES_SUGGESTED.search(text)
    if not match:
        return ()
    return tuple(z for z in re.split(r"[,\s]+", match.group(1)) if re.fullmatch(_ZONE, z))


def node_key_from_address(address: str) -> str | None:
    """'google_compute_instance.node["us-central1-0"]' -> 'us-central1-0'."""
    match = _NODE_ADDRESS.search(address or "")
    return match.group(1) if match else None


# -- zone fallback ---------------------------------------------------------------------------------


def next_zone(
    resolved: Resolved, node_key: str, failed_zone: str, *, tried: Iterable[str] = (), prefer: Iterable[str] = ()
) -> str | None:
    """The next zone for a stocked-out node: in its own region, offering its GPU and machine type,
    not tried yet. GCP's own suggestions (``prefer``) go first, then the stack's order after the
    failed zone. None when every zone was tried."""
    region = node_key.rsplit("-", 1)[0]
    candidates = candidate_zones(resolved, region)
    skip = {failed_zone, *tried}
    start = candidates.index(failed_zone) + 1 if failed_zone in candidates else 0
    ordered = [z for z in prefer if z in candidates] + candidates[start:] + candidates[:start]
    return next((z for z in ordered if z not in skip), None)


def plan_moves(
    resolved: Resolved, failures: Iterable[tuple[str, str, Capacity]], tried: Mapping[str, Iterable[str]] | None = None
) -> list[Move]:
    """Moves for the failed nodes that another zone may help: ``failures`` are (node key, zone it
    failed in, what classify said); ``tried`` maps node keys to zones already tried."""
    moves = []
    for node, zone, capacity in failures:
        if not capacity.fallback_helps:
            continue
        target = next_zone(resolved, node, zone, tried=(tried or {}).get(node, ()), prefer=capacity.zones_available)
        if target is not None:
            moves.append(Move(node, zone, target, capacity.describe()))
    return moves
