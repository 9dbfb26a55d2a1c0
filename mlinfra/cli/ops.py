"""Disposable infrastructure: rebuild (destroy → up → verify, timed) and heal."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from mlinfra.cli.common import DEFAULT_FILE, EnvOpt, FileOpt, JsonOpt, JunitOpt, YesOpt, app, ask, load, progress
from mlinfra.jsondata import to_data


@app.command()
def rebuild(
    file: FileOpt = DEFAULT_FILE,
    env: EnvOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
    report_file: Annotated[Path | None, typer.Option("--report", help="Write the JSON report to this file.")] = None,
    junit: JunitOpt = None,
    budget: Annotated[
        str | None, typer.Option("--budget", help="Time budget, like 10m or 90s (default: 10m on GCP, 60s local).")
    ] = None,
    cleanup_on_failure: Annotated[
        bool, typer.Option("--cleanup-on-failure", help="Destroy what a failed run created.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even a stack marked protected = true.")] = False,
):
    """Destroy the stack, bring it up again and verify it, each phase timed, against a budget."""
    from mlinfra.ops.rebuild import junit_results, markdown, parse_duration

    budget_s = parse_duration(budget) if budget else None
    stack = load(file, env)
    from mlinfra.console import err, out, print_json

    def show_phase(phase) -> None:
        mark = "done" if phase.ok else "FAILED"
        err.print(
            f"phase {phase.name}: {mark} in {phase.elapsed_s:.1f}s{' — ' + phase.detail if phase.detail else ''}",
            markup=False,
        )

    report = stack.rebuild(
        budget_s=budget_s,
        force=force,
        cleanup_on_failure=cleanup_on_failure,
        confirm=lambda question: ask(question, yes),
        on_event=progress(),
        on_phase=show_phase,
    )
    if report_file is not None:
        report_file.write_text(json.dumps(to_data(report), indent=2) + "\n")
    if junit is not None:
        from mlinfra.verify.report import junit_xml

        junit.write_text(junit_xml(report.stack, junit_results(report), report.elapsed_s))
    from mlinfra.verify.report import append_step_summary

    append_step_summary(markdown(report))
    if as_json:
        print_json(report)
    else:
        for phase in report.phases:
            out.print(
                f"{phase.name:<8} {'ok' if phase.ok else 'FAILED':<7} {phase.elapsed_s:7.1f}s  "
                f"(terraform {phase.terraform_s:.1f}s, waiting {phase.wait_s:.1f}s)",
                markup=False,
            )
        out.print(report.verdict, style="green" if report.passed and report.within_budget else "red", markup=False)
        if report.failed_phase and not report.cleaned_up:
            err.print(f"left running: {', '.join(report.left_running) or 'nothing'}", markup=False)
            err.print(f"to clean up: {report.cleanup_command}", markup=False)
    if report.interrupted:  # after the report is written: the usual one-line error, exit 130
        from mlinfra.errors import Interrupted

        raise Interrupted("interrupted: Terraform stopped gracefully and saved its state")
    if not (report.passed and report.within_budget):
        raise typer.Exit(1)


@app.command()
def heal(
    file: FileOpt = DEFAULT_FILE,
    env: EnvOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", help="Keep healing every --interval until stopped.")] = False,
    interval: Annotated[str, typer.Option("--interval", help="Time between rounds with --watch, like 60s.")] = "60s",
    attempts: Annotated[
        int, typer.Option("--attempts", min=1, max=20, help="Replacements per bad node before giving up.")
    ] = 3,
):
    """Replace exactly the nodes that fail their gpu or health checks, then verify them."""
    from mlinfra.console import err, out, print_json
    from mlinfra.ops.rebuild import parse_duration

    pause_s = parse_duration(interval)
    stack = load(file, env)

    def log(replacement) -> None:  # one JSON line per replacement: a log a machine can read
        if watch or as_json:
            sys.stdout.write(json.dumps(to_data(replacement)) + "\n")
            sys.stdout.flush()

    def show_round(report) -> None:
        err.print(
            f"{time.strftime('%H:%M:%S')} checked {report.checked} node(s), replaced "
            f"{len(report.replacements)}; next round in {pause_s:.0f}s (Ctrl-C stops)",
            markup=False,
        )

    report = stack.heal(
        watch=watch, interval_s=pause_s, on_round=show_round, attempts=attempts, on_event=progress(), on_replacement=log
    )
    if watch:  # stopped with Ctrl-C: its log was the JSON lines
        return
    if as_json:
        print_json(report)
    else:
        out.print(f"{report.checked} node(s) checked; healthy: {', '.join(report.healthy) or 'none'}", markup=False)
        for r in report.replacements:
            out.print(
                f"{r.node}: {r.failed_check} failed ({r.reason}); {r.outcome} after {r.attempts} attempt(s)",
                markup=False,
            )
    if not report.passed:
        raise typer.Exit(1)
