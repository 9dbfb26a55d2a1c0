"""What every command shares: the app, the common options, errors, confirmation, progress."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup


class _Commands(TyperGroup):
    """The command group. Expected failures become one line on stderr and an exit code, never a
    traceback: the only place the CLI turns an ``MlinfraError`` into output."""

    def invoke(self, ctx):  # ctx: the click.Context that typer vendors
        from mlinfra.errors import MlinfraError

        try:
            return super().invoke(ctx)
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


app = typer.Typer(
    name="mlinfra",
    cls=_Commands,
    help="One stack file to a verified, disposable GPU inference deployment (Terraform underneath).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich_utils + markdown cost ~150 ms per run
)

FileOpt = Annotated[Path, typer.Option("--file", "-f", help="The stack file.", show_default=True)]
EnvOpt = Annotated[
    str | None,
    typer.Option(
        "--env",
        "-e",
        envvar="MLINFRA_ENV",
        help="Which [env.<name>] of the stack file (default: its default_env; required when it defines environments).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress goes to stderr).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DEFAULT_FILE = Path("mlinfra.toml")


def load(file: Path, env: str | None = None):
    from mlinfra.api import Stack

    return Stack.load(file, env or None)  # MLINFRA_ENV="" (a CI matrix without environments): none


def ask(question: str, yes: bool) -> bool:
    """Yes with --yes; a prompt on a terminal; without a terminal, a refusal (bad input)."""
    from mlinfra.errors import UsageError

    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {question} without confirmation: stdin is not a terminal; pass --yes")
    try:
        return typer.confirm(f"Do you want to {question}?", default=False, err=True)
    except typer.Abort:  # Ctrl-C (or end of input) at the prompt: an interrupt, and nothing changed
        from mlinfra.errors import Interrupted

        raise Interrupted("interrupted at the prompt: nothing was changed") from None


def confirm_plan(question: str, yes: bool):
    """The API's confirm callback: show the plan, then ask. With --yes there is none: nobody
    reviews, so the API plans and applies in one Terraform run (the plan is shown afterwards)."""
    if yes:
        return None
    from mlinfra.console import err, print_plan

    def confirm(summary) -> bool:
        print_plan(summary, err)
        return ask(question, yes)

    return confirm


def confirm_migration(yes: bool):
    """The API's migrate callback: copying state to a new backend needs a yes."""

    def migrate(old: str, new: str) -> bool:
        from mlinfra.console import err

        err.print(f"The state backend changed from {old} to {new}; Terraform will copy the state across.", markup=False)
        return ask(f"migrate the state from {old} to {new}", yes)

    return migrate


def progress():
    from mlinfra.console import ProgressPrinter

    return ProgressPrinter()


JunitOpt = Annotated[Path | None, typer.Option("--junit", help="Write the verification as JUnit XML to this file.")]


def show_report(verification, as_json: bool, junit: Path | None) -> None:
    """Write the CI artefacts of a verification and, unless --json, show it."""
    from mlinfra.verify.report import append_step_summary, junit_xml, markdown

    if junit is not None:
        junit.write_text(junit_xml(verification.stack, verification.results, verification.elapsed_s))
    append_step_summary(markdown(verification.stack, verification.results))
    if not as_json:
        from mlinfra.console import print_verify

        print_verify(verification)
