"""What a fresh work dir lacks, read back from the stack's Terraform state.

The work dir (``.mlinfra/<stack>/``) keeps two things beside the module that the module's values
depend on: the stack's SSH public key and zone fallback's record of moved nodes. A CI job's fresh
checkout has neither, while its remote (GCS) state still describes the VMs that run. Rendering
without them would plan changes nobody asked for: a new key in every node's ``ssh-keys``
metadata, and a moved node put back in the zone it left (a replacement). So the first command in
a work dir, once ``terraform init`` has connected it to the state, takes both from the state: each
node's zone, and the public key its metadata carries. The private key is not in the state (it
never leaves the machine that made it); the GPU check over SSH needs that machine's copy.
"""

from __future__ import annotations

import json
from typing import Any

from mlinfra.clouds.gcp import rules
from mlinfra.targets.gcp import module
from mlinfra.timeutil import utc_now
from mlinfra.workspace import Workspace


def applied_nodes(state: dict[str, Any], node_resource: str) -> dict[str, dict[str, Any]]:
    """Each node's attributes in a state document (format version 4), by node key.

    ``node_resource``: the driver's ``type.name`` of a node (the GCP target's
    ``google_compute_instance.node``, serve-gcp's heads ``google_compute_instance.head``).
    """
    wanted = tuple(node_resource.split(".", 1))
    found = {}
    for resource in state.get("resources") or []:
        if resource.get("mode") == "managed" and (resource.get("type"), resource.get("name")) == wanted:
            for instance in resource.get("instances") or []:
                if isinstance(instance.get("index_key"), str):
                    found[instance["index_key"]] = instance.get("attributes") or {}
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
    placed = {node.key: node.zone for node in rules.placement(resolved, module.zone_overrides(workspace))}
    moved = []
    for key, attributes in sorted(nodes.items()):
        zone = attributes.get("zone") or ""
        if key in placed and zone and zone != placed[key]:
            reason = "read back from the stack's state (the work dir had no record of the move)"
            moved.append(module.record_zone_move(workspace, key, placed[key], zone, reason))
    key = applied_public_key(nodes)
    public = module.public_key_file(workspace)
    adopted_key = bool(key and spec.serve.ssh_cidrs and not public.is_file())
    if adopted_key:
        public.parent.mkdir(parents=True, exist_ok=True)
        public.write_text(key + "\n")
    found = {"at": utc_now(), "nodes": sorted(nodes), "zone_moves": moved, "ssh_public_key": adopted_key}
    (workspace / module.STATE_RECORD).write_text(json.dumps(found, indent=2) + "\n")
    return found
