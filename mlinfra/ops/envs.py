"""``mlinfra envs``: each environment of a stack file, what it overrides, and whether it is up.

Each environment is its own deployment (see ``mlinfra.environments``), so this loads every one as
a ``Stack`` and asks its own state: nothing is shared between them, nothing is changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlinfra import environments
from mlinfra.api import Stack
from mlinfra.errors import SpecError
from mlinfra.jsondata import Result


@dataclass
class EnvironmentInfo(Result):
    name: str
    stack: str  # the deployment's name: <stack name>-<environment>
    default: bool  # the file's default_env
    overrides: dict[str, Any]  # key path -> value, as the [env.<name>] table writes them
    protected: bool
    deployed: bool
    endpoints: list[str] = field(default_factory=list)  # one per node ([autoscale]: the one in front)
    workdir: Path | None = None


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
        stack = Stack.load(path, name)
        status = stack.status()
        endpoints = [status.endpoint] if status.endpoint else [node.endpoint for node in status.nodes]
        result.environments.append(
            EnvironmentInfo(
                name,
                stack.name,
                name == default,
                environments.overrides(tables[name]),
                stack.protected,
                status.deployed,
                endpoints,
                stack.workdir,
            )
        )
    return result
