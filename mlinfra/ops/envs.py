"""``mlinfra envs``: each environment of a stack file, what it overrides, and whether it is up.

Each environment is its own deployment (see ``mlinfra.environments``), so this loads every one as
a ``Stack`` and reads its own state: nothing is shared between them, nothing is changed. Read-only
means no render, no ``terraform init`` and no probe: the outputs come straight from the state (a
local file, or the GCS object). An environment whose state cannot be read (no credentials, a
bucket that does not answer) is listed as unknown, with the reason, and the others still are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlinfra import environments
from mlinfra.api import Stack
from mlinfra.errors import MlinfraError, SpecError
from mlinfra.jsondata import Result


@dataclass
class EnvironmentInfo(Result):
    name: str
    stack: str  # the deployment's name: <stack name>-<environment>
    default: bool  # the file's default_env
    overrides: dict[str, Any]  # key path -> value, as the [env.<name>] table writes them
    protected: bool
    deployed: bool | None  # None: unknown, the state could not be read (``unknown`` says why)
    endpoints: list[str] = field(default_factory=list)  # one per node ([autoscale]: the one in front)
    workdir: Path | None = None
    unknown: str = ""


@dataclass
class EnvironmentsResult(Result):
    file: Path
    default: str  # "" when the file sets no default_env
    environments: list[EnvironmentInfo] = field(default_factory=list)


def list_environments(path: str | Path) -> EnvironmentsResult:
    """Every environment of the stack file at ``path``, with its deployment's status."""
    path = Path(path)
    data = environments.read(path)
    try:
        tables = environments.tables(data)
        if tables:
            environments.select(data, min(tables))  # checks default_env names one of them
    except SpecError as exc:
        raise exc.with_source(str(path)) from None
    default = data.get(environments.DEFAULT_KEY) if tables else None
    result = EnvironmentsResult(path, default or "")
    for name in sorted(tables):
        # Shape only: a listing needs no file of this machine's (another environment's ./weights).
        with environments.shape_only():
            stack = Stack.load(path, name)
        info = EnvironmentInfo(
            name, stack.name, name == default, environments.overrides(tables[name]), stack.protected, False
        )
        info.workdir = stack.workdir
        try:
            outputs = stack.backend.read_outputs()
        except MlinfraError as exc:  # this environment's state only: the others are still listed
            info.deployed, info.unknown = None, str(exc)
        else:
            nodes = stack.driver.discover(outputs, stack.workspace) if outputs else []
            info.deployed = bool(nodes)
            # [autoscale]: one endpoint, the first region's Serve proxy (as `status` shows it).
            info.endpoints = [n.endpoint for n in nodes][: 1 if stack.spec.autoscale is not None else None]
        result.environments.append(info)
    return result
