"""Ray's autoscaler, resizing a Terraform-owned regional managed instance group (MIG).

Runs on the head VM (the autoscaling config names it: ``provider: {type: external, module:
mig_provider.MigNodeProvider}``). Ray's ``BatchingNodeProvider`` asks two things: which nodes
exist (``get_node_data`` = ``regionInstanceGroupManagers.listManagedInstances``, plus
``instances.get`` once per instance for its internal IP) and "make it so" (``submit_scale_request``
= ``deleteInstances`` for the idle workers Ray chose, then ``resize`` to the desired count).
Ray decides how many; the MIG decides where (its zones) and heals; Terraform owns the MIG, its
template and health check (``ignore_changes = [target_size]``), so `down` deletes every VM.
"""

import json
import urllib.request

from ray.autoscaler.batching_node_provider import BatchingNodeProvider, NodeData, ScaleRequest
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, STATUS_UP_TO_DATE

API = "https://compute.googleapis.com/compute/v1"
TOKEN_URL = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
WORKER_TYPE = "gpu_worker"
# listManagedInstances' currentAction values that mean "on its way" (the API reference's enum).
PENDING = {"CREATING", "CREATING_WITHOUT_RETRIES", "RECREATING", "REFRESHING", "RESTARTING", "RESUMING",
           "STARTING", "VERIFYING"}


def metadata_token() -> str:
    request = urllib.request.Request(TOKEN_URL, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["access_token"]


def compute_call(method: str, url: str, body=None) -> dict:
    """One Compute API call with the head VM's service-account token."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {metadata_token()}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"{}")


class MigNodeProvider(BatchingNodeProvider):
    """provider_config: project, region, group (the MIG's name), head_name, head_ip."""

    def __init__(self, provider_config, cluster_name, call=compute_call):
        super().__init__(provider_config, cluster_name)
        self.call = call  # tests pass recorded API responses
        self.config = provider_config
        self.group_url = (f"{API}/projects/{provider_config['project']}/regions/{provider_config['region']}"
                          f"/instanceGroupManagers/{provider_config['group']}")
        self.ips = {}  # instance URL -> internal IP (an instance keeps its IP for life)

    def managed_instances(self) -> list:
        found, token = [], None
        while True:
            page = self.call("POST", self.group_url + "/listManagedInstances" + (f"?pageToken={token}" if token else ""))
            found += page.get("managedInstances", [])
            token = page.get("nextPageToken")
            if not token:
                return found

    def get_node_data(self):
        nodes = {self.config["head_name"]: NodeData(kind=NODE_KIND_HEAD, type="head", ip=self.config["head_ip"],
                                                    status=STATUS_UP_TO_DATE)}
        for item in self.managed_instances():
            url = item["instance"]
            name = url.rsplit("/", 1)[1]
            action, state = item.get("currentAction", "NONE"), item.get("instanceStatus", "")
            errors = [e.get("code", "") for e in item.get("lastAttempt", {}).get("errors", {}).get("errors", [])]
            if action == "NONE" and state == "RUNNING":
                status, ip = STATUS_UP_TO_DATE, self.ip_of(url)
            elif action in PENDING or action == "NONE":
                # A stockout shows here, as the last attempt's error, while the MIG keeps trying.
                status, ip = (action.lower() + (f": {errors[0]}" if errors else "")), None
            else:  # DELETING, ABANDONING, STOPPING, SUSPENDING: on its way out
                continue
            nodes[name] = NodeData(kind=NODE_KIND_WORKER, type=WORKER_TYPE, ip=ip, status=status)
        return nodes

    def ip_of(self, instance_url: str):
        if instance_url not in self.ips:
            instance = self.call("GET", instance_url.replace("https://www.googleapis.com/compute/v1", API))
            self.ips[instance_url] = instance["networkInterfaces"][0]["networkIP"]
        return self.ips[instance_url]

    def submit_scale_request(self, scale_request: ScaleRequest) -> None:
        if scale_request.workers_to_delete:
            # The idle workers Ray chose, by name; deleteInstances lowers the target size by as many.
            zones = {url.rsplit("/", 1)[1]: url.split("/zones/", 1)[1].split("/", 1)[0]
                     for url in (i["instance"] for i in self.managed_instances())}
            instances = [f"zones/{zones[n]}/instances/{n}" for n in sorted(scale_request.workers_to_delete) if n in zones]
            if instances:
                self.call("POST", self.group_url + "/deleteInstances",
                          {"instances": instances, "skipInstancesOnValidationError": True})
        desired = int(scale_request.desired_num_workers.get(WORKER_TYPE, 0))
        self.call("POST", self.group_url + f"/resize?size={desired}")
