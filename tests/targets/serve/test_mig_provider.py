"""The GCP node-provider plug-in (templates/serve-gcp/mig_provider.py) against Compute API
response bodies built from Google's published API reference (the fixtures name their source):
what Ray's autoscaler sees, and exactly which calls its scale requests make."""

from __future__ import annotations

import importlib.util
import json

from ray.autoscaler.batching_node_provider import ScaleRequest
from ray.autoscaler.tags import NODE_KIND_HEAD, NODE_KIND_WORKER, STATUS_UP_TO_DATE

from helpers import DATA, TEMPLATES
from mlinfra.targets.serve.gcp import region_names

FIXTURES = DATA / "gcp" / "compute-api"
# The names the serve-gcp target gives stack "ray-gcp"'s us-central1 head, group and workers (the
# same function makes them for Terraform and for the provider's config), not copies of them.
NAMES = region_names("ray-gcp", "us-central1", "us-central1-0")
RUNNING, PENDING = NAMES["base_instance_name"] + "-7fq2", NAMES["base_instance_name"] + "-k3m9"
GROUP = (
    "https://compute.googleapis.com/compute/v1/projects/ml-demo-123456/regions/us-central1"
    f"/instanceGroupManagers/{NAMES['group']}"
)
CONFIG = {
    "project": "ml-demo-123456",
    "region": "us-central1",
    "group": NAMES["group"],
    "head_name": NAMES["head"],
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
    assert set(nodes) == {NAMES["head"], RUNNING, PENDING}
    head, running, pending = nodes[NAMES["head"]], nodes[RUNNING], nodes[PENDING]
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
        RUNNING,
    ]
    provider.get_node_data()
    assert sum(1 for method, _, _ in api.calls if method == "GET") == 1


def test_scale_request_deletes_the_chosen_workers_by_zone_then_resizes():
    api = RecordedApi()
    provider = load_provider().MigNodeProvider(CONFIG, "ray-gcp", call=api)
    provider.submit_scale_request(ScaleRequest({"gpu_worker": 1}, {PENDING}))
    posts = [(url.removeprefix(GROUP), body) for method, url, body in api.calls if "listManaged" not in url]
    assert posts == [
        (
            "/deleteInstances",
            {
                "instances": [f"zones/us-central1-b/instances/{PENDING}"],
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


def test_the_recorded_responses_name_what_the_target_names():
    """The fixtures' group and workers carry the names serve-gcp gives them (region_names): a
    renamed group or prefix fails here, not only on a real autoscaler."""
    pages = json.loads((FIXTURES / "list-managed-instances.json").read_text())["pages"]
    workers = [item["instance"].rsplit("/", 1)[1] for page in pages for item in page["managedInstances"]]
    assert workers and all(name.startswith(NAMES["base_instance_name"] + "-") for name in workers)
    assert {RUNNING, PENDING} <= set(workers)
    operation = json.loads((FIXTURES / "operation.json").read_text())
    assert operation["targetLink"].rsplit("/", 1)[1] == NAMES["group"]
