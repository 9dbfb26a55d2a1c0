"""Where a stack's Terraform state lives, and the lock that guards it for a whole operation.

``backend(spec, workspace)`` is what the API composes: local state (a file in the work dir,
an ``flock``) or GCS (Terraform's ``gcs`` backend, its own lock object). The modules below
hold the parts: ``lock`` (both locks), ``gcs`` (the bucket client), ``remote`` (bootstrap,
history, restore).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlinfra.spec import StackSpec
    from mlinfra.workspace import Workspace


def base_url(endpoint: str) -> str:
    from mlinfra.state.gcs import base_url as gcs_base_url

    return gcs_base_url(endpoint)


class LocalState:
    """State in ``<workdir>/terraform.tfstate``, guarded by an ``flock``."""

    kind = "local"
    remote = False  # state elsewhere: Terraform's first init writes it under its own lock

    def __init__(self, spec: StackSpec, workspace: Workspace):
        self.spec, self.workspace = spec, workspace

    def lock(self) -> Any:
        from mlinfra.state.lock import LocalLock

        return LocalLock(self.workspace.root)

    def config(self) -> dict[str, str] | None:
        """What goes into ``backend.tfbackend.json`` (None: no file)."""
        return None

    def terraform_env(self) -> dict[str, str]:
        return {}

    def check_reachable(self) -> None:
        pass

    def may_have_state(self) -> bool:
        """Whether anything may be deployed: here, only if the state file exists."""
        return self.workspace.local_state.is_file()

    def read_outputs(self) -> dict | None:
        """The module's outputs read straight from the state, without rendering or running
        Terraform (None: no state yet). For listings that must change nothing (`mlinfra envs`)."""
        from mlinfra.engine import local_outputs

        return local_outputs(self.workspace.root)


class GcsState(LocalState):
    """State in ``gs://<bucket>/<prefix>/default.tfstate``, locked by Terraform's own lock object."""

    kind = "gcs"
    remote = True

    @property
    def prefix(self) -> str:
        return self.spec.state.prefix or f"mlinfra/{self.spec.name}"

    def lock(self) -> Any:
        from mlinfra.state.lock import GcsLock

        return GcsLock(self.spec.state, self.prefix, self.spec.gcp.project)

    def config(self) -> dict[str, str]:
        config = {"bucket": self.spec.state.bucket, "prefix": self.prefix}
        if self.spec.state.endpoint:
            config["storage_custom_endpoint"] = base_url(self.spec.state.endpoint) + "/storage/v1/"
        return config

    def terraform_env(self) -> dict[str, str]:
        from mlinfra.state import gcs

        return gcs.terraform_env(self.spec.state)

    def check_reachable(self) -> None:
        from mlinfra.state import gcs

        gcs.check_reachable(self.spec.state)  # seconds, not Terraform's minutes of retries

    def may_have_state(self) -> bool:
        return True  # another machine may have applied it: ask the bucket

    def read_outputs(self) -> dict | None:
        """Read the state object from the bucket (no ``terraform init``); a bucket that cannot be
        reached or read raises ``MlinfraError`` in seconds, naming it."""
        from mlinfra.engine import state_outputs
        from mlinfra.state import remote

        state = remote.read_current(self.spec.state, self.prefix, self.spec.gcp.project)
        return state_outputs(state) if state is not None else None


def backend(spec: StackSpec, workspace: Workspace) -> LocalState:
    """The state backend the stack file asks for."""
    return GcsState(spec, workspace) if spec.state.backend == "gcs" else LocalState(spec, workspace)


def config_path(workspace: Workspace, state: LocalState) -> Path | None:
    """The backend config file Terraform's init reads, when the backend has one."""
    return workspace.backend_config if state.config() is not None else None
