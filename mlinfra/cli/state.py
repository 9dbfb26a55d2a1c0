"""`mlinfra state ...`: the GCS state bucket, its lock, its history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mlinfra.cli.common import DEFAULT_FILE, EnvOpt, FileOpt, JsonOpt, YesOpt, app, ask, load

state_app = typer.Typer(help="The stack's Terraform state: bucket, lock, history, restore.", no_args_is_help=True)
app.add_typer(state_app, name="state")


@state_app.command()
def bootstrap(file: FileOpt = DEFAULT_FILE, env: EnvOpt = None, as_json: JsonOpt = False):
    """Create the state bucket (versioned, uniform access, no public access); safe to re-run."""
    result = load(file, env).state_bootstrap()
    from mlinfra.console import err, out, print_json

    if as_json:
        return print_json(result)
    out.print(
        f"gs://{result.bucket}: {'created' if result.created else 'already there, settings applied'}", markup=False
    )
    for key, value in result.settings.items():
        out.print(f"  {key}: {value}", markup=False)
    for mismatch in result.mismatches:
        err.print(f"warning: not as requested: {mismatch}", style="yellow", markup=False)


@state_app.command()
def pull(
    file: FileOpt = DEFAULT_FILE,
    env: EnvOpt = None,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write here (default: stdout).")] = None,
):
    """Download the current state (a local backup)."""
    document = load(file, env).state_pull()
    text = json.dumps(document, indent=2) + "\n"
    if out_file is None:
        typer.echo(text, nl=False)
        return
    out_file.write_text(text)
    out_file.chmod(0o600)  # state can hold secrets
    from mlinfra.console import err

    err.print(f"Wrote state serial {document.get('serial', '?')} to {out_file}", markup=False)


@state_app.command()
def history(file: FileOpt = DEFAULT_FILE, env: EnvOpt = None, as_json: JsonOpt = False):
    """List the stored versions of the state object, newest first."""
    rows = load(file, env).state_history()
    from mlinfra.console import out, print_json

    if as_json:
        return print_json(rows)
    if not rows:
        out.print("No state stored yet.", markup=False)
    for row in rows:
        mark = "  (current)" if row.current else ""
        out.print(f"{row.generation}  {row.updated}  {row.size:>8} bytes{mark}", markup=False)


@state_app.command()
def restore(
    generation: Annotated[int, typer.Argument(help="A generation from `mlinfra state history`.")],
    file: FileOpt = DEFAULT_FILE,
    env: EnvOpt = None,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
):
    """Make an earlier state version current again (shows what differs first)."""
    from mlinfra.console import err, print_json

    def confirm(plan) -> bool:
        err.print(
            f"Restoring generation {plan.generation} (serial {plan.restored_serial}; current serial "
            f"{plan.current_serial}).",
            markup=False,
        )
        for address in plan.only_in_current:
            err.print(f"  - {address} (in current state only: Terraform forgets it)", markup=False)
        for address in plan.only_in_restored:
            err.print(f"  + {address} (in the restored state only)", markup=False)
        if not plan.only_in_current and not plan.only_in_restored:
            err.print("  The same resources; their recorded attributes may differ.", markup=False)
        return ask(f"restore state generation {plan.generation}", yes)

    plan = load(file, env).state_restore(generation, confirm=confirm)
    if as_json:
        return print_json(plan)
    err.print(f"Restored generation {plan.generation}. Run `mlinfra plan` to see how reality compares.", markup=False)


@state_app.command()
def unlock(file: FileOpt = DEFAULT_FILE, env: EnvOpt = None, yes: YesOpt = False, as_json: JsonOpt = False):
    """Remove a lock whose holder died (shows the holder and asks first)."""
    from mlinfra.console import err, print_json

    def confirm(holder) -> bool:
        err.print(f"The state is locked: {holder.describe()}", markup=False)
        return ask("remove this lock (only if its holder is really gone)", yes)

    removed = load(file, env).state_unlock(confirm=confirm)
    if as_json:
        return print_json({"removed": removed})
    err.print("Lock removed." if removed else "The state is not locked.", markup=False)
