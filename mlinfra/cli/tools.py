"""Commands around the stack: serve, version, new, ci."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlinfra.cli.common import EnvOpt, JsonOpt, app


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def serve(ctx: typer.Context):
    """Run the reference inference server (see `mlinfra serve --help`)."""
    from mlinfra import serve as server

    raise typer.Exit(server.main(list(ctx.args)) or 0)


@app.command()
def version(as_json: JsonOpt = False):
    """Show mlinfra's and Terraform's versions."""
    from mlinfra import __version__
    from mlinfra.engine import Terraform

    terraform = Terraform(Path.cwd()).version()
    if as_json:
        from mlinfra.console import print_json

        return print_json({"mlinfra": __version__, "terraform": terraform})
    typer.echo(f"mlinfra {__version__}\nterraform {terraform}")


def _show_scaffold(result, as_json: bool) -> None:
    from mlinfra.console import err, out, print_json

    if as_json:
        return print_json(result)
    for path in result.written:
        out.print(f"wrote   {path}", markup=False)
    for path in result.skipped:
        out.print(f"kept    {path}", markup=False)
    for note in result.notes:
        err.print(f"note: {note}", markup=False)


@app.command()
def new(
    directory: Annotated[Path, typer.Argument(help="Where to create the project.")] = Path("."),
    target: Annotated[str, typer.Option("--target", "-t", help="local or gcp.")] = "local",
    gpu: Annotated[str, typer.Option("--gpu", "-g", help="A GPU alias (t4, l4, a100, h100, ...) or none.")] = "none",
    name: Annotated[str | None, typer.Option("--name", help="The stack's name (default: from the directory).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing mlinfra.toml and Makefile.")] = False,
    as_json: JsonOpt = False,
):
    """Start a project: a commented mlinfra.toml, a Makefile, .mlinfra/ in .gitignore."""
    from mlinfra.scaffold import new_project

    _show_scaffold(new_project(directory, target=target, gpu=gpu, name=name, force=force), as_json)


ci_app = typer.Typer(help="Continuous integration for the stack.", no_args_is_help=True)
app.add_typer(ci_app, name="ci")


@ci_app.command()
def github(
    file: Annotated[
        str, typer.Option("--file", "-f", help="The stack file, relative to the repository root.")
    ] = "mlinfra.toml",
    workflow: Annotated[
        list[str] | None,
        typer.Option(
            "--workflow",
            "-w",
            help="Which to write (repeatable): rebuild (nightly destroy-rebuild-verify, the default), "
            "review (plan per environment as one pull-request comment), drift (scheduled drift check).",
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", "-e", help="Environments for review and drift (repeatable; default: all of them)."),
    ] = None,
    schedule: Annotated[
        str, typer.Option("--schedule", help="Cron schedule (UTC) of the nightly rebuild.")
    ] = "0 3 * * *",
    drift_schedule: Annotated[
        str, typer.Option("--drift-schedule", help="Cron schedule (UTC) of the drift check.")
    ] = "0 6 * * *",
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing workflows.")] = False,
    install: Annotated[
        str | None,
        typer.Option(
            "--install",
            help="What the jobs pip-install: a pinned git URL or a wheel path "
            "(default: -r .github/mlinfra-requirements.txt, written for you to fill in).",
        ),
    ] = None,
    as_json: JsonOpt = False,
):
    """Write GitHub Actions workflows: nightly rebuild, plans in pull requests, drift checks."""
    from mlinfra.ci_workflows import ci_github
    from mlinfra.scaffold import DEFAULT_INSTALL

    result = ci_github(
        Path.cwd(),
        stack_file=file,
        workflows=tuple(workflow or ("rebuild",)),
        envs=env,
        schedule=schedule,
        drift_schedule=drift_schedule,
        force=force,
        install=install or DEFAULT_INSTALL,
    )
    _show_scaffold(result, as_json)


@app.command()
def gpus(
    region: Annotated[str | None, typer.Option("--region", "-r", help="Only zones in this region.")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", "-g", help="Only this GPU (alias or accelerator name).")] = None,
    as_json: JsonOpt = False,
):
    """The GPU catalog: types, memory, machine types, zones, and $/hour on-demand and Spot for one GPU
    on its own and for the whole VM."""
    from mlinfra.clouds.gcp import prices

    rows = prices.gpu_rows(region, gpu)  # an unknown GPU is UnknownGpu: bad input, exit 2
    from mlinfra.console import err, gpu_price_note, gpu_table, out, print_json

    if as_json:
        return print_json([row.as_dict() for row in rows])
    out.print(gpu_table(rows, region))
    err.print(gpu_price_note(rows), markup=False)


@app.command()
def check(
    file: Annotated[Path, typer.Option("--file", "-f", help="The stack file.")] = Path("mlinfra.toml"),
    env: EnvOpt = None,
    schema: Annotated[
        Path | None,
        typer.Option(
            "--schema", help="A `terraform providers schema -json` file: check the rendered module against it, offline."
        ),
    ] = None,
    as_json: JsonOpt = False,
):
    """Preflight: the stack, the engine, rendering, credentials, the state bucket (and a schema)."""
    from mlinfra.cli.common import load
    from mlinfra.ops import preflight

    items = preflight.check(load(file, env), schema)
    from mlinfra.console import out, print_json

    if as_json:
        print_json(items)
    else:
        for item in items:
            out.print(
                f"{('warn' if item.warning else 'ok  ') if item.ok else 'FAIL'}  {item.name:<13} {item.detail}",
                markup=False,
                style=("yellow" if item.warning else None) if item.ok else "red",
            )
    if not all(item.ok for item in items):
        raise typer.Exit(1)
