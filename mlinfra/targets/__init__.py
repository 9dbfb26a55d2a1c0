"""Targets: where a stack's nodes run. One package per target; this registry is the only place
that lists them, and ``targets/<name>/`` the only place that knows what a target does.

A target package exposes ``DRIVER``, an instance of ``base.Driver``; ``driver(name)`` imports
it on first use, so a command on a local stack never imports the GCP code (or Ray).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlinfra.targets.base import Driver

NAMES = ("local", "gcp")  # the values `target = "..."` accepts, in the order docs list them


def driver(name: str, autoscale: bool = False) -> Driver:
    """The driver of target ``name`` (one of ``NAMES``); with ``autoscale``, the Ray Serve
    flavour of it (``targets/serve/<name>``), which imports Ray only when it operates."""
    if name not in NAMES:
        raise KeyError(f"no target {name!r}")
    module = f"mlinfra.targets.serve.{name}" if autoscale else f"mlinfra.targets.{name}"
    return importlib.import_module(module).DRIVER
