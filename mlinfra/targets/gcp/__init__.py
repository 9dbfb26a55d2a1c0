"""The GCP target: a ``google_compute_instance`` per region × replica (``templates/gcp/``).

Google Cloud's own facts and rules (catalog, GPU rules, stockout classification, schema
checker) live in ``mlinfra.clouds.gcp``, shared with every target that runs on Google Cloud;
this package is what the plain-VM target adds: its module's values (``module``), zone fallback
after a stockout, the GPU check over SSH, and what to forget when VMs go away.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from mlinfra import workload
from mlinfra.clouds.gcp import rules
from mlinfra.errors import EngineError, SpecError
from mlinfra.targets.base import Driver, Move, Placement, node_specs, read_json
from mlinfra.targets.gcp import module

# Summaries Terraform's `init` gives when it cannot get a provider (recorded with the bundled
# Terraform 1.15 offline: tests/data/gcp/init-*.json).
_PROVIDER_INSTALL_FAILURES = (
    "Failed to query available provider packages",
    "Failed to install provider",
    "Failed to install provider from shared cache",
    "Invalid provider registry host",
)
PLACEHOLDER_PROJECT = "your-gcp-project"  # what `mlinfra new --target gcp` writes for gcp.project


class GcpDriver(Driver):
    name = "gcp"
    templates = "gcp"
    shared_templates: tuple[str, ...] = ("node/workload.py",)
    node_resource = "google_compute_instance.node"
    rebuild_budget_s = 600.0  # the article's 10 minutes
    uses_google_cloud = True
    head_machine = ""  # the CPU VM in front of an [autoscale] stack's GPU workers (serve-gcp's driver)

    def regions(self, spec) -> tuple[str, ...]:
        return spec.gcp.regions

    def validate(self, spec) -> Placement:
        if not spec.gcp.project:
            raise SpecError("gcp.project", "is required when target = 'gcp'")
        for name, ref in spec.serve.secrets.items():
            if not ref.startswith("sm:"):
                raise SpecError(
                    f"serve.secrets.{name}",
                    f"{ref!r}: a GCP node reads its secrets from Secret Manager: "
                    "use 'sm:projects/P/secrets/S/versions/V'",
                )
            if not spec.gcp.service_account:
                raise SpecError(
                    f"serve.secrets.{name}",
                    "the node reads Secret Manager with its service account: "
                    "set gcp.service_account (with roles/secretmanager.secretAccessor on the secret)",
                )
        workload.check_gcp(spec)
        if spec.serve.public and not spec.gcp.public_ip:
            raise SpecError(
                "gcp.public_ip",
                "is false, so the nodes have no external address and serve.public = true cannot open "
                "them to the internet: drop one of the two",
            )
        resolved = rules.resolve(spec)  # GPU, machine type and zone rules: before any cloud call
        return Placement(node_specs(spec.gcp.regions, spec.compute.replicas), resolved)

    def notes(self, spec, placement: Placement) -> list[str]:
        warning = public_warning(spec)
        notes = rules.choices(spec, placement.resolved) + ([f"warning: {warning}"] if warning else [])
        return notes + self.reach_notes(spec) + super().notes(spec, placement)  # super: an unpinned serve.image

    # -- node-side checks (node_checks.py): gpu and health need no ingress --
    reports_from_nodes = True  # the module ships guest_report.py to every node

    def reach_notes(self, spec) -> list[str]:
        from mlinfra.targets.gcp import reach

        found = reach.warning(spec) if self.reports_from_nodes else None
        return [found] if found else []

    def node_side(self, stack, fresh: bool = False, checks: tuple[str, ...] = ()) -> Any:
        from mlinfra.targets.gcp.node_checks import NodeReports

        return NodeReports(stack, fresh, checks) if self.reports_from_nodes else None

    # -- end node-side checks

    def cost(self, spec, placement: Placement) -> Any:
        from mlinfra.clouds.gcp import prices

        return prices.estimate_cost(spec, self.head_machine)

    def tfvars(self, spec, placement: Placement, workspace) -> dict[str, Any]:
        return module.tfvars(spec, placement.resolved, workspace)

    def discover(self, outputs: dict[str, Any], workspace) -> list:
        rendered = read_json(workspace.tfvars)
        return [
            replace(node, workload=workload.asked(module.node_config(rendered, node.key)))
            for node in super().discover(outputs, workspace)
        ]

    def gpu_runner(self, node, workspace) -> Any:
        from mlinfra.verify.ssh import SshRunner

        key = Path(node.ssh_key) if node.ssh_key else workspace.ssh_key
        # The stack's own known_hosts, beside its key: never the user's ~/.ssh/known_hosts.
        return SshRunner(node.ssh_host, node.ssh_port, node.ssh_user, key, key.parent / "known_hosts")

    def forget(self, workspace, hosts: list[str] | None) -> None:
        from mlinfra.verify.ssh import forget_hosts

        forget_hosts(workspace.known_hosts, hosts)

    def recover(
        self, spec, placement: Placement, workspace, error: EngineError, tried: dict[str, list[str]], allowed: bool
    ) -> list[Move]:
        """A stockout moves the failed nodes to the next zone of their region that offers their
        GPU and machine type; a quota error, or a stockout with nowhere left to go, fails with
        one line that names the cause."""
        from mlinfra.clouds.gcp import stockout

        failures = []
        for diag in error.diagnostics:
            capacity = stockout.classify(f"{diag.summary}: {diag.detail}")
            key = stockout.node_key_from_address(diag.address)
            if capacity is not None and key is not None:
                failures.append((key, capacity))
        if not failures:
            raise error
        zones = {node.key: node.zone for node in rules.placement(placement.resolved, module.zone_overrides(workspace))}
        for key, capacity in failures:
            tried.setdefault(key, []).append(zones.get(key, capacity.zone or ""))
        found = stockout.plan_moves(
            placement.resolved, [(k, zones.get(k, c.zone or ""), c) for k, c in failures], tried
        )
        if not allowed or len(found) < len(failures):
            hint = None if allowed else "zone fallback is off (--no-zone-fallback)"
            raise EngineError(
                "; ".join(f"node {k}: {c.describe()}" for k, c in failures), diagnostics=error.diagnostics, hint=hint
            ) from None
        for move in found:
            module.record_zone_move(workspace, move.node, move.from_zone, move.to_zone, move.reason)
        return found

    def read_back_state(self, spec, placement: Placement, workspace, engine) -> bool:
        from mlinfra.targets.gcp import adopt

        if spec.state.backend == "local" or module.read_back_done(workspace):  # local state lives in the work dir
            return False
        adopt.read_back(spec, placement.resolved, workspace, engine.state_pull(), self.node_resource)
        return True

    def explain_init_failure(self, diagnostics: list[Any]) -> str | None:
        return explain_init_failure(diagnostics)

    def bucket_location(self, spec) -> str:
        return spec.gcp.regions[0].upper()

    def scaffold_notes(self, stack_file: str) -> list[str]:
        return [f"set gcp.project in {stack_file} (it is the placeholder {PLACEHOLDER_PROJECT!r})"]

    def ci_notes(self, spec, stack_file: str) -> list[str]:
        if spec.state.backend != "gcs":
            return [
                f"{stack_file} keeps its state locally: use [state] backend = 'gcs' so a run "
                "that dies halfway can be cleaned up by the next one"
            ]
        return []


def public_warning(spec) -> str | None:
    """The warning `plan` and `up` print when a stack opens a port to the whole internet."""
    open_ssh = [c for c in spec.serve.ssh_cidrs if c.endswith("/0")]
    parts = []
    if spec.serve.public:
        parts.append(f"port {spec.serve.port} on every node is open to the whole internet (0.0.0.0/0)")
    if open_ssh:
        parts.append(f"SSH is open to {', '.join(open_ssh)}")
    return "serve.public = true: " + "; ".join(parts) if parts else None


def explain_init_failure(diagnostics) -> str | None:
    """One line for `plan`/`up` when the google provider cannot be installed, else None.

    ``diagnostics``: engine.events.Diagnostic objects, Terraform's JSON diagnostic dicts, or strings.
    """
    for diag in diagnostics or ():
        if isinstance(diag, dict):
            summary, detail = diag.get("summary", ""), diag.get("detail", "")
        elif isinstance(diag, str):
            summary, detail = diag, diag
        else:
            summary, detail = getattr(diag, "summary", ""), getattr(diag, "detail", "")
        if any(summary.startswith(known) for known in _PROVIDER_INSTALL_FAILURES) and "provider" in (summary + detail):
            return (
                "the hashicorp/google provider could not be installed (no route to the Terraform registry?): "
                "`mlinfra render` works offline and writes the module; to plan here, configure a provider mirror "
                "(provider_installation in your Terraform CLI configuration, TF_CLI_CONFIG_FILE)"
            )
    return None


DRIVER = GcpDriver()
