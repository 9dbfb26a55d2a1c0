"""The `mlinfra` command: a thin layer over ``mlinfra.api``.

Each command loads the stack, calls one API method and shows its result.
Exit codes: 0 success, 1 the operation failed, 2 bad input, 130 interrupted.
``MLINFRA_DEBUG=1`` shows tracebacks for expected failures too.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="mlinfra",
    help="One stack file to a verified, disposable GPU inference deployment (Terraform underneath).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich_utils + markdown cost ~150 ms per run
)

FileOpt = Annotated[Path, typer.Option("--file", "-f", help="The stack file.", show_default=True)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress goes to stderr).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DEFAULT_FILE = Path("mlinfra.toml")


def _handle_errors(command):
    """Expected failures become one line on stderr and an exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from mlinfra.errors import MlinfraError

        try:
            return command(*args, **kwargs)
        except MlinfraError as exc:
            if os.environ.get("MLINFRA_DEBUG"):
                raise
            from mlinfra.console import err

            err.print(f"error: {exc.message}", style="red", markup=False)
            if exc.hint:
                err.print(f"hint: {exc.hint}", markup=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


def _load(file: Path):
    from mlinfra.api import Stack

    return Stack.load(file)


def _confirm(question: str, yes: bool):
    """The API's confirm callback: show the plan, then ask (or refuse without a terminal)."""
    from mlinfra.console import err, print_plan
    from mlinfra.errors import UsageError

    def confirm(summary) -> bool:
        print_plan(summary, err)
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to {question} without confirmation: stdin is not a terminal; pass --yes")
        return typer.confirm(f"Do you want to {question}?", default=False, err=True)

    return confirm


def _progress():
    from mlinfra.console import ProgressPrinter

    return ProgressPrinter()


@app.command()
@_handle_errors
def render(
    file: FileOpt = DEFAULT_FILE,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the module here instead of the work dir (eject).")] = None,
    as_json: JsonOpt = False,
):
    """Write the stack's Terraform root module (it runs with plain `terraform` too)."""
    result = _load(file).render(out)
    if as_json:
        from mlinfra.console import print_json

        return print_json(result)
    from mlinfra.console import out as stdout

    stdout.print(f"Rendered {len(result.files)} files for {len(result.nodes)} node(s) into {result.workdir}", markup=False)
    for name in result.files:
        stdout.print(f"  {name}", markup=False)


@app.command()
@_handle_errors
def plan(file: FileOpt = DEFAULT_FILE, as_json: JsonOpt = False):
    """Show what `up` would change, changing nothing."""
    result = _load(file).plan(on_event=_progress())
    from mlinfra.console import out, print_json, print_plan

    if as_json:
        return print_json(result)
    print_plan(result.summary, out)


JunitOpt = Annotated[Optional[Path], typer.Option("--junit", help="Write the verification as JUnit XML to this file.")]


def _report(report, as_json: bool, junit: Path | None) -> None:
    """Write the CI artefacts of a verification and, unless --json, show it."""
    from mlinfra.verify.report import append_step_summary, junit_xml

    if junit is not None:
        junit.write_text(junit_xml(report.stack, report.results, report.elapsed_s))
    append_step_summary(report.stack, report.results)
    if not as_json:
        from mlinfra.console import print_verify

        print_verify(report)


@app.command()
@_handle_errors
def up(
    file: FileOpt = DEFAULT_FILE,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the gpu and latency checks (still wait for health).")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return after apply: no checks at all.")] = False,
    junit: JunitOpt = None,
):
    """Create or update the stack: init, plan, confirm, apply, then verify it (the gate)."""
    stack = _load(file)
    result = stack.up(confirm=_confirm("apply these changes", yes), on_event=_progress(),
                      verify=not (no_verify or no_wait), wait_ready=not no_wait)
    from mlinfra.console import err, nodes_table, out, print_json

    if as_json:
        print_json(result)
    else:
        if not result.applied:
            err.print("No changes: the stack matches its file.", markup=False)
        else:
            err.print(f"Applied in {result.elapsed_s:.1f}s.", markup=False)
        out.print(nodes_table(result.nodes))
    if result.verify is not None:
        _report(result.verify, as_json, junit)
    if not result.passed:
        raise typer.Exit(1)


@app.command()
@_handle_errors
def verify(
    file: FileOpt = DEFAULT_FILE,
    as_json: JsonOpt = False,
    junit: JunitOpt = None,
    check: Annotated[Optional[list[str]], typer.Option("--check", help="Run only these checks: health, gpu, latency (repeatable).")] = None,
    rate: Annotated[Optional[float], typer.Option("--rate", min=0.0, help="Open-loop load at this many requests/s (0: closed loop).")] = None,
):
    """Prove the deployment works: GPU, health and latency checks on every node."""
    report = _load(file).run_verify(checks=check, rate=rate)
    if as_json:
        from mlinfra.console import print_json

        print_json({"stack": report.stack, "passed": report.passed, "verdict": report.verdict,
                    "elapsed_s": report.elapsed_s, "results": report.results})
    _report(report, as_json, junit)
    if not report.passed:
        raise typer.Exit(1)


@app.command()
@_handle_errors
def down(
    file: FileOpt = DEFAULT_FILE,
    yes: YesOpt = False,
    as_json: JsonOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Destroy even a stack marked protected = true.")] = False,
):
    """Destroy everything the stack created, and nothing else."""
    result = _load(file).down(confirm=_confirm("destroy these resources", yes), on_event=_progress(), force=force)
    from mlinfra.console import err, print_json

    if as_json:
        return print_json(result)
    if result.destroyed:
        err.print(f"Destroyed {result.summary.destroy} resource(s) in {result.elapsed_s:.1f}s.", markup=False)
    else:
        err.print("Nothing to destroy.", markup=False)


@app.command()
@_handle_errors
def status(file: FileOpt = DEFAULT_FILE, as_json: JsonOpt = False):
    """List the stack's nodes with their endpoints and whether they are ready."""
    result = _load(file).status()
    from mlinfra.console import nodes_table, out, print_json

    if as_json:
        return print_json(result)
    if not result.deployed:
        out.print(f"Stack {result.stack!r} is not deployed.", markup=False)
        return
    ready = sum(1 for node in result.nodes if node.ready)
    out.print(f"Stack {result.stack!r} ({result.target}): {ready}/{len(result.nodes)} node(s) ready", markup=False)
    out.print(nodes_table(result.nodes))


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

    terraform = _handle_errors(lambda: Terraform(Path.cwd()).version())()
    if as_json:
        from mlinfra.console import print_json

        return print_json({"mlinfra": __version__, "terraform": terraform})
    typer.echo(f"mlinfra {__version__}\nterraform {terraform}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
