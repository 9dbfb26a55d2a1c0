"""What the commands share that needs no typer: loading the stack, confirming, progress, the
CI artefacts of a verification, and turning an expected failure into one line and an exit code.

``mlinfra up`` and ``down`` run without typer (``cli.fast``), so nothing here imports it at the
top: only a prompt on a terminal (``ask``) loads it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlinfra.errors import MlinfraError

DEFAULT_FILE = Path("mlinfra.toml")  # --file's default
ENV_VAR = "MLINFRA_ENV"  # --env's environment variable


def load(file: Path, env: str | None = None):
    from mlinfra.api import Stack

    return Stack.load(file, env or None)  # MLINFRA_ENV="" (a CI matrix without environments): none


def failed(exc: MlinfraError) -> int:
    """An expected failure as one line on stderr (and its hint); the exit code to end with.
    ``MLINFRA_DEBUG=1`` shows the traceback instead."""
    if os.environ.get("MLINFRA_DEBUG"):
        raise exc
    from mlinfra.console import err

    err.print(f"error: {exc.message}", style="red", markup=False)
    if exc.hint:
        err.print(f"hint: {exc.hint}", markup=False)
    return exc.exit_code


def ask(question: str, yes: bool) -> bool:
    """Yes with --yes; a prompt on a terminal; without a terminal, a refusal (bad input)."""
    from mlinfra.errors import UsageError

    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {question} without confirmation: stdin is not a terminal; pass --yes")
    import typer

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


def show_report(verification, as_json: bool, junit: Path | None) -> None:
    """Write the CI artefacts of a verification and, unless --json, show it."""
    from mlinfra.verify.report import append_step_summary, junit_xml, markdown

    if junit is not None:
        junit.write_text(junit_xml(verification.stack, verification.results, verification.elapsed_s))
    append_step_summary(markdown(verification.stack, verification.results))
    if not as_json:
        from mlinfra.console import print_verify

        print_verify(verification)


def show_notes(notes: list[str]) -> None:
    """The machine types and zones mlinfra chose, and a public-ingress warning, on stderr."""
    from mlinfra.console import err

    for note in notes:
        err.print(note, markup=False, style="yellow" if note.startswith("warning:") else None)
