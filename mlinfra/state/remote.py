"""Remote state on GCS: the bucket, its history, and bringing an old version back.

Terraform's ``gcs`` backend stores the state as ``<prefix>/default.tfstate``.
With object versioning on, every apply leaves a generation behind; that is the
history ``state history`` lists and ``state restore`` brings back (as a new
version on top, so even a restore can be undone).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from mlinfra.errors import MlinfraError, UsageError
from mlinfra.state import gcs
from mlinfra.timeutil import iso


@dataclass
class BootstrapResult:
    bucket: str
    created: bool
    settings: dict = field(default_factory=dict)  # what the server reports, read back
    mismatches: list[str] = field(default_factory=list)  # requested but not in effect


@dataclass
class Generation:
    generation: int
    updated: str
    size: int
    current: bool


@dataclass
class RestorePlan:
    generation: int
    only_in_current: list[str]
    only_in_restored: list[str]
    restored_serial: int
    current_serial: int


def _prefix(stack) -> str:
    return stack.backend.prefix


def _require_gcs(stack) -> None:
    if stack.state.backend != "gcs":
        raise UsageError(f'stack {stack.name!r} keeps its state locally; set [state] backend = "gcs" and a bucket')


def bootstrap(stack) -> BootstrapResult:
    """Create the state bucket if missing (versioned, uniform access, no public access); idempotent.

    Reads the bucket back afterwards and reports every setting that is not as requested,
    so the user learns when a server (an emulator, an org policy) ignored one.
    """
    _require_gcs(stack)
    state = stack.state
    client = gcs.client(state, stack.gcp.project)
    location = stack.driver.bucket_location(stack.spec)
    labels = {"stack": stack.name, "managed-by": "mlinfra"}
    with gcs.errors(state, "bootstrapping the state bucket"):
        bucket = client.lookup_bucket(state.bucket, retry=gcs.retry(), timeout=gcs.DEADLINE_S)
        created = bucket is None
        if created:
            bucket = client.bucket(state.bucket)
            _apply_settings(bucket, labels)
            bucket = client.create_bucket(bucket, location=location, retry=gcs.retry(), timeout=gcs.DEADLINE_S)
        else:
            public = _publicly_readable(bucket)
            if public:
                raise MlinfraError(
                    f"bucket gs://{state.bucket} is publicly readable (allUsers or "
                    "allAuthenticatedUsers in its IAM policy); refusing to keep state in it"
                )
            _apply_settings(bucket, {**(bucket.labels or {}), **labels})
            bucket.patch(retry=gcs.retry(), timeout=gcs.DEADLINE_S)
        bucket.reload(retry=gcs.retry(), timeout=gcs.DEADLINE_S)
    settings = {
        "versioning": bool(bucket.versioning_enabled),
        "uniform_bucket_level_access": bool(bucket.iam_configuration.uniform_bucket_level_access_enabled),
        "public_access_prevention": bucket.iam_configuration.public_access_prevention or "unspecified",
        "location": bucket.location,
        "labels": dict(bucket.labels or {}),
    }
    wanted = {"versioning": True, "uniform_bucket_level_access": True, "public_access_prevention": "enforced"}
    mismatches = [
        f"{key}: asked {value!r}, bucket has {settings[key]!r}"
        for key, value in wanted.items()
        if settings[key] != value
    ]
    mismatches += [
        f"labels.{k}: asked {v!r}, bucket has {settings['labels'].get(k)!r}"
        for k, v in labels.items()
        if settings["labels"].get(k) != v
    ]
    if not created and public is None:
        mismatches.append("public access: the server has no IAM policy to check (an emulator?)")
    return BootstrapResult(state.bucket, created, settings, mismatches)


def _apply_settings(bucket, labels: dict) -> None:
    bucket.versioning_enabled = True
    bucket.iam_configuration.uniform_bucket_level_access_enabled = True
    bucket.iam_configuration.public_access_prevention = "enforced"
    bucket.labels = labels


def _publicly_readable(bucket) -> bool | None:
    """allUsers / allAuthenticatedUsers in the bucket's IAM policy; None when there is no policy
    to read (an emulator has no IAM endpoint)."""
    from google.api_core import exceptions as gexc

    try:
        policy = bucket.get_iam_policy(retry=None, timeout=gcs.DEADLINE_S)
    except (gexc.NotFound, gexc.MethodNotImplemented, gexc.BadRequest):
        return None
    members = {member for binding in policy.bindings for member in binding.get("members", ())}
    return bool(members & {"allUsers", "allAuthenticatedUsers"})


def history(stack) -> list[Generation]:
    """Every stored version of the state object, newest first."""
    _require_gcs(stack)
    state = stack.state
    name = gcs.state_object(_prefix(stack))
    with gcs.errors(state, "listing state history"):
        client = gcs.client(state, stack.gcp.project)
        # versions="true", not True: the library would send "True", which fake-gcs-server (unlike
        # GCS) does not take as true, and the history would silently shrink to one entry.
        blobs = [
            b
            for b in client.list_blobs(
                state.bucket, prefix=name, versions="true", retry=gcs.retry(), timeout=gcs.DEADLINE_S
            )
            if b.name == name
        ]
        live = client.bucket(state.bucket).get_blob(name, retry=gcs.retry(), timeout=gcs.DEADLINE_S)
    current = live.generation if live is not None else None
    rows = [
        Generation(b.generation, _iso(b.updated or b.time_created), int(b.size or 0), b.generation == current)
        for b in blobs
    ]
    return sorted(rows, key=lambda g: g.generation, reverse=True)


def read_generation(stack, generation: int) -> dict:
    state = stack.state
    name = gcs.state_object(_prefix(stack))
    with gcs.errors(state, f"reading state generation {generation}"):
        blob = gcs.client(state, stack.gcp.project).bucket(state.bucket).blob(name, generation=generation)
        text = blob.download_as_text(retry=gcs.retry(), timeout=gcs.DEADLINE_S)
    return json.loads(text)


def read_current(state, prefix: str, project: str = "") -> dict | None:
    """The state object as Terraform's gcs backend last wrote it (None: there is none yet)."""
    name = gcs.state_object(prefix)
    with gcs.errors(state, "reading the state"):
        blob = gcs.client(state, project).bucket(state.bucket).get_blob(name, retry=gcs.retry(), timeout=gcs.DEADLINE_S)
        text = blob.download_as_text(retry=gcs.retry(), timeout=gcs.DEADLINE_S) if blob is not None else None
    try:
        return json.loads(text) if text else None
    except ValueError as exc:  # a truncated or foreign object: one line, like every other way of failing
        raise MlinfraError(f"reading the state: gs://{state.bucket}/{name} is not Terraform state ({exc})") from None


def plan_restore(stack, generation: int, current: dict) -> RestorePlan:
    """What restoring ``generation`` would change, compared with ``current`` (state pull)."""
    _require_gcs(stack)
    if generation not in {g.generation for g in history(stack)}:
        raise UsageError(f"no state generation {generation}; `mlinfra state history` lists them")
    old = read_generation(stack, generation)
    now, then = _addresses(current), _addresses(old)
    return RestorePlan(
        generation, sorted(now - then), sorted(then - now), int(old.get("serial", 0)), int(current.get("serial", 0))
    )


def restored_state(stack, generation: int, current: dict) -> dict:
    """The old state with a serial above the current one, so Terraform accepts it as newest."""
    old = read_generation(stack, generation)
    if current.get("lineage") and old.get("lineage") != current.get("lineage"):
        raise MlinfraError(f"generation {generation} belongs to another state (lineage differs); not restoring")
    return {**old, "serial": int(current.get("serial", 0)) + 1}


def _addresses(state: dict) -> set[str]:
    found = set()
    for resource in state.get("resources", []):
        if resource.get("mode") != "managed":
            continue
        base = f"{resource.get('module') + '.' if resource.get('module') else ''}{resource['type']}.{resource['name']}"
        for instance in resource.get("instances", []):
            key = instance.get("index_key")
            found.add(base if key is None else f"{base}[{json.dumps(key)}]")
    return found


def _iso(value) -> str:
    if isinstance(value, dt.datetime):
        return iso(value)
    return str(value or "")
