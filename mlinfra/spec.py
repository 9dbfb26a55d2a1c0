"""The stack: what the user asked for, as typed, validated objects.

``Stack.load("mlinfra.toml")`` and ``Stack(name=..., compute=Compute(...))``
build the same object. Every check runs in ``__post_init__``, so a stack that
exists is a valid stack: no later step has to re-check user input. Errors are
``SpecError`` with the key path (``compute.gpu``) and, from a file, its name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mlinfra import environments, targets
from mlinfra.clouds.gcp import catalog
from mlinfra.errors import SpecError
from mlinfra.fields import Section, describe, in_range, one_of
from mlinfra.ops.cost import CostLimits
from mlinfra.targets.serve.section import Autoscale, refuse_replicas_with_autoscale
from mlinfra.verify.section import Verify
from mlinfra.workload import Model, check_serve

_GCP_NAME = re.compile(catalog.NAME_PATTERN)
# GCP caps names at 63 characters; the longest name made from the stack's is an autoscaled
# stack's worker group "<stack>-<region>-workers" (targets/serve/gcp.py), and the longest GPU
# region ("northamerica-northeast2") is 23, so the stack name gets what is left.
NAME_MAX = 30
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(rf"^{catalog.REGION_PATTERN}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_ENV = re.compile(r"^env:[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_SM = re.compile(r"^sm:projects/[a-z0-9][a-z0-9-]{4,61}/secrets/[A-Za-z0-9_-]{1,255}/versions/(latest|[0-9]+)$")
_ZONE = re.compile(rf"^{catalog.ZONE_PATTERN}$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,254}[a-z0-9]$")
# gcp.disk_kms_key: project, KMS location ("global", "us-central1"), key ring and key names (≤ 63 of [A-Za-z0-9_-]).
_KMS_KEY = re.compile(
    r"^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/locations/[a-z][a-z0-9-]*[a-z0-9]"
    r"/keyRings/[A-Za-z0-9_-]{1,63}/cryptoKeys/[A-Za-z0-9_-]{1,63}$"
)
_SERVICE_ACCOUNT = re.compile(
    r"^[a-z0-9][a-z0-9-]{4,62}@[a-z0-9.-]+\.iam\.gserviceaccount\.com$|"
    r"^[0-9]+-compute@developer\.gserviceaccount\.com$"
)


def _check_cidrs(key: str, cidrs: tuple[str, ...]) -> None:
    for i, cidr in enumerate(cidrs):
        try:
            ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise SpecError(f"{key}[{i}]", f"{cidr!r} is not a valid CIDR range ({exc})") from None


def _check_regions(key: str, regions: tuple[str, ...], known: list[str] | None) -> None:
    if not regions:
        raise SpecError(key, "needs at least one region")
    for i, region in enumerate(regions):
        if known is not None and region not in known:
            raise SpecError(f"{key}[{i}]", f"unknown GPU region {region!r}" + catalog.did_you_mean(region, known))
        if known is None and not _GCP_NAME.match(region):
            raise SpecError(
                f"{key}[{i}]", f"{region!r} is not a valid region name: use lowercase letters, digits and hyphens"
            )
    if len(set(regions)) != len(regions):
        dup = next(r for r in regions if regions.count(r) > 1)
        raise SpecError(key, f"region {dup!r} is listed twice")


DEFAULT_GCP_REGIONS = ("us-central1",)


@dataclass(frozen=True)
class Gcp(Section):
    _key: ClassVar[str] = "gcp"
    project: str = ""
    regions: tuple[str, ...] = DEFAULT_GCP_REGIONS
    # Zones to use, in order of preference; each must be in one of `regions`. Empty: mlinfra picks
    # the first zone that offers the GPU in each region (and says so). Replicas spread over them.
    zones: tuple[str, ...] = ()
    network: str = "default"  # the VPC network for nodes and firewall rules
    service_account: str = ""  # email; empty: the nodes get no service account (no Google API access)
    # Boot image. Empty: a Deep Learning VM family with a driver new enough for the GPU (Ubuntu LTS
    # without one). A bare name is a Deep Learning VM family; "project/family" or a full path is used as is.
    image: str = ""
    # What GCP does when it reclaims a Spot VM: STOP keeps the disk (restart it later), DELETE removes it.
    spot_termination: str = "STOP"
    # false: the nodes get no external IP; mlinfra and clients reach them on their internal address,
    # so run mlinfra from inside the VPC (a VPN, Interconnect, a bastion or a runner in the network).
    public_ip: bool = True
    # A customer-managed Cloud KMS key for the boot disks, "projects/P/locations/L/keyRings/R/cryptoKeys/K";
    # empty: Google-managed encryption.
    disk_kms_key: str = ""

    def _check(self) -> None:
        if self.project and not _PROJECT_ID.match(self.project):
            raise SpecError(
                "gcp.project",
                f"{self.project!r} is not a valid project ID: 6–30 lowercase letters, digits and hyphens, starting with a letter",
            )
        for i, region in enumerate(self.regions):
            if not _REGION.match(region):
                raise SpecError(
                    f"gcp.regions[{i}]",
                    f"{region!r} is not a region name (like 'us-central1')"
                    + catalog.did_you_mean(region, catalog.gcp_regions()),
                )
        # The default region is one of the catalog's (a test pins it): a stack that keeps it, as every
        # local stack does, is checked without reading the catalog.
        known = list(self.regions) if self.regions == DEFAULT_GCP_REGIONS else catalog.gcp_regions()
        _check_regions("gcp.regions", self.regions, known)
        for i, zone in enumerate(self.zones):
            if not _ZONE.match(zone):
                raise SpecError(f"gcp.zones[{i}]", f"{zone!r} is not a zone name (like 'us-central1-a')")
            region = catalog.region_of(zone)
            if region not in self.regions:
                raise SpecError(
                    f"gcp.zones[{i}]",
                    f"{zone} is in {region}, which is not in gcp.regions "
                    f"({', '.join(self.regions)}): add {region!r} to gcp.regions",
                )
        if dup := next((z for z in self.zones if self.zones.count(z) > 1), None):
            raise SpecError("gcp.zones", f"zone {dup!r} is listed twice")
        if not _GCP_NAME.match(self.network) or len(self.network) > 63:
            raise SpecError("gcp.network", f"{self.network!r} is not a network name (like 'default')")
        if self.service_account and not _SERVICE_ACCOUNT.match(self.service_account):
            raise SpecError(
                "gcp.service_account",
                f"{self.service_account!r} is not a service account email "
                "(like 'name@project.iam.gserviceaccount.com')",
            )
        if self.image and (not _IMAGE.match(self.image) or "//" in self.image):
            raise SpecError(
                "gcp.image",
                f"{self.image!r} is not an image: use a Deep Learning VM family name, "
                "'project/family' or 'projects/P/global/images/family/F'",
            )
        termination = self.spot_termination.upper()
        if termination not in ("STOP", "DELETE"):
            raise SpecError("gcp.spot_termination", f"{self.spot_termination!r} is not one of 'STOP', 'DELETE'")
        object.__setattr__(self, "spot_termination", termination)
        if self.disk_kms_key and not _KMS_KEY.fullmatch(self.disk_kms_key):
            version = "/cryptoKeyVersions/" in self.disk_kms_key
            raise SpecError(
                "gcp.disk_kms_key",
                f"{self.disk_kms_key!r} is not a Cloud KMS key: use "
                "'projects/P/locations/L/keyRings/R/cryptoKeys/K'"
                + (" (the key itself, without /cryptoKeyVersions/...)" if version else ""),
            )


@dataclass(frozen=True)
class Local(Section):
    _key: ClassVar[str] = "local"
    regions: tuple[str, ...] = ("local",)

    def _check(self) -> None:
        _check_regions("local.regions", self.regions, None)


@dataclass(frozen=True)
class Compute(Section):
    _key: ClassVar[str] = "compute"
    gpu: str = "none"
    gpu_count: int = field(default=1, metadata=in_range(1, 16))
    machine_type: str = ""
    replicas: int = field(default=1, metadata=in_range(1, 20))
    spot: bool = False
    disk_gb: int = field(default=100, metadata=in_range(10, 65536))

    def _check(self) -> None:
        gpu = self.gpu.strip().lower()
        object.__setattr__(self, "gpu", gpu)
        if gpu != "none":
            try:
                catalog.lookup_gpu(gpu)
            except SpecError as exc:  # UnknownGpu: the catalog's word, placed at its key
                raise exc.at("compute.gpu") from None
        if self.machine_type and not _GCP_NAME.match(self.machine_type):
            raise SpecError(
                "compute.machine_type", f"{self.machine_type!r} is not a machine type name (like 'n1-standard-4')"
            )

    @property
    def accelerator(self) -> catalog.Gpu | None:
        """The catalog entry for ``gpu``, or None for a CPU-only stack."""
        return None if self.gpu == "none" else catalog.lookup_gpu(self.gpu)


@dataclass(frozen=True)
class Serve(Section):
    _key: ClassVar[str] = "serve"
    # Run by /bin/sh on each node, with PORT set to the node's port.
    command: str = "mlinfra serve"
    port: int = field(default=8000, metadata=in_range(1, 65535))
    health_path: str = "/health"
    allow_cidrs: tuple[str, ...] = ("10.0.0.0/8",)
    ssh_cidrs: tuple[str, ...] = ()
    public: bool = False
    env: dict[str, str] = field(default_factory=dict)
    # Environment variable for the server → where its value comes from, never the value itself:
    # "env:NAME" (the operator's environment when the node starts; local target) or
    # "sm:projects/P/secrets/S/versions/V" (Secret Manager, read on the node; GCP).
    secrets: dict[str, str] = field(default_factory=dict)
    image: str = ""  # a container image to run, with serve.command as its arguments (mlinfra.workload)
    setup: tuple[str, ...] = ()  # shell steps run once per node before its first start, in order

    def _check(self) -> None:
        check_serve(self)  # command, image, setup
        if not self.health_path.startswith("/") or any(c.isspace() for c in self.health_path):
            raise SpecError(
                "serve.health_path", f"{self.health_path!r} must be a URL path starting with '/', like '/health'"
            )
        _check_cidrs("serve.allow_cidrs", self.allow_cidrs)
        _check_cidrs("serve.ssh_cidrs", self.ssh_cidrs)
        open_world = [c for c in self.allow_cidrs + self.ssh_cidrs if ipaddress.ip_network(c).prefixlen == 0]
        if open_world and not self.public:
            raise SpecError(
                "serve.allow_cidrs",
                f"{open_world[0]!r} opens the port to the whole internet; set serve.public = true to mean it",
            )
        for name in self.env:
            if not _ENV_NAME.match(name):
                raise SpecError(f"serve.env.{name}", "is not a valid environment variable name")
        for name, ref in self.secrets.items():
            if not _ENV_NAME.match(name):
                raise SpecError(f"serve.secrets.{name}", "is not a valid environment variable name")
            if name in self.env:
                raise SpecError(f"serve.secrets.{name}", "is also in serve.env: keep one of them")
            if not (_SECRET_ENV.match(ref) or _SECRET_SM.match(ref)):
                raise SpecError(
                    f"serve.secrets.{name}",
                    f"{ref!r} is not a secret reference: use 'env:NAME' or "
                    "'sm:projects/PROJECT/secrets/SECRET/versions/VERSION'",
                )


@dataclass(frozen=True)
class State(Section):
    _key: ClassVar[str] = "state"
    backend: str = field(default="local", metadata=one_of("local", "gcs"))
    bucket: str = ""
    prefix: str = ""
    endpoint: str = ""

    def _check(self) -> None:
        if self.backend == "gcs" and not self.bucket:
            raise SpecError("state.bucket", "is required when state.backend = 'gcs'")
        if self.bucket and (not _BUCKET.match(self.bucket) or ".." in self.bucket or self.bucket.startswith("goog")):
            raise SpecError(
                "state.bucket",
                f"{self.bucket!r} is not a valid bucket name: 3–63 lowercase letters, digits, '-', '_' and '.'",
            )
        if self.endpoint and not re.match(r"^https?://[^\s/]+", self.endpoint):
            raise SpecError("state.endpoint", f"{self.endpoint!r} must be an http(s):// URL")


_SECTIONS = dict(gcp=Gcp, local=Local, compute=Compute, serve=Serve, state=State, verify=Verify)
_SECTIONS |= dict(autoscale=Autoscale, cost=CostLimits, model=Model)  # tables declared beside what they drive


@dataclass(frozen=True)
class StackSpec(Section):
    """A whole stack. ``path`` (where it was loaded from) is not part of equality."""

    name: str
    target: str = field(default="local", metadata=one_of(*targets.NAMES))
    protected: bool = False
    gcp: Gcp = field(default_factory=Gcp)
    local: Local = field(default_factory=Local)
    compute: Compute = field(default_factory=Compute)
    serve: Serve = field(default_factory=Serve)
    state: State = field(default_factory=State)
    verify: Verify = field(default_factory=Verify)
    autoscale: Autoscale | None = None  # absent: a fixed compute.replicas per region
    model: Model | None = None  # absent: the server brings its own model
    cost: CostLimits = field(default_factory=CostLimits)
    path: Path | None = field(default=None, compare=False, repr=False)
    # Where the nodes go, as the target resolved it while checking the stack (computed once).
    placement: Any = field(default=None, compare=False, repr=False, init=False)
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False, init=False)  # "serve.port", ...
    environment: str = field(default="", compare=False, repr=False, init=False)  # [env.<name>] it was loaded as

    def __post_init__(self) -> None:
        refuse_replicas_with_autoscale(self.compute, self.autoscale)
        for key, cls in _SECTIONS.items():
            value = getattr(self, key)
            if isinstance(value, dict):  # Stack(compute={"gpu": "t4"}) is accepted too
                object.__setattr__(self, key, _build(cls, value, key))
                object.__setattr__(self, "given", self.given | {f"{key}.{name}" for name in value})
                if key == "verify":  # Stack(verify={...}): the table says what it gave (load: the file)
                    self.verify.apply_protocol_defaults(self.given)
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))
        super().__post_init__()

    def _check(self) -> None:
        if not _GCP_NAME.match(self.name):
            suggestion = suggest_name(self.name)
            hint = f" — did you mean {suggestion!r}?" if suggestion and _GCP_NAME.match(suggestion) else ""
            raise SpecError(
                "name",
                f"{self.name!r} is not a valid name: use lowercase letters, digits and hyphens, "
                f"starting with a letter (GCP naming rules){hint}",
            )
        if len(self.name) > NAME_MAX:
            raise SpecError(
                "name",
                f"{self.name!r} is {len(self.name)} characters; at most {NAME_MAX} "
                "(node names add region and replica, and GCP allows 63)",
            )
        # The target's own rules (GCP: GPU, machine type and zones), before any cloud call.
        object.__setattr__(self, "placement", self.driver.validate(self))

    @property
    def driver(self):
        """The stack's target (``targets.base.Driver``); Ray Serve's with ``[autoscale]``."""
        return targets.driver(self.target, autoscale=self.autoscale is not None)

    @property
    def regions(self) -> tuple[str, ...]:
        return self.driver.regions(self)

    @property
    def workdir(self) -> Path:
        """``.mlinfra/<name>/`` beside the stack file (or the current directory)."""
        base = self.path.parent if self.path else Path.cwd()
        return base.resolve() / ".mlinfra" / self.name

    @classmethod
    def load(cls, path: str | Path, env: str | None = None):
        """Read and validate a stack file (with ``env``: that environment of it, see
        ``environments``); errors name the file and the key."""
        path = Path(path)
        try:
            spec, data, chosen = environments.load(path, env, lambda table: _build(cls, table, "", path=path), NAME_MAX)
        except SpecError as exc:
            raise exc.with_source(str(path)) from None
        keys = {f"{section}.{name}" for section, table in data.items() if isinstance(table, dict) for name in table}
        object.__setattr__(spec, "given", spec.given | keys)  # what the file wrote, not the defaults
        spec.verify.apply_protocol_defaults(spec.given)
        object.__setattr__(spec, "environment", chosen or "")
        return spec


def suggest_name(text: str) -> str:
    """Fold to GCP naming rules (lowercase, digits, hyphens, a letter first, ≤ NAME_MAX): 'rel-ünï' → 'rel-uni'; or ''."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    name = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower())
    name = re.sub(r"^[^a-z]+", "", name)  # a letter first: drops leading digits and hyphens
    return name[:NAME_MAX].rstrip("-")


def _build(cls, data: dict, key: str, **extra):
    """Construct a section from a TOML table, refusing unknown and missing keys."""
    # compare=False marks bookkeeping (StackSpec.path), which no file may set.
    names = [f.name for f in dataclasses.fields(cls) if f.compare]
    prefix = f"{key}." if key else ""
    for name in data:
        if name not in names:
            raise SpecError(prefix + name, "unknown key" + catalog.did_you_mean(name, names))
    for f in dataclasses.fields(cls):
        if f.name not in data and f.compare and f.default is f.default_factory is dataclasses.MISSING:
            raise SpecError(prefix + f.name, "required key is missing")
    kwargs = dict(data)
    sections = _SECTIONS if issubclass(cls, StackSpec) else {}
    if sections and isinstance(data.get("compute"), dict):  # before the tables become objects
        refuse_replicas_with_autoscale(data["compute"], data.get("autoscale"))
    for name, section in sections.items():
        if name in kwargs:
            if not isinstance(kwargs[name], dict):
                raise SpecError(name, f"expected a table [{name}], got {describe(kwargs[name])}")
            kwargs[name] = _build(section, kwargs[name], name)
    return cls(**kwargs, **extra)
