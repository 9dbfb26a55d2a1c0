"""Environments: one stack file, several deployments (``[env.dev]``, ``[env.prod]``, ...).

An ``[env.<name>]`` table overrides any key of the stack, deep-merged (tables merge key by key,
anything else replaces): ``[env.prod.compute] replicas = 3``. Selecting an environment makes it a
deployment of its own: the stack's name becomes ``<name>-<env>``, so its work dir
(``.mlinfra/<name>-<env>``), its local state and lock, its node names and its GCP labels all carry
the environment, and a GCS state prefix gets ``/<env>`` appended (the default one already names
the stack), so no two environments ever share state.

A file that defines environments must say which one a command means (``--env``, ``MLINFRA_ENV``
or ``default_env``): nothing deploys "the default" by accident. Every environment is validated
on every load, so a typo in ``[env.prod]`` is found while working on dev; but checks that depend
on this machine (a local model path exists) apply to the chosen environment only
(``machine_checks``): dev's gitignored ``./weights`` must not fail ``--env prod`` in CI.

This module reads the file and shapes its data; building sections is the spec's job, handed in
as ``build`` (so this module does not import the spec, which imports it).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from mlinfra.clouds.gcp import catalog
from mlinfra.errors import SpecError
from mlinfra.fields import describe

ENV_KEY = "env"
DEFAULT_KEY = "default_env"
# Environment names end up in resource names and label values: GCP's naming rules apply.
_ENV_NAME = re.compile(catalog.NAME_PATTERN)
# Keys an environment may not override: the identity of the stack, and the environments themselves.
_FIXED = ("name", ENV_KEY, DEFAULT_KEY)
# False while another environment than the chosen one is built: its shape is checked, not this machine.
_MACHINE_CHECKS: ContextVar[bool] = ContextVar("mlinfra_machine_checks", default=True)


def machine_checks() -> bool:
    """Whether validation may look at this machine (a local path exists): not while building an
    environment the command did not choose, whose files may live only on another machine."""
    return _MACHINE_CHECKS.get()


@contextmanager
def shape_only() -> Iterator[None]:
    """Validate the stacks built inside for shape only: no check of this machine's files."""
    token = _MACHINE_CHECKS.set(False)
    try:
        yield
    finally:
        _MACHINE_CHECKS.reset(token)


def read(path: Path) -> dict[str, Any]:
    """The stack file's TOML as a dict; every way of failing is one SpecError naming the file."""
    source = str(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError("", "no such stack file (pass --file, or create mlinfra.toml)", source=source) from None
    except IsADirectoryError:
        raise SpecError("", "is a directory, not a stack file", source=source) from None
    except UnicodeDecodeError:
        raise SpecError("", "is not UTF-8 text", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError("", f"invalid TOML: {exc}", source=source) from None
    except OSError as exc:  # a symlink loop, a permission, an I/O error: still one line
        raise SpecError("", f"cannot read the stack file: {exc.strerror or exc}", source=source) from None


def tables(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The file's ``[env.<name>]`` tables (empty when it has none), checked for shape and names."""
    envs = data.get(ENV_KEY, {})
    if not isinstance(envs, dict):
        raise SpecError(ENV_KEY, f"expected tables [env.<name>], like [env.dev] and [env.prod], got {describe(envs)}")
    for name, table in envs.items():
        if not _ENV_NAME.match(name):
            raise SpecError(
                f"{ENV_KEY}.{name}",
                "is not a valid environment name: lowercase letters, digits and hyphens, starting with a letter "
                "(it becomes part of resource names)",
            )
        if not isinstance(table, dict):
            raise SpecError(f"{ENV_KEY}.{name}", f"expected a table [env.{name}], got {describe(table)}")
        for key in _FIXED:
            if key in table:
                raise SpecError(f"{ENV_KEY}.{name}.{key}", "cannot be set per environment")
    return envs


def select(data: dict[str, Any], env: str | None) -> str | None:
    """The environment a command means: ``env`` if given, else the file's ``default_env``; None for a
    file without environments. Raises SpecError when it cannot tell, or the name is unknown."""
    envs = tables(data)
    default = data.get(DEFAULT_KEY)
    names = sorted(envs)
    listed = ", ".join(names)
    if default is not None:
        if not envs:
            raise SpecError(DEFAULT_KEY, "is set but the file defines no [env.<name>] tables")
        if default not in envs:
            raise SpecError(
                DEFAULT_KEY, f"{default!r} is not an environment of this file ({listed})" + _hint(default, names)
            )
    if env is None:
        if envs and default is None:
            raise SpecError(
                "",
                f"defines environments ({listed}): choose one with --env NAME (or MLINFRA_ENV), or set default_env",
            )
        return default
    if not envs:
        raise SpecError("", f"defines no environments, so --env {env} means nothing: add [env.{env}] or drop --env")
    if env not in envs:
        raise SpecError("", f"no environment {env!r}; the file defines {listed}" + _hint(str(env), names))
    return env


def effective(data: dict[str, Any], env: str | None) -> dict[str, Any]:
    """The stack's data as environment ``env`` sees it (``env`` None: the file without its
    environment keys)."""
    base = {key: value for key, value in data.items() if key not in (ENV_KEY, DEFAULT_KEY)}
    if env is None:
        return base
    merged = merge(base, tables(data)[env])
    name = merged.get("name")
    # A valid base name gets the suffix; an invalid one is left for the spec to report as written.
    if isinstance(name, str) and _ENV_NAME.match(name):
        merged["name"] = f"{name}-{env}"
    state = merged.get("state")
    if isinstance(state, dict) and isinstance(state.get("prefix"), str) and state["prefix"]:
        merged["state"] = {**state, "prefix": f"{state['prefix'].rstrip('/')}/{env}"}
    return merged


def check_name_budget(data: dict[str, Any], env: str, name_max: int) -> None:
    """The stack name plus ``-<env>`` must still fit GCP's 63-character names."""
    name = data.get("name")
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        return
    full = f"{name}-{env}"
    if len(full) > name_max:
        raise SpecError(
            f"{ENV_KEY}.{env}",
            f"the stack name with the environment, {full!r}, is {len(full)} characters; at most {name_max}: "
            f"GCP names add the region and more (an autoscaled stack's worker group is "
            f"<name>-<env>-<region>-workers) and GCP allows 63, so name ({len(name)}) "
            f"+ '-' + environment ({len(env)}) must stay within {name_max}",
        )


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: tables merge key by key, any other value replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def overrides(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """An environment's table as key paths: ``{"compute.replicas": 3}``."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(overrides(value, path + "."))
        else:
            flat[path] = value
    return flat


def attribute(exc: SpecError, data: dict[str, Any], env: str | None) -> SpecError:
    """An error about a key the environment set is reported at ``env.<name>.<key>``; any other
    error of an environment's stack says which environment it was."""
    if env is None:
        return exc
    for path in overrides(tables(data)[env]):
        if exc.key == path or exc.key.startswith((path + ".", path + "[")):
            return exc.at(f"{ENV_KEY}.{env}.{exc.key}")
    return SpecError(exc.key, f"{exc.detail} (environment {env!r})", source=exc.source, hint=exc.hint)


def load(
    path: Path, env: str | None, build: Callable[[dict[str, Any]], Any], name_max: int
) -> tuple[Any, dict, str | None]:
    """Read the file, build the chosen environment's stack (``build(data)``) and check every other
    environment's shape too (``shape_only``). Returns the stack, the data it was built from and
    the environment's name."""
    data = read(path)
    chosen = select(data, env)
    others = [name for name in sorted(tables(data)) if name != chosen]
    stack, built_from = None, {}
    for name in [chosen, *others]:
        if name is not None:
            check_name_budget(data, name, name_max)
        table = effective(data, name)
        try:
            if stack is None:  # the chosen environment (or a file without any)
                built = build(table)
            else:
                with shape_only():
                    built = build(table)
        except SpecError as exc:
            raise attribute(exc, data, name) from None
        if stack is None:
            stack, built_from = built, table
    return stack, built_from, chosen


def _hint(word: str, names: list[str]) -> str:
    return catalog.did_you_mean(word, names)
