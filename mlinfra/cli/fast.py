"""`mlinfra up` and `mlinfra down` without typer: typer and its click take ~50 ms to import and
to build the command group, as long as the rest of mlinfra's start-up, on the two commands that
run most often in CI. So ``mlinfra.__main__`` parses their usual command lines here and runs the
very functions the typer commands run (``cli.lifecycle``); anything else — ``--help``, an
unknown or repeated option, a missing value, ``-fVALUE``, ``--`` — returns None and typer
handles it (its messages, its exit code 2).

The options here are the typer commands' (``cli.stack``), which a test checks name by name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mlinfra.cli.shared import DEFAULT_FILE, ENV_VAR

_SHARED = {
    "--file": "file",
    "-f": "file",
    "--env": "env",
    "-e": "env",
    "--yes": "yes",
    "-y": "yes",
    "--json": "as_json",
}
OPTIONS = {
    "up": _SHARED
    | {
        "--no-verify": "no_verify",
        "--no-wait": "no_wait",
        "--junit": "junit",
        "--no-zone-fallback": "no_zone_fallback",
    },
    "down": _SHARED | {"--force": "force"},
}
VALUED = frozenset({"file", "env", "junit"})  # options that take a value; the others are flags


def parse(command: str, args: list[str]) -> dict | None:
    """The command's parameters from ``args``, or None when typer should parse them."""
    options = OPTIONS.get(command)
    if options is None:
        return None
    values: dict = {name: False for name in options.values() if name not in VALUED}
    given: set[str] = set()
    tokens = iter(args)
    for token in tokens:
        name, equals, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        param = options.get(name)
        if param is None or param in given:
            return None
        given.add(param)
        if param not in VALUED:
            if equals:
                return None  # --yes=...: typer says why that is wrong
            values[param] = True
            continue
        value = inline if equals else next(tokens, None)
        if not value or value.startswith("-"):
            return None
        values[param] = Path(value) if param in ("file", "junit") else value
    values.setdefault("file", DEFAULT_FILE)
    values.setdefault("env", os.environ.get(ENV_VAR) or None)  # like click: an empty variable is unset
    if command == "up":
        values.setdefault("junit", None)
    return values


def run(argv: list[str]) -> int | None:
    """Run ``argv`` (``["up", ...]``) to its exit code; None when typer should run it."""
    values = parse(argv[0], argv[1:]) if argv else None
    if values is None:
        return None
    from mlinfra.cli import lifecycle
    from mlinfra.cli.shared import failed
    from mlinfra.errors import MlinfraError

    try:
        return (lifecycle.run_up if argv[0] == "up" else lifecycle.run_down)(**values)
    except MlinfraError as exc:
        return failed(exc)
    except KeyboardInterrupt:  # as the typer group does: the interrupt's own message was shown
        return 130
    except BrokenPipeError:  # as click does: a reader that went away (`| head`) is exit 1, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit goes nowhere
        return 1
