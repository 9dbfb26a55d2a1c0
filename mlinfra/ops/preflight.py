"""`mlinfra check`: is everything in place before the first cloud call?

Each item is checked independently and reported, so one run shows every
problem: the stack file, the engine, rendering, credentials, the state bucket,
and (with a provider schema file) the rendered module against that schema.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlinfra.errors import MlinfraError


@dataclass
class Item:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # ok, but worth knowing before an apply (reported as "warn")


def _credentials() -> Item:
    if os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN"):
        return Item("credentials", True, "GOOGLE_OAUTH_ACCESS_TOKEN is set")
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if path:
        return Item(
            "credentials",
            Path(path).is_file(),
            f"GOOGLE_APPLICATION_CREDENTIALS={path}" + ("" if Path(path).is_file() else " (no such file)"),
        )
    adc = Path.home() / ".config" / "gcloud" / "application_default_credentials.json"
    if adc.is_file():
        return Item("credentials", True, f"application default credentials in {adc}")
    return Item(
        "credentials",
        False,
        "none found: run `gcloud auth application-default login`, "
        "or use workload identity (CI), or set GOOGLE_OAUTH_ACCESS_TOKEN",
    )


def check(stack, schema: Path | None = None) -> list[Item]:
    """Run every preflight item; never raises for a failed item (it is reported)."""
    from mlinfra.engine import Terraform

    items = [Item("stack", True, f"{stack.name} ({stack.target}, {len(stack.regions)} region(s))")]
    try:
        items.append(Item("engine", True, f"Terraform {Terraform(Path.cwd()).version()}"))
    except MlinfraError as exc:
        items.append(Item("engine", False, exc.message))
    try:
        rendered = stack.render()
        items.append(Item("render", True, f"{len(rendered.files)} files in {rendered.workdir}"))
    except MlinfraError as exc:
        items.append(Item("render", False, exc.message))
        rendered = None
    if stack.driver.uses_google_cloud or stack.backend.remote:
        from mlinfra.state import gcs

        if not (stack.state.backend == "gcs" and gcs.endpoint(stack.state)):
            items.append(_credentials())
        if stack.state.backend == "gcs":
            items.append(_bucket(stack))
    if schema is not None:
        items.append(_schema(rendered.workdir if rendered else None, schema))
    for note in getattr(stack.driver, "reach_notes", lambda spec: [])(stack.spec):  # GCP: the latency path
        items.append(Item("reach", True, note.removeprefix("warning: "), warning=True))
    return items


def _bucket(stack) -> Item:
    from mlinfra.state import gcs

    try:
        with gcs.errors(stack.state, "checking the state bucket"):
            bucket = gcs.client(stack.state, stack.gcp.project).lookup_bucket(
                stack.state.bucket, retry=gcs.retry(), timeout=gcs.DEADLINE_S
            )
    except MlinfraError as exc:
        return Item("state bucket", False, exc.message)
    if bucket is None:
        return Item("state bucket", False, f"gs://{stack.state.bucket} does not exist: run `mlinfra state bootstrap`")
    versioned = "versioned" if bucket.versioning_enabled else "NOT versioned (no history to restore from)"
    return Item("state bucket", bool(bucket.versioning_enabled), f"gs://{stack.state.bucket}, {versioned}")


def _schema(workdir: Path | None, schema: Path) -> Item:
    from mlinfra.clouds.gcp import schema as provider_schema

    if workdir is None:
        return Item("schema", False, "nothing rendered to check")
    try:
        problems = provider_schema.check_module(workdir, schema)
    except MlinfraError as exc:
        return Item("schema", False, exc.message)
    if problems:
        return Item(
            "schema",
            False,
            "; ".join(str(p) for p in problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""),
        )
    return Item("schema", True, f"the rendered module conforms to {schema}")
