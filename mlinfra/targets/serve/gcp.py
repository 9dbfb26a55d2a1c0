"""Autoscaled serving on Google Cloud (``templates/serve-gcp/``): per region a CPU head VM (Ray
head, Serve's proxy on ``serve.port``, Ray's autoscaler) and a regional MIG of GPU workers that
the autoscaler resizes through ``mig_provider.py``. The GPU, machine and zone rules are the GCP
target's own (``GcpDriver.validate``); the workers' zones are the candidates the catalog gives.
"""

from __future__ import annotations

from typing import Any

from mlinfra.errors import SpecError
from mlinfra.render import templates_dir
from mlinfra.targets.base import Placement, node_specs
from mlinfra.targets.gcp import GcpDriver, module
from mlinfra.targets.serve.local import autoscale_values, policy_files
from mlinfra.targets.serve.section import refuse_secrets_with_autoscale

HEAD_MACHINE = "e2-standard-4"  # the head routes and decides; it runs no replica
HEAD_IMAGE = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
WORKER_INITIAL_DELAY_S = 900  # DLVM driver install + Ray install + model load, measured in minutes
RAY_PORT = 6379
METRICS_PORT = 8080  # the head's Ray metrics agent (Prometheus text), read on the head by the status command
# Written by head_startup.sh; run over SSH (as root: the Ray cluster is root's) by `mlinfra status`.
STATUS_COMMAND = ["sudo", "-n", "/opt/mlinfra/status"]
STATUS_TIMEOUT_S = 60.0
# Without serve.ssh_cidrs the stack has no SSH key and its heads no login (module.ssh_key): the
# figures are then not read at all, and every reader (status, cost, verify) says why.
NO_SSH = "replica counts are read on the head over SSH: set serve.ssh_cidrs to this machine's range"
HEAD_GPU_SKIP = "the head is a CPU VM (the GPUs are its workers'; status counts the Ray nodes that joined)"
# GCP's name limits (Compute API reference): a resource name is 1-63 characters; a MIG's
# baseInstanceName 1-58, since each VM's name adds "-" and four random characters.
NAME_LIMIT = 63
BASE_INSTANCE_LIMIT = 58


def region_names(stack: str, region: str, key: str) -> dict[str, str]:
    """The names of one region's head VM, worker group (MIG) and its VMs' prefix: made here once,
    for Terraform (tfvars) and for Ray's autoscaler (which resizes the group by name) alike. With
    the stack name's 30 (spec.NAME_MAX, an environment included) and the catalog's longest region
    (23), the longest is the group's 62; a name over GCP's limit is a spec error, not a failed apply."""
    names = {
        "head": f"{stack}-{key}-head",
        "group": f"{stack}-{region}-workers",
        "base_instance_name": f"{stack}-{region}-w",
    }
    for what, name in names.items():
        limit = BASE_INSTANCE_LIMIT if what == "base_instance_name" else NAME_LIMIT
        if len(name) > limit:
            raise SpecError(
                "name",
                f"the {what.replace('_', ' ')} {name!r} is {len(name)} characters and GCP allows {limit}: "
                f"the stack name ({len(stack)}) and region {region!r} ({len(region)}) must be shorter",
            )
    return names


class ServeGcpDriver(GcpDriver):
    templates = "serve-gcp"
    # No workload.py: the Ray templates run none (serve.image, setup and [model] are refused). The
    # heads record their zone fallback moves as the GCP target's nodes do (read back by adopt.py).
    shared_templates = ("gcp/zone_fallback.tf.j2",)
    node_resource = "google_compute_instance.head"
    head_machine = HEAD_MACHINE  # priced by the estimate and the budget guard
    rebuild_budget_s = 1200.0
    reports_from_nodes = False  # serve-gcp's heads and workers carry no guest_report.py (yet)

    def validate(self, spec) -> Placement:
        refuse_secrets_with_autoscale(spec)
        if not spec.gcp.service_account:
            raise SpecError(
                "gcp.service_account",
                "is required with [autoscale]: the head resizes the worker group through the Compute API as this account",
            )
        policy_files(spec)  # a custom policy must be a module in the stack's directory: it is shipped
        placement = super().validate(spec)
        heads = node_specs(spec.gcp.regions, 1)  # one head per region
        for head in heads:
            region_names(spec.name, head.region, head.key)
        return Placement(heads, placement.resolved)

    def notes(self, spec, placement: Placement) -> list[str]:
        a = spec.autoscale
        blind = [] if spec.serve.ssh_cidrs else [f"warning: serve.ssh_cidrs is empty: {NO_SSH} (status, cost, verify)"]
        return (
            super().notes(spec, placement)
            + [f"autoscaled by Ray Serve: {a.min_replicas}–{a.max_replicas} GPU workers per region (a regional MIG)"]
            + blind
        )

    def tfvars(self, spec, placement: Placement, workspace) -> dict[str, Any]:
        base = module.tfvars(spec, placement.resolved, workspace)
        gpus = placement.resolved.gpu_count
        heads, workers = {}, {}
        for key, node in base["nodes"].items():
            region = node["region"]
            names = region_names(spec.name, region, key)
            heads[key] = {
                "name": names["head"],
                "region": region,
                "zone": node["zone"],
                "config": {
                    "gcs_port": RAY_PORT,
                    "metrics_port": METRICS_PORT,
                    "connect": "auto",  # the head VM's one cluster, on its VPC address
                    "serve_host": "0.0.0.0",  # the proxy serves the VPC (the firewall decides who reaches it)
                    "serve_port": spec.serve.port,
                    "command": spec.serve.command,
                    "health_path": spec.serve.health_path,
                    "cwd": "",
                    "env": dict(spec.serve.env),
                    "autoscale": autoscale_values(spec),
                    # A custom policy's module (and its packages' __init__.py), by relative path:
                    # written under /opt/mlinfra/policy on the head, where Serve's controller imports it.
                    "policy_files": policy_files(spec),
                    "actor": {"num_gpus": gpus} if gpus else {"num_cpus": 1},
                    # Ray's cluster config: the external provider on the head, one worker type.
                    "autoscaler": {
                        "cluster_name": spec.name,
                        "max_workers": spec.autoscale.max_replicas,
                        "idle_timeout_minutes": max(1.0, spec.autoscale.downscale_delay_s / 60),
                        "provider": {
                            "type": "external",
                            "module": "mig_provider.MigNodeProvider",
                            "project": spec.gcp.project,
                            "region": region,
                            "group": names["group"],
                            "head_name": names["head"],
                            "disable_node_updaters": True,
                            "disable_launch_config_check": True,
                            "foreground_node_launch": True,
                        },
                        "available_node_types": {
                            "head": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0, "node_config": {}},
                            "gpu_worker": {
                                "resources": {"CPU": 1, "GPU": gpus} if gpus else {"CPU": 1},
                                "min_workers": spec.autoscale.min_replicas,
                                "max_workers": spec.autoscale.max_replicas,
                                "node_config": {},
                            },
                        },
                        "head_node_type": "head",
                    },
                },
            }
            workers[region] = {
                "head": key,
                "group": names["group"],
                "base_instance_name": names["base_instance_name"],
                "zones": list(placement.resolved.zones[region]),
                **{k: node[k] for k in ("machine_type", "attached_gpus", "has_gpu", "spot", "spot_termination")},
                **{k: node[k] for k in ("image", "disk_gb", "disk_type")},
            }
        keep = (
            "project",
            "stack",
            "labels",
            "network",
            "port",
            "serve_cidrs",
            "ssh_cidrs",
            "ssh_user",
            "ssh_public_key",
            "zone_fallbacks",  # the heads' moves (zone_fallback.tf), as the GCP target's nodes'
        )
        return {k: base[k] for k in keep} | {
            "ssh_private_key_file": base["ssh_private_key_file"],
            "service_account": base["service_account"],
            "public_ip": base["public_ip"],
            "disk_kms_key": base["disk_kms_key"],
            "head_machine_type": HEAD_MACHINE,
            "head_image": HEAD_IMAGE,
            "worker_initial_delay_s": WORKER_INITIAL_DELAY_S,
            "serve_app": (templates_dir("serve-local") / "mlinfra_serve_app.py").read_text(),
            "heads": heads,
            "workers": workers,
        }

    def gpu_skip(self, spec, node) -> str | None:
        return HEAD_GPU_SKIP  # every node this target lists is a head

    def autoscale_status(self, spec, workspace, nodes: list) -> dict[str, Any] | None:
        """Serve's own figures, read on each region's head over SSH (the stack's key): replicas, queue depth and the Ray nodes that joined (the head and the MIG's
        workers). The MIG's target size would only say how many VMs were asked for, not how
        many replicas serve; the Ray cluster's ports stay closed to the outside. Without
        serve.ssh_cidrs each region is ``{"error": NO_SSH, "unread": True}``: nothing to log in with."""
        from mlinfra.errors import MlinfraError
        from mlinfra.targets.serve.local import parse_status, summary

        regions = {}
        for node in nodes:
            if not spec.serve.ssh_cidrs:
                regions[node.region] = {"endpoint": node.endpoint, "error": NO_SSH, "unread": True}
                continue
            try:
                done = self.gpu_runner(node, workspace).run(STATUS_COMMAND, STATUS_TIMEOUT_S)
                figures = parse_status(done.returncode, done.stdout, done.stderr)
            except (MlinfraError, ValueError) as exc:  # ssh failed, timed out, or the node has no address
                figures = {"error": str(exc)}
            regions[node.region] = {"endpoint": node.endpoint, **figures}
        return summary(spec, regions)


DRIVER = ServeGcpDriver()
