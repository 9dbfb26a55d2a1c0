"""What a stack costs and what it has cost (issue 13): the ``[cost]`` table, the budget guard
that `plan` and `up` run before anything else, and the spend of deployed nodes.

Rates come from the stack's target (``Driver.cost``: GCP prices each node from the catalog in
``clouds/gcp/gpus.toml``, with source and date); running time from each node's creation (GCP: the
instance's ``creation_timestamp`` output; local: the start time the node launcher records).
A price that is not known is None with the reason, never 0; the local target has no price at
all, and says so. Totals are grouped by region and environment: ``environment_of`` is the one
place that learns a stack's environment.

Imported by ``spec`` for the table, so nothing here loads the price catalog at import time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mlinfra.errors import SpecError
from mlinfra.fields import Section, in_range
from mlinfra.jsondata import Result

HOURS_PER_MONTH = 730  # Google's billing convention for a month of use (as prices.HOURS_PER_MONTH)
_GUARDED = ("plan", "apply")  # the operations that may create what the budget is about
_DRIVERS_SHOWN = 3  # node groups named in a budget refusal; the rest are counted


@dataclass(frozen=True)
class CostLimits(Section):
    """``[cost]``: a ceiling on the stack's estimated price, checked before `plan` and `up`."""

    _key: ClassVar[str] = "cost"
    max_usd_per_hour: float = field(default=0.0, metadata=in_range(0, 1_000_000))  # 0: no limit


def environment_of(spec: Any) -> str | None:
    """The ``[env.<name>]`` a stack was loaded as, for totals per region and environment (None:
    a stack without environments)."""
    return spec.environment or None


# -- the budget guard ----------------------------------------------------------------------------


def refuse_over_budget(stack: Any, operation: str) -> None:
    """Refuse (``SpecError``, exit 2) a `plan` or `up` whose estimate exceeds ``cost.max_usd_per_hour``,
    or cannot be known, naming the nodes that drive it. Runs before the lock, the work dir and
    Terraform: a refused stack leaves nothing behind."""
    limit = stack.spec.cost.max_usd_per_hour
    if operation not in _GUARDED or not limit:
        return
    estimate = stack.cost()
    if estimate is None:  # a target without a cloud bill (local): nothing to hold to a budget
        return
    source = str(stack.spec.path) if stack.spec.path else None
    model = "spot" if estimate.spot else "on-demand"
    total = estimate.usd_per_hour
    if total is None:
        raise SpecError(
            "cost.max_usd_per_hour",
            f"the {model} estimate is unknown ({'; '.join(estimate.missing)}), so the limit of "
            f"${limit:,.2f}/hour cannot be checked: choose a priced machine type (`mlinfra gpus`) or remove the limit",
            source=source,
        )
    if total > limit:
        scaling = estimate.autoscale  # judged at its ceiling: the autoscaler may go there unasked
        what = f"the {model} estimate" + (
            f" at autoscale.max_replicas = {scaling[1]} (the worst case)" if scaling else ""
        )
        floor = estimate.floor_usd_per_hour
        at_floor = f" (at min_replicas = {scaling[0]}: ${floor:,.2f}/hour)" if scaling and floor is not None else ""
        raise SpecError(
            "cost.max_usd_per_hour",
            f"{what} is ${total:,.2f}/hour, ${total - limit:,.2f} over the limit of ${limit:,.2f}{at_floor}; "
            f"driven by {budget_drivers(estimate)}",
            source=source,
            hint=("a lower autoscale.max_replicas, fewer regions" if scaling else "fewer replicas or regions")
            + ", a smaller machine type, compute.spot = true, or a higher limit",
        )


def budget_drivers(estimate: Any) -> str:
    """The estimate's nodes grouped by region and shape, most expensive first:
    "2 × a2-highgpu-1g (1 × nvidia-tesla-a100) in us-central1 at $3.67/hour each = $7.35/hour"."""
    groups: dict[tuple, list[float]] = {}
    for node in estimate.nodes:
        price = (node.spot if estimate.spot else node.on_demand).usd_per_hour or 0.0
        shape = (node.region, node.machine_type, node.gpu, node.gpu_count)
        groups.setdefault(shape, []).append(price)
    ranked = sorted(groups.items(), key=lambda item: -sum(item[1]))
    parts = []
    for (region, machine, gpu, count), rates in ranked[:_DRIVERS_SHOWN]:
        with_gpu = f" ({count} × {gpu})" if gpu else ""
        parts.append(
            f"{len(rates)} × {machine}{with_gpu} in {region} at ${rates[0]:,.2f}/hour each = ${sum(rates):,.2f}/hour"
        )
    rest = len(ranked) - _DRIVERS_SHOWN
    return "; ".join(parts) + (f"; and {rest} more group(s)" if rest > 0 else "")


# -- what deployed nodes have cost -----------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpend:
    """One deployed node: how long it has run, its rate, what it cost so far and per month."""

    node: str
    name: str
    region: str
    environment: str | None
    created_at: str | None  # UTC, ISO 8601; None: the target did not record it
    running_h: float | None
    machine_type: str | None
    gpu: str | None
    gpu_count: int
    spot: bool
    usd_per_hour: float | None
    usd_so_far: float | None
    usd_per_month: float | None
    unknown: tuple[str, ...] = ()  # why a figure above is None


@dataclass(frozen=True)
class GroupSpend:
    """The nodes of one region (and environment): their rate, spend so far and month."""

    region: str
    environment: str | None
    nodes: int
    usd_per_hour: float | None
    usd_so_far: float | None
    usd_per_month: float | None
    unknown: tuple[str, ...] = ()


@dataclass
class Spend(Result):
    """``mlinfra cost`` and ``status``'s ``cost``: per node, per region and environment, and the stack."""

    stack: str
    target: str
    environment: str | None
    at: str  # when the running times were taken (UTC)
    model: str  # "spot" or "on-demand": the prices used; "none" for a target without prices
    nodes: list[NodeSpend]
    groups: list[GroupSpend]
    usd_per_hour: float | None
    usd_so_far: float | None
    usd_per_month: float | None
    unknown: list[str] = field(default_factory=list)  # every reason a total is None
    sources: list[str] = field(default_factory=list)  # where the prices come from, with dates
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for `status`: the stack's spend so far, or why it is unknown."""
        running = [n.running_h for n in self.nodes if n.running_h is not None]
        longest = f", longest-running node up {duration(max(running))}" if running else ""
        if self.model == "none":
            return f"Cost: {self.unknown[0]}{longest}"
        if self.usd_so_far is None:
            return f"Cost so far: unknown ({self.unknown[0] if self.unknown else 'no price'}){longest}"
        return (
            f"Cost so far: ${self.usd_so_far:,.2f}{longest} "
            f"(now ${self.usd_per_hour:,.2f}/hour {self.model}, ~${self.usd_per_month:,.0f}/month)"
        )


def spent(stack: Any) -> Spend:
    """`mlinfra cost`: the spend of the stack's deployed nodes, as ``status`` finds them."""
    deployed = stack.status()
    if deployed.cost is None:
        raise stack.not_deployed()
    return deployed.cost


def report(stack: Any, nodes: list, now: float | None = None, scaling: dict | None = None) -> Spend:
    """The spend of ``nodes`` (the stack's deployed nodes, from ``status``) at ``now`` (epoch s);
    for an [autoscale] stack also its GPU workers, as ``scaling`` (status's ``autoscale``) counts them."""
    from mlinfra.timeutil import iso_epoch

    now = time.time() if now is None else now
    estimate = stack.cost()
    environment = environment_of(stack.spec)
    model = "none" if estimate is None else "spot" if estimate.spot else "on-demand"
    priced = {n.node: n for n in estimate.nodes} if estimate is not None else {}
    spent = [_node_spend(stack, node, estimate, priced.get(node.key), environment, now) for node in nodes]
    if estimate is not None and estimate.autoscale is not None:
        spent += [
            _workers_spend(stack, estimate, region, scaling, environment)
            for region in dict.fromkeys(n.region for n in nodes)
        ]
    groups = []
    for region, environment_name in dict.fromkeys((n.region, n.environment) for n in spent):
        members = [n for n in spent if (n.region, n.environment) == (region, environment_name)]
        groups.append(GroupSpend(region, environment_name, len(members), *_totals(members)))
    notes = list(estimate.notes) if estimate is not None else []
    if model == "spot":
        notes.append("running time counts from creation: a Spot VM is not billed while a preemption keeps it stopped")
    totals = _totals(spent)
    return Spend(
        stack=stack.spec.name,
        target=stack.spec.target,
        environment=environment,
        at=iso_epoch(now),
        model=model,
        nodes=spent,
        groups=groups,
        usd_per_hour=totals[0],
        usd_so_far=totals[1],
        usd_per_month=totals[2],
        unknown=list(totals[3]),
        sources=list(estimate.sources if estimate is not None else ()),
        notes=notes,
    )


def _node_spend(stack: Any, node: Any, estimate: Any, priced: Any, environment: str | None, now: float) -> NodeSpend:
    from mlinfra.timeutil import iso_epoch

    unknown: list[str] = []
    running_h = None
    if node.created_at is None:
        unknown.append(f"{node.key}: no creation time recorded")
    else:
        running_h = max(0.0, now - node.created_at) / 3600
    rate = None
    if estimate is None:
        unknown.append(stack.driver.no_price)
    elif priced is None:
        unknown.append(f"{node.key}: the stack file has no such node now (`mlinfra plan` shows what changes)")
    elif node.machine_type and node.machine_type != priced.machine_type:
        unknown.append(
            f"{node.key}: runs as {node.machine_type}, the stack file says {priced.machine_type} "
            "(`mlinfra up` applies it)"
        )
    else:
        price = priced.spot if estimate.spot else priced.on_demand
        rate = price.usd_per_hour
        if price.missing:
            unknown.append(f"{node.key}: no known price ({'; '.join(price.missing)})")
    return NodeSpend(
        node=node.key,
        name=node.name,
        region=node.region,
        environment=environment,
        created_at=iso_epoch(node.created_at) if node.created_at is not None else None,
        running_h=round(running_h, 4) if running_h is not None else None,
        machine_type=(priced.machine_type if priced else node.machine_type) or None,
        gpu=priced.gpu if priced else None,
        gpu_count=priced.gpu_count if priced else 0,
        spot=stack.spec.compute.spot,
        usd_per_hour=rate,
        usd_so_far=round(rate * running_h, 4) if rate is not None and running_h is not None else None,
        usd_per_month=round(rate * HOURS_PER_MONTH, 2) if rate is not None else None,
        unknown=tuple(unknown),
    )


def _workers_spend(stack: Any, estimate: Any, region: str, scaling: dict | None, environment: str | None) -> NodeSpend:
    """An [autoscale] region's GPU workers: as many as joined its Ray cluster (the head counts
    them; VMs still booting are not counted yet), at the worker's rate. Their running time is not
    recorded: the autoscaler starts and stops them, so what they cost so far is unknown."""
    worker = next(n for n in estimate.nodes if n.region == region and n.role == "worker")
    figures = ((scaling or {}).get("regions") or {}).get(region) or {}
    rate = (worker.spot if estimate.spot else worker.on_demand).usd_per_hour
    joined = figures.get("nodes")
    unknown = [f"{region}: the workers' running time is not recorded (the autoscaler starts and stops them)"]
    count = joined - 1 if isinstance(joined, int) and joined > 0 else None  # Ray's nodes include the head
    if count is None:
        unknown.append(f"{region}: how many workers run is unknown ({figures.get('error') or 'the head did not say'})")
    elif rate is None:
        unknown.append(f"{region}: no known price for a worker ({'; '.join(worker.on_demand.missing)})")
    per_hour = round(count * rate, 5) if count is not None and rate is not None else None
    return NodeSpend(
        node=f"{region}-workers",
        name=f"{region} workers ({'?' if count is None else count} of {estimate.autoscale[1]})",
        region=region,
        environment=environment,
        created_at=None,
        running_h=None,
        machine_type=worker.machine_type,
        gpu=worker.gpu,
        gpu_count=worker.gpu_count * (count or 0),
        spot=stack.spec.compute.spot,
        usd_per_hour=per_hour,
        usd_so_far=None,
        usd_per_month=round(per_hour * HOURS_PER_MONTH, 2) if per_hour is not None else None,
        unknown=tuple(unknown),
    )


def _totals(nodes: list[NodeSpend]) -> tuple[float | None, float | None, float | None, tuple[str, ...]]:
    """$/hour, so far and per month over ``nodes``: each None when any node's figure is unknown."""

    def total(values: list[float | None], digits: int) -> float | None:
        return None if any(v is None for v in values) else round(sum(v for v in values if v is not None), digits)

    return (
        total([n.usd_per_hour for n in nodes], 5),
        total([n.usd_so_far for n in nodes], 4),
        total([n.usd_per_month for n in nodes], 2),
        tuple(dict.fromkeys(reason for n in nodes for reason in n.unknown)),
    )


def duration(hours: float) -> str:
    """'3d 4h', '5h 07m', '12m'."""
    minutes = int(hours * 60)
    days, minutes = divmod(minutes, 24 * 60)
    if days:
        return f"{days}d {minutes // 60}h"
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
