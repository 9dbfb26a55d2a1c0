"""The GCP target: GPU placement rules and the values for templates/gcp/.

(Stub: the GCP target is being built; see issue 3.)
"""

from __future__ import annotations

from pathlib import Path

from mlinfra.errors import MlinfraError


def validate(stack) -> None:
    """Refuse what GCP would reject (GPU, machine type, count, zone), as SpecError."""


def tfvars(stack, workdir: Path) -> dict:
    raise MlinfraError("target 'gcp' is not available in this version")
