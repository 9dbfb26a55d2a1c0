"""The `mlinfra` command: a thin layer over ``mlinfra.api``.

Each command loads the stack, calls one API method and shows its result.
Exit codes: 0 success, 1 the operation failed, 2 bad input, 130 interrupted.
``MLINFRA_DEBUG=1`` shows tracebacks for expected failures too.

``app`` (typer) loads on first use: ``mlinfra up`` and ``down`` usually run without it
(``cli.fast``), and importing this package must not cost them typer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def _app() -> Any:
    from mlinfra.cli.common import app

    # Each module registers its commands; the import order is the order `mlinfra --help` lists them.
    # isort: off
    from mlinfra.cli import stack, cost, ops, tools, state  # noqa: F401
    # isort: on

    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        return _app()
    raise AttributeError(f"module 'mlinfra.cli' has no attribute {name!r}")


def main() -> None:
    _app()()  # expected failures become one line and an exit code in common._Commands.invoke
