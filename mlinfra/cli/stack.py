"""The stack's lifecycle: render, plan, up, verify, down, status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mlinfra.cli.common import (
    DEFAULT_FILE,
    EnvOpt,
    FileOpt,
    JsonOpt,
    JunitOpt,
    YesOpt,
    app,
    load,
    progress,
    show_notes,
    show_report,
)
from mlinfra.cli.lifecycle import run_down, run_up


@app.command()
def render(
    file: FileOpt = DEFAULT_FILE,
    env: EnvOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the module here instead of the work dir (eject).")
    ] = None,
    as_json: JsonOpt = False,
):
    """Write the stack's Terraform root module (it runs with plain `terraform` too)."""
    result = load(file, env).render(out)
    if as_json:
        from mlinfra.console import print_json

        return print_json(result)
    from mlinfra.console import out as stdout

    stdout.print(
        f"Rendered {len(result.files)} files for {len(result.nodes)} node(s) into {result.workdir}", markup=False
    )
    for name in result.files:
        stdout.print(f"  {name}", markup=False)


@app.command()
def plan(
    file: FileOpt = DEFAULT_FILE,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print a summary ready for a pull-request comment.")
    ] = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode",
            help="Exit 0 when there is nothing to change, 3 when changes are pending, including drift the "
            "plan undoes (1 still means the plan failed, 2 bad input): for drift checks in CI.",
        ),
    ] = False,
):
    """Show what `up` would change (and, on GCP, what it costs), changing nothing.

    Exit codes: 0 planned, 1 the plan failed, 2 bad input; with --detailed-exitcode, 3 when
    changes are pending (drift that the plan undoes is a change; drift it leaves alone is only shown)."""
    from mlinfra.console import cost_lines, out, plan_markdown, print_json, print_plan

    stack = load(file, env)
    if not (as_json or markdown):
        # Before Terraform runs: the choices, warnings and price are worth seeing even if it fails
        # (an air-gapped machine without the provider still learns what the stack would cost).
        show_notes(stack.notes())
        cost = stack.cost()
        for line in cost_lines(cost) if cost is not None and cost.nodes else []:  # priced nodes only
            out.print(line, markup=False)
    result = stack.plan(on_event=progress())
    if as_json:
        print_json(result)
    elif markdown:
        out.print(plan_markdown(result), markup=False, end="")
    else:
        print_plan(result.summary, out)
    if detailed_exitcode and result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command()
def up(
    file: FileOpt = DEFAULT_FILE,
    env: EnvOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip the gpu and latency checks (still wait for health).")
    ] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return after apply: no checks at all.")] = False,
    junit: JunitOpt = None,
    no_zone_fallback: Annotated[
        bool,
        typer.Option(
            "--no-zone-fallback",
            help="GCP: on a stockout, fail instead of moving the node to another zone of its region.",
        ),
    ] = False,
):
    """Create or update the stack: init, plan, confirm, apply, then verify it (the gate)."""
    code = run_up(file, env, yes, as_json, no_verify, no_wait, junit, no_zone_fallback)
    if code:
        raise typer.Exit(code)


@app.command()
def verify(
    file: FileOpt = DEFAULT_FILE,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
    junit: JunitOpt = None,
    check: Annotated[
        list[str] | None,
        typer.Option(
            "--check", help="Run only these checks: health, gpu, latency, autoscale (repeatable; autoscale: opt-in)."
        ),
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", min=0.0, help="Open-loop load at this many requests/s (0: closed loop)."),
    ] = None,
    idle: Annotated[
        bool,
        typer.Option("--idle", help="With --check autoscale: after the load, wait for replicas to return to min."),
    ] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="GCP: each node re-runs its own checks first (else: its latest report).")
    ] = False,
):
    """Prove the deployment works: GPU, health and latency checks on every node."""
    report = load(file, env).verify(checks=check, rate=rate, idle=idle, fresh=fresh)
    if as_json:
        from mlinfra.console import print_json

        print_json(report)
    show_report(report, as_json, junit)
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def down(
    file: FileOpt = DEFAULT_FILE,
    env: EnvOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Destroy even a stack marked protected = true.")] = False,
):
    """Destroy everything the stack created, and nothing else."""
    code = run_down(file, env, yes, as_json, force)
    if code:
        raise typer.Exit(code)


@app.command()
def status(
    file: FileOpt = DEFAULT_FILE,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 unless the stack is deployed and every node is ready (for scripts).")
    ] = False,
):
    """List the stack's nodes with their endpoints and whether they are ready."""
    result = load(file, env).status()
    _show_status(result, as_json)
    healthy = result.deployed and all(n.ready for n in result.nodes) and not result.orphans and not result.incomplete
    if check and not healthy:
        raise typer.Exit(1)


@app.command()
def envs(file: FileOpt = DEFAULT_FILE, as_json: JsonOpt = False):
    """List the stack file's environments: what each overrides, whether it is deployed, its endpoint."""
    from mlinfra.console import out, print_json
    from mlinfra.ops.envs import list_environments

    result = list_environments(file)
    if as_json:
        return print_json(result)
    if not result.environments:
        return out.print(f"{file} defines no environments ([env.<name>] tables).", markup=False)
    for env in result.environments:
        state = "deployed" if env.deployed else f"unknown ({env.unknown})" if env.deployed is None else "not deployed"
        marks = "".join([" (default)" if env.default else "", " protected" if env.protected else ""])
        out.print(f"{env.name}{marks}: {env.stack}, {state}", markup=False)
        for key, value in env.overrides.items():
            out.print(f"  {key} = {json.dumps(value)}", markup=False)
        for endpoint in env.endpoints:
            out.print(f"  endpoint: {endpoint}", markup=False)


def _show_status(result, as_json: bool) -> None:
    from mlinfra.console import out, print_json, print_nodes, print_workloads

    if as_json:
        return print_json(result)
    if result.lock is not None:
        out.print(f"Locked: {result.lock.describe()}", style="yellow", markup=False)
    if result.orphans:
        pids = ", ".join(map(str, result.orphans))
        out.print(
            f"Orphans: {len(result.orphans)} process(es) of this stack run outside its state (pid {pids}); "
            "`mlinfra down` stops them",
            style="yellow",
            markup=False,
        )
    if result.incomplete:
        out.print(
            "Incomplete: the state holds resources but no outputs (an operation was interrupted); "
            "`mlinfra up` repairs it",
            style="yellow",
            markup=False,
        )
    if not result.deployed:
        out.print(f"Stack {result.stack!r} is not deployed.", markup=False)
        return
    ready = sum(1 for node in result.nodes if node.ready)
    out.print(f"Stack {result.stack!r} ({result.target}): {ready}/{len(result.nodes)} node(s) ready", markup=False)
    print_nodes(result.nodes, out)
    print_workloads(result.nodes, out)
    if result.cost is not None:  # what the nodes have cost so far (`mlinfra cost` for the detail)
        out.print(result.cost.line(), markup=False)
    scaling = result.autoscale
    if scaling:  # an [autoscale] stack: one endpoint, Serve's replicas per region
        out.print(f"Endpoint: {result.endpoint}  ({scaling['engine']}, policy {scaling['policy']})", markup=False)
        for region, info in scaling["regions"].items():
            out.print(f"  {region}: {_region_line(info, scaling)}", markup=False)


def _region_line(info: dict, scaling: dict) -> str:
    """One region of an autoscaled stack: replicas against their bounds, queue depth, Ray nodes."""
    if "error" in info:
        return f"replicas unknown: {info['error']}"
    line = (
        f"replicas {info.get('replicas', 0)} running, {info.get('starting', 0)} starting "
        f"(min {scaling['min_replicas']}, max {scaling['max_replicas']})"
    )
    depth = info.get("queue_depth")
    line += (
        f", queue {depth} ({info.get('queued', 0)} waiting for a replica)" if depth is not None else ", queue unknown"
    )
    return line + (f", {info['nodes']} Ray node(s)" if "nodes" in info else "")
