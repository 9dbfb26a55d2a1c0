"""The `mlinfra` command: a thin layer over ``mlinfra.api``.

Each command loads the stack, calls one API method and shows its result.
Exit codes: 0 success, 1 the operation failed, 2 bad input, 130 interrupted.
``MLINFRA_DEBUG=1`` shows tracebacks for expected failures too.
"""

from mlinfra.cli.common import app

# Each module registers its commands; the import order is the order `mlinfra --help` lists them.
# isort: off
from mlinfra.cli import stack, cost, ops, tools, state  # noqa: E402,F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:
    app()  # expected failures become one line and an exit code in common._Commands.invoke
