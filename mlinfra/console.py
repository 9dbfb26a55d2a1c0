"""How results look in a terminal. Only this module and ``cli`` import rich.

Data goes to stdout; progress, prompts and errors go to stderr, so
``mlinfra status --json | jq`` and ``mlinfra up 2>log`` both work.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from mlinfra.engine.events import PlanSummary, Progress
from mlinfra.jsondata import to_data  # noqa: F401 (the CLI's JSON goes through it)

if TYPE_CHECKING:
    from rich.table import Table


class Stream:
    """stdout or stderr, the way the CLI writes to it. Plain text goes straight to the stream;
    rich (~35 ms to import) loads only for what needs it: tables, and colour on a terminal.
    Most commands in a script or a CI log never import it."""

    def __init__(self, stderr: bool):
        self.stderr = stderr
        self._rich: Any = None

    @property
    def stream(self):
        return sys.stderr if self.stderr else sys.stdout

    @property
    def rich(self) -> Any:
        if self._rich is None:
            from rich.console import Console

            self._rich = Console(stderr=self.stderr, soft_wrap=True, highlight=False)
            if not self.stderr and not self._rich.is_terminal and "COLUMNS" not in os.environ:
                self._rich.width = 200  # a pipe or a CI log: keep table rows whole instead of folding them at 80
        return self._rich

    def print(self, *objects: Any, style: str | None = None, markup: bool | None = None, end: str = "\n") -> None:
        plain = markup is False and all(isinstance(o, str) for o in objects)
        if plain and (style is None or not self.stream.isatty()):  # rich would print the same characters
            self.stream.write(" ".join(objects) + end)
            self.stream.flush()
            return
        self.rich.print(*objects, style=style, markup=markup, end=end)


out = Stream(stderr=False)
err = Stream(stderr=True)


_ACTION_MARK = {"create": "+", "delete": "-", "update": "~", "replace": "-/+", "read": "<="}


def print_json(data) -> None:
    """Results as JSON on stdout: dataclasses become objects, paths strings."""
    sys.stdout.write(json.dumps(to_data(data), indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def print_plan(summary: PlanSummary, console: Stream) -> None:
    for change in summary.drift:
        console.print(f"  ~ {change.address}: changed outside mlinfra (drift: {change.action})", markup=False)
    for change in summary.changes:
        mark = _ACTION_MARK.get(change.action, "?")
        console.print(f"  {mark} {change.address} ({change.action})", markup=False)
    if summary.replaced:
        console.print(f"Will be REPLACED (destroyed, then created again): {', '.join(summary.replaced)}", markup=False)
    console.print(f"Plan: {summary.describe()}.", markup=False)


def cost_lines(cost) -> list[str]:
    """The plan's price lines: the model in use, and what the other one would cost."""

    def money(per_hour, per_month):
        return f"${per_hour:,.2f}/hour, ${per_month:,.0f}/month" if per_hour is not None else "unknown"

    model = "spot" if cost.spot else "on-demand"
    lines = [f"Estimated cost ({model}): {money(cost.usd_per_hour, cost.usd_per_month)}"]
    if cost.autoscale is not None:  # the total is the ceiling; say so, and what the floor costs
        low, high = cost.autoscale
        lines = [
            f"Estimated cost ({model}): up to {money(cost.usd_per_hour, cost.usd_per_month)} at max_replicas "
            f"({high} GPU workers per region, the worst case), "
            f"{money(cost.floor_usd_per_hour, cost.floor_usd_per_month)} at min_replicas ({low}), heads included"
        ]
    if cost.spot:
        lines.append(f"  on-demand would be: {money(cost.on_demand_usd_per_hour, cost.on_demand_usd_per_month)}")
    else:
        lines.append(f"  spot would be: {money(cost.spot_usd_per_hour, cost.spot_usd_per_month)}")
    lines += [f"  no price known for: {item}" for item in cost.missing]
    return lines


def plan_markdown(result) -> str:
    """A pull-request comment: what changes, what it costs, what mlinfra chose."""
    summary = result.summary
    lines = [f"### mlinfra plan `{result.stack}`: {summary.describe()}", ""]
    if summary.changes:
        lines += ["| action | resource |", "| --- | --- |"]
        lines += [f"| {c.action} | `{c.address}` |" for c in summary.changes]
        lines.append("")
    if summary.replaced:
        lines += [f"**Replaced** (destroyed, then created again): {', '.join(f'`{a}`' for a in summary.replaced)}", ""]
    if summary.drift:
        lines += [
            f"Changed outside mlinfra (drift): {', '.join(f'`{c.address}` ({c.action})' for c in summary.drift)}",
            "",
        ]
    if result.cost is not None:
        lines += [f"- {line.strip()}" for line in cost_lines(result.cost)]
    lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines).rstrip() + "\n"


class ProgressPrinter:
    """One line per resource as it starts and finishes; quiet about the rest."""

    def __init__(self, console: Stream = err):
        self.console = console

    def __call__(self, event: Progress) -> None:
        if event.action == "init":
            if event.status == "start":
                self.console.print("Initializing Terraform…", markup=False)
            return
        if event.status == "start":
            self.console.print(f"  {event.address}: {event.action}…", markup=False)
        elif event.status == "done":
            self.console.print(f"  {event.address}: {event.action} done ({event.elapsed_s or 0:.0f}s)", markup=False)
        elif event.status == "error":
            self.console.print(f"  {event.address}: {event.action} failed", style="red", markup=False)
        elif event.status == "output" and event.action == "move":
            self.console.print(f"  {event.address}: {event.message}", style="yellow", markup=False)
        elif event.status == "output" and event.action == "sweep":
            self.console.print(f"  {event.message}", style="yellow", markup=False)
        elif event.status == "progress":
            self.console.print(
                f"  {event.address}: still {event.action}ing ({event.elapsed_s or 0:.0f}s)", markup=False
            )


_ANSI = {"green": "32", "red": "31", "yellow": "33"}


def node_state(node) -> tuple[str, str]:
    """What the nodes table says of a node, and its colour."""
    if node.alive is False:  # first: an answer on its port is not the node's when it is not alive
        return ("squatter on its port" if "is held by" in node.problem else "exited"), "red"
    if node.ready:
        return "ready", "green"
    if node.health_status:
        return f"not ready ({node.health_status})", "yellow"
    return "not listening", "red"


def print_nodes(nodes, stream: Stream = out) -> None:
    """The nodes as aligned columns (plain text: the table `up` and `status` print on every run
    costs no rich import), the state coloured on a terminal unless NO_COLOR is set."""
    rows = [("node", "region", "endpoint", "pid", "state")]
    colours = [""]
    for node in nodes:
        state, colour = node_state(node)
        rows.append((node.name, node.region, node.endpoint, str(node.pid or "-"), state))
        colours.append(colour)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    paint = stream.stream.isatty() and "NO_COLOR" not in os.environ
    for row, colour in zip(rows, colours, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        if paint and colour:
            cells[-1] = f"\x1b[{_ANSI[colour]}m{row[-1]}\x1b[0m"
        stream.print("  ".join(cells).rstrip(), markup=False)


def print_workloads(nodes, stream: Stream = out) -> None:
    """A line per node that runs more than serve.command: image, model, setup (issue 11)."""
    from mlinfra.workload import summary

    for node in nodes:
        if node.workload:
            stream.print(f"{node.name} runs: {summary(node.workload)}", markup=False)


def print_verify(report, console: Stream = out) -> None:
    """A row per node × check, each latency histogram, then the verdict line."""
    from rich.markup import escape
    from rich.table import Table

    from mlinfra.verify.report import histogram_lines

    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("node", "check", "result", "figures"):
        table.add_column(column)
    style = {"pass": "green", "fail": "red", "skip": "dim"}
    for r in report.results:
        figures = r.summary if r.status == "pass" else (r.message or r.summary)
        table.add_row(r.node, r.check, f"[{style[r.status]}]{r.status}[/]", escape(figures))
    console.print(table)
    for r in report.results:
        if r.check == "latency" and r.details.get("histogram"):
            console.print(f"\n{r.node} latency:", markup=False)
            for line in histogram_lines(r.details["histogram"]):
                console.print(f"  {line}", markup=False)
    if getattr(report, "runs", None):  # what each node runs besides serve.command (issue 11)
        from mlinfra.workload import summary

        console.print("", markup=False)
        for name, ran in report.runs.items():
            console.print(f"{name} runs: {summary(ran)}", markup=False)
    console.print(f"\n{report.verdict}", style="green" if report.passed else "red", markup=False)


def gpu_table(rows, region: str | None) -> Table:
    """One row per GPU × count: one GPU's own price beside the whole VM's (the default machine
    type with that many GPUs), on-demand and Spot; '?' where the catalog has no price."""
    from rich.table import Table

    def money(value):
        return f"${value:,.2f}" if value is not None else "?"

    table = Table(box=None, pad_edge=False, show_edge=False)
    columns = ("gpu", "accelerator", "mem", "n", "machine type", "GPU $/h", "VM $/h", "spot GPU", "spot VM", "zones")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        if row.zones is None:
            zones = "not verified"
        elif region:  # the zone letters: "a b c f" for us-central1-a, -b, -c, -f
            zones = " ".join(zone.rsplit("-", 1)[-1] for zone in row.zones) or "none"
        else:
            zones = f"{len(row.zones)} zones"
        table.add_row(
            row.alias,
            row.gpu,
            f"{row.memory_gb}G",
            str(row.count),
            row.machine_type,
            money(row.gpu_usd_per_hour),
            money(row.vm_usd_per_hour) if row.on_demand else "spot-only",
            money(row.spot_gpu_usd_per_hour),
            money(row.spot_vm_usd_per_hour),
            zones,
        )
    return table


def gpu_price_note(rows) -> str:
    """Where the table's prices come from: their region and sources (with dates)."""
    regions = sorted({row.price_region for row in rows})
    sources = list(dict.fromkeys(source for row in rows for source in row.price_sources))
    return (
        f"USD per hour in {', '.join(regions) or '-'}: GPU = one GPU on its own; VM = the machine type with n GPUs. "
        "'?' = no price in the catalog. Sources: " + ("; ".join(sources) or "none")
    )
