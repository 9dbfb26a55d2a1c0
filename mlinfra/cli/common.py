"""What every command shares: the app and the common options; the helpers that need no typer
(errors, confirmation, progress) are ``cli.shared``'s, re-exported here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from mlinfra.cli.shared import (  # noqa: F401 (re-exported: the commands import them from here)
    DEFAULT_FILE,
    ENV_VAR,
    ask,
    confirm_migration,
    confirm_plan,
    failed,
    load,
    progress,
    show_notes,
    show_report,
)


class _Commands(TyperGroup):
    """The command group. Expected failures become one line on stderr and an exit code, never a
    traceback (``shared.failed``, which ``cli.fast`` uses too)."""

    def invoke(self, ctx):  # ctx: the click.Context that typer vendors
        from mlinfra.errors import MlinfraError

        try:
            return super().invoke(ctx)
        except MlinfraError as exc:
            raise typer.Exit(failed(exc)) from None
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
        envvar=ENV_VAR,
        help="Which [env.<name>] of the stack file (default: its default_env; required when it defines environments).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout (progress goes to stderr).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
JunitOpt = Annotated[Path | None, typer.Option("--junit", help="Write the verification as JUnit XML to this file.")]
