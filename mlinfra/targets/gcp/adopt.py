"""What a fresh work dir lacks, read back from the stack's Terraform state.

The work dir (``.mlinfra/<stack>/``) keeps two things beside the module that the module's values
depend on: the stack's SSH public key and zone fallback's record of moved nodes. A CI job's fresh
checkout has neither, while its remote (GCS) state still describes the VMs that run. Rendering
without them would plan changes nobody asked for: a new key in every node's ``ssh-keys``
metadata, and a moved node put back in the zone it left (a replacement). So the first command in
a work dir, once ``terraform init`` has connected it to the state, takes both from the state:
zone fallback's own record there (``terraform_data.zone_fallback``, zone_fallback.tf), and the
public key the nodes' metadata carries. Only recorded moves are taken: a node that runs outside
its planned zone without one was placed by an earlier ``gcp.zones`` (reordered or narrowed since),
and the first work dir would place it again too. The private key is not in the state (it never
leaves the machine that made it); the GPU check over SSH needs that machine's copy.
"""

from __future__ import annotations

import json
from typing import Any

from mlinfra.clouds.gcp import rules
from mlinfra.targets.gcp import module
from mlinfra.timeutil import utc_now
from mlinfra.workspace import Workspace

ZONE_FALLBACK = "terraform_data.zone_fallback"  # templates/gcp/zone_fallback.tf.j2 (serve-gcp's too)


def applied_nodes(state: dict[str, Any], node_resource: str) -> dict[str, dict[str, Any]]:
    """Each node's attributes in a state document (format version 4), by node key.

    ``node_resource``: the driver's ``type.name`` of a node (the GCP target's
    ``google_compute_instance.node``, serve-gcp's heads ``google_compute_instance.head``), or
    another resource with one instance per node key (``ZONE_FALLBACK``).
    """
    wanted = tuple(node_resource.split(".", 1))
    found = {}
    for resource in state.get("resources") or []:
        if resource.get("mode") == "managed" and (resource.get("type"), resource.get("name")) == wanted:
            for instance in resource.get("instances") or []:
                if isinstance(instance.get("index_key"), str):
                    found[instance["index_key"]] = instance.get("attributes") or {}
    return found


def applied_zone_fallbacks(state: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Zone fallback's record in a state document, by node key: {from, to} (terraform_data keeps
    its input as {"value": ..., "type": ...})."""
    found = {}
    for key, attributes in applied_nodes(state, ZONE_FALLBACK).items():
        value = (attributes.get("input") or {}).get("value")
        if isinstance(value, dict) and isinstance(value.get("to"), str) and value["to"]:
            found[key] = {"from": str(value.get("from") or ""), "to": value["to"]}
    return found


def applied_public_key(nodes: dict[str, dict[str, Any]]) -> str:
    """The key in the nodes' ``ssh-keys`` metadata ("user:key", main.tf), or "" when none has one."""
    for attributes in nodes.values():
        entry = ((attributes.get("metadata") or {}).get("ssh-keys") or "").strip()
        user, _, key = entry.partition(":")
        if key.strip():
            return key.strip()
    return ""


def read_back(
    spec, resolved: rules.Resolved, workspace: Workspace, state: dict[str, Any], node_resource: str
) -> dict[str, Any]:
    """Record in the work dir what ``state`` says and the work dir lacks; returns what was read.

    Called once per work dir, after ``terraform init`` (the caller renders again afterwards).
    """
    nodes = applied_nodes(state, node_resource)
    placed = {node.key for node in rules.placement(resolved)}
    known = module.zone_overrides(workspace)
    moved = []
    for key, record in sorted(applied_zone_fallbacks(state).items()):
        if key in placed and known.get(key) != record["to"]:
            reason = "read back from the stack's state (zone fallback's record there; the work dir had none)"
            moved.append(module.record_zone_move(workspace, key, record["from"], record["to"], reason))
    key = applied_public_key(nodes)
    public = module.public_key_file(workspace)
    adopted_key = bool(key and spec.serve.ssh_cidrs and not public.is_file())
    if adopted_key:
        public.parent.mkdir(parents=True, exist_ok=True)
        public.write_text(key + "\n")
    found = {"at": utc_now(), "nodes": sorted(nodes), "zone_moves": moved, "ssh_public_key": adopted_key}
    (workspace / module.STATE_RECORD).write_text(json.dumps(found, indent=2) + "\n")
    return found
