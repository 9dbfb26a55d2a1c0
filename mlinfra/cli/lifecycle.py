"""What `mlinfra up` and `mlinfra down` do once their options are parsed, without typer: both
the typer commands (``cli.stack``) and the fast path (``cli.fast``) run these. Each returns the
exit code; an expected failure raises ``MlinfraError`` for the caller to report."""

from __future__ import annotations

from pathlib import Path

from mlinfra.cli.shared import confirm_migration, confirm_plan, load, progress, show_notes, show_report


def run_up(
    file: Path,
    env: str | None,
    yes: bool,
    as_json: bool,
    no_verify: bool,
    no_wait: bool,
    junit: Path | None,
    no_zone_fallback: bool,
) -> int:
    stack = load(file, env)
    show_notes(stack.notes())
    result = stack.up(
        confirm=confirm_plan("apply these changes", yes),
        on_event=progress(),
        verify=not (no_verify or no_wait),
        wait_ready=not no_wait,
        migrate=confirm_migration(yes),
        zone_fallback=not no_zone_fallback,
    )
    from mlinfra.console import err, out, print_json, print_nodes, print_plan

    if yes and result.applied:  # applied without a review: what changed, for the log
        print_plan(result.summary, err)
    if as_json:
        print_json(result)
    else:
        if not result.applied:
            err.print("No changes: the stack matches its file.", markup=False)
        else:
            err.print(f"Applied in {result.elapsed_s:.1f}s.", markup=False)
        print_nodes(result.nodes, out)
    if result.verify is not None:
        show_report(result.verify, as_json, junit)
    return 0 if result.passed else 1


def run_down(file: Path, env: str | None, yes: bool, as_json: bool, force: bool) -> int:
    result = load(file, env).down(
        confirm=confirm_plan("destroy these resources", yes), on_event=progress(), force=force
    )
    from mlinfra.console import err, print_json, print_plan

    if yes and result.destroyed:  # destroyed without a review: what went, for the log
        print_plan(result.summary, err)
    if as_json:
        print_json(result)
        return 0
    if result.destroyed:
        err.print(f"Destroyed {result.summary.destroy} resource(s) in {result.elapsed_s:.1f}s.", markup=False)
    elif not result.swept:
        err.print("Nothing to destroy.", markup=False)
    if result.swept:
        err.print(
            f"Stopped {result.swept} process(es) of this stack that were running outside its state.", markup=False
        )
    return 0
