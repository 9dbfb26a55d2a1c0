"""The GCP node-provider plug-in (templates/serve-gcp/mig_provider.py) against Compute API
response bodies built from Google's published API reference (the fixtures name their source):
what Ray's autoscaler sees, and exactly which calls its scale requests make."""

from __future__ import annotations

import importlib.util
import json

from ray.autoscaler.batching_node_provider import ScaleRequest
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, STATUS_UP_TO_DATE

from helpers import DATA, TEMPLATES

FIXTURES = DATA / "gcp" / "compute-api"
GROUP = (
    "https://compute.googleapis.com/compute/v1/projects/ml-demo-123456/regions/us-central1"
    "/instanceGroupManagers/ray-gcp-us-central1-workers"
)
CONFIG = {
    "project": "ml-demo-123456",
    "region": "us-central1",
    "group": "ray-gcp-us-central1-workers",
    "head_name": "ray-gcp-us-central1-head",
    "head_ip": "10.128.0.2",
    "disable_node_updaters": True,
    "disable_launch_config_check": True,
    "foreground_node_launch": True,
}


def load_provider():
    spec = importlib.util.spec_from_file_location("mig_provider", TEMPLATES / "serve-gcp" / "mig_provider.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordedApi:
    def __init__(self):
        self.calls: list[tuple[str, str, dict | None]] = []
        self.pages = json.loads((FIXTURES / "list-managed-instances.json").read_text())["pages"]

    def __call__(self, method: str, url: str, body=None) -> dict:
        self.calls.append((method, url, body))
        if url.startswith(GROUP + "/listManagedInstances"):
            return self.pages[1] if "pageToken=page-2" in url else self.pages[0]
        if "/instances/" in url and method == "GET":
            return json.loads((FIXTURES / "instance.json").read_text())
        return json.loads((FIXTURES / "operation.json").read_text())


def test_node_data_is_the_head_plus_the_groups_live_and_pending_workers():
    api = RecordedApi()
    provider = load_provider().MigNodeProvider(CONFIG, "ray-gcp", call=api)
    nodes = provider.get_node_data()
    assert set(nodes) == {"ray-gcp-us-central1-head", "ray-gcp-us-central1-w-7fq2", "ray-gcp-us-central1-w-k3m9"}
    head, running, pending = (nodes[k] for k in sorted(nodes))
    assert (head.kind, head.ip, head.status) == (NODE_KIND_HEAD, "10.128.0.2", STATUS_UP_TO_DATE)
    assert (running.kind, running.type, running.ip, running.status) == (
        NODE_KIND_WORKER,
        "gpu_worker",
        "10.128.0.7",
        STATUS_UP_TO_DATE,
    )
    assert pending.ip is None and pending.status == "creating: ZONE_RESOURCE_POOL_EXHAUSTED"
    # Both pages read; one instances.get, for the one running worker (its IP is cached).
    assert [c[1].rsplit("/", 1)[1] for c in api.calls] == [
        "listManagedInstances",
        "listManagedInstances?pageToken=page-2",
        "ray-gcp-us-central1-w-7fq2",
    ]
    provider.get_node_data()
    assert sum(1 for method, _, _ in api.calls if method == "GET") == 1


def test_scale_request_deletes_the_chosen_workers_by_zone_then_resizes():
    api = RecordedApi()
    provider = load_provider().MigNodeProvider(CONFIG, "ray-gcp", call=api)
    provider.submit_scale_request(ScaleRequest({"gpu_worker": 1}, {"ray-gcp-us-central1-w-k3m9"}))
    posts = [(url.removeprefix(GROUP), body) for method, url, body in api.calls if "listManaged" not in url]
    assert posts == [
        (
            "/deleteInstances",
            {
                "instances": ["zones/us-central1-b/instances/ray-gcp-us-central1-w-k3m9"],
                "skipInstancesOnValidationError": True,
            },
        ),
        ("/resize?size=1", None),
    ]


def test_scale_to_zero_is_one_resize():
    api = RecordedApi()
    provider = load_provider().MigNodeProvider(CONFIG, "ray-gcp", call=api)
    provider.submit_scale_request(ScaleRequest({"gpu_worker": 0}, set()))
    assert api.calls == [("POST", GROUP + "/resize?size=0", None)]
