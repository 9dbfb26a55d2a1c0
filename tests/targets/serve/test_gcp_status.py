"""`mlinfra status` of an autoscaled GCP stack, and a custom policy shipped to its heads.

Status reads Serve's own figures on each region's head over SSH (the stack's key and known_hosts,
as the GPU check): the head runs ``/opt/mlinfra/status`` (written by head_startup.sh), which is
``mlinfra_serve_app.py status`` — the same code the local target runs against real Ray in
test_local_autoscale.py. Here the SSH runner is replaced by one that returns what that command
prints (its JSON line, or a failure), since no VM can be reached from this machine.
"""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest

from helpers import SCHEMA, TEMPLATES, gcp_stack
from mlinfra import SpecError
from mlinfra.cli.stack import _region_line
from mlinfra.clouds.gcp import schema
from mlinfra.errors import SshError
from mlinfra.nodes import Node
from mlinfra.targets.serve.gcp import DRIVER, HEAD_GPU_SKIP, NO_SSH, STATUS_COMMAND
from mlinfra.verify import _gpu as verify_gpu
from mlinfra.verify.autoscale import check_autoscale, cold_start
from mlinfra.verify.runners import RunResult

SA = "ray-head@ml-demo-123456.iam.gserviceaccount.com"
POLICY = "import math\n\n\ndef scale(ctx):\n    return math.ceil(ctx.total_num_requests / 2), {}\n"


def autoscaled(tmp_path, ssh_cidrs=("203.0.113.0/24",), **autoscale):
    """The figures are read over SSH: a stack without serve.ssh_cidrs has no key (module.ssh_key)."""
    return gcp_stack(
        tmp_path,
        "ray-gcp",
        gcp={"regions": ["us-central1", "europe-west4"], "service_account": SA},
        compute={"gpu": "t4"},
        autoscale={"min_replicas": 0, "max_replicas": 3, **autoscale},
        serve={"ssh_cidrs": list(ssh_cidrs)},
    )


def head(region: str, host: str) -> Node:
    return Node(
        f"{region}-0",
        f"ray-gcp-{region}-0",
        region,
        0,
        f"http://{host}:8000",
        f"http://{host}:8000/-/healthz",
        ssh_host=host,
        ssh_user="mlinfra",
        ssh_key="/nonexistent/id_ed25519",
    )


class HeadOverSsh:
    """Stands in for SshRunner: records the remote argv, answers as the head's status command."""

    def __init__(self, answers: dict[str, object], calls: list):
        self.answers, self.calls = answers, calls

    def runner(self, node, workspace):
        answer = self.answers[node.ssh_host]
        outer = self

        class Runner:
            def run(self, argv, timeout_s):
                outer.calls.append((node.ssh_host, argv))
                if isinstance(answer, Exception):
                    raise answer
                return answer

        return Runner()


# What `mlinfra_serve_app.py status` prints (one JSON line), two workers joined the head.
BUSY = {"app": "RUNNING", "replicas": 2, "starting": 1, "states": {"RUNNING": 2, "STARTING": 1}, "nodes": 3}


def test_status_reads_each_heads_replicas_queue_and_nodes_over_ssh(tmp_path, monkeypatch):
    stack, calls = autoscaled(tmp_path), []
    fake = HeadOverSsh(
        {
            "10.0.0.2": RunResult(0, "some warning\n" + json.dumps(BUSY | {"queue_depth": 7, "queued": 3}), ""),
            "10.0.0.3": RunResult(1, "", "Traceback (most recent call last):\nConnectionError: could not find GCS"),
        },
        calls,
    )
    monkeypatch.setattr(DRIVER, "gpu_runner", fake.runner)
    nodes = [head("us-central1", "10.0.0.2"), head("europe-west4", "10.0.0.3")]
    scaling = DRIVER.autoscale_status(stack.spec, stack.workspace, nodes)
    assert calls == [("10.0.0.2", STATUS_COMMAND), ("10.0.0.3", STATUS_COMMAND)]
    assert (scaling["replicas"], scaling["starting"], scaling["queue_depth"]) == (2, 1, 7)
    central, europe = scaling["regions"]["us-central1"], scaling["regions"]["europe-west4"]
    assert (central["nodes"], central["queued"], central["endpoint"]) == (3, 3, "http://10.0.0.2:8000")
    assert europe["error"].startswith("the Ray cluster did not answer: ")
    assert europe["error"].endswith("ConnectionError: could not find GCS")
    assert _region_line(central, scaling) == (
        "replicas 2 running, 1 starting (min 0, max 3), queue 7 (3 waiting for a replica), 3 Ray node(s)"
    )
    assert _region_line(europe, scaling).startswith("replicas unknown: the Ray cluster did not answer")


def test_an_unreachable_head_is_an_error_in_its_region_not_a_crash(tmp_path, monkeypatch):
    stack = autoscaled(tmp_path)
    refused = SshError("auth failed", "ssh: mlinfra@10.0.0.2:22 refused the stack's SSH key")
    monkeypatch.setattr(DRIVER, "gpu_runner", HeadOverSsh({"10.0.0.2": refused}, []).runner)
    scaling = DRIVER.autoscale_status(stack.spec, stack.workspace, [head("us-central1", "10.0.0.2")])
    assert scaling["regions"]["us-central1"]["error"] == "ssh: mlinfra@10.0.0.2:22 refused the stack's SSH key"
    assert (scaling["replicas"], scaling["starting"], scaling["queue_depth"]) == (None, None, None)  # unread, not 0


def test_without_ssh_cidrs_no_head_is_asked_and_each_region_says_why(tmp_path, monkeypatch):
    """No serve.ssh_cidrs: the stack has no key and its heads no login (module.ssh_key), so no
    SSH is tried (it could only fail with "key missing") and every region says what to set."""
    stack, calls = autoscaled(tmp_path, ssh_cidrs=()), []
    monkeypatch.setattr(DRIVER, "gpu_runner", HeadOverSsh({}, calls).runner)
    scaling = DRIVER.autoscale_status(stack.spec, stack.workspace, [head("us-central1", "10.0.0.2")])
    assert calls == []
    central = scaling["regions"]["us-central1"]
    assert central["error"] == NO_SSH and central["unread"] is True
    assert _region_line(central, scaling) == f"replicas unknown: {NO_SSH}"


def gate_stack(stack, scaling):
    """What verify's autoscale checks read of a stack: its spec, driver, work dir and status."""
    return SimpleNamespace(
        spec=stack.spec, driver=DRIVER, workspace=stack.workspace, status=lambda: SimpleNamespace(autoscale=scaling)
    )


def test_without_ssh_cidrs_the_gate_skips_cold_start_and_autoscale_and_says_why(tmp_path, monkeypatch):
    stack = autoscaled(tmp_path, ssh_cidrs=())
    node = head("us-central1", "192.0.2.1")  # TEST-NET: never answers, and nothing should send to it
    gate = gate_stack(stack, DRIVER.autoscale_status(stack.spec, stack.workspace, [node]))
    first = cold_start(gate, node, b"{}", {})
    scaled = check_autoscale(gate, node, b"{}", {})
    for result, check in ((first, "cold-start"), (scaled, "autoscale")):
        assert (result.check, result.status, result.summary) == (check, "skip", f"not checked ({NO_SSH})")


def test_an_unreadable_head_skips_the_cold_start_and_names_its_error(tmp_path):
    """With SSH set up, a head that does not answer leaves the replicas at rest unknown: the
    first request cannot be called a cold start (the autoscale check still runs and polls)."""
    stack = autoscaled(tmp_path)
    node = head("us-central1", "192.0.2.1")
    gate = gate_stack(stack, {"regions": {"us-central1": {"error": "ssh: no answer from 192.0.2.1"}}})
    result = cold_start(gate, node, b"{}", {})
    assert (result.status, result.message) == ("skip", "skipped: ssh: no answer from 192.0.2.1")


@pytest.mark.parametrize("ssh_cidrs", [(), ("203.0.113.0/24",)])
def test_the_gpu_check_skips_the_heads_they_are_cpu_vms(tmp_path, monkeypatch, ssh_cidrs):
    stack = autoscaled(tmp_path, ssh_cidrs=ssh_cidrs)
    monkeypatch.setattr(DRIVER, "gpu_runner", HeadOverSsh({}, []).runner)  # any SSH: KeyError
    result = verify_gpu(gate_stack(stack, None), head("us-central1", "10.0.0.2"))
    assert (result.check, result.status, result.message) == ("gpu", "skip", f"skipped: {HEAD_GPU_SKIP}")


def load_app():
    spec = importlib.util.spec_from_file_location(
        "mlinfra_serve_app", TEMPLATES / "serve-local" / "mlinfra_serve_app.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_queue_depth_sums_this_deployments_router_gauges_from_a_prometheus_scrape():
    # Prometheus text as Ray's metrics agent exports it; names and tag keys from Ray 2.60's
    # serve/_private/router.py (gauges serve_deployment_queued_queries and
    # serve_num_ongoing_requests_at_replicas, tags deployment, application, handle, actor_id),
    # the "ray_" prefix per docs.ray.io serve/monitoring ("Built-in Ray Serve metrics").
    text = "\n".join(
        [
            "# HELP ray_serve_deployment_queued_queries The current number of queries to this deployment waiting",
            "# TYPE ray_serve_deployment_queued_queries gauge",
            'ray_serve_deployment_queued_queries{actor_id="a1",application="mlinfra",deployment="serve",'
            'handle="h1",Version="2.60.0"} 3.0',
            'ray_serve_deployment_queued_queries{actor_id="a2",application="mlinfra",deployment="serve",'
            'handle="h2",Version="2.60.0"} 1.0 1764752400000',
            'ray_serve_deployment_queued_queries{actor_id="a1",application="other",deployment="serve",'
            'handle="h3"} 50.0',
            'ray_serve_num_ongoing_requests_at_replicas{actor_id="a1",application="mlinfra",deployment="serve",'
            'handle="h1"} 4.0',
            'ray_serve_replica_processing_queries{application="mlinfra",deployment="serve",replica="r1"} 4.0',
        ]
    )
    app = load_app()
    assert app.parse_queue(text) == {"queue_depth": 8, "queued": 4}
    assert app.parse_queue("") == {"queue_depth": 0, "queued": 0}  # no request yet: no series


def test_a_custom_policy_is_shipped_to_the_heads_and_the_module_fits_the_schema(tmp_path):
    package = tmp_path / "ray-gcp" / "gcp_policies"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tokens.py").write_text(POLICY)
    stack = autoscaled(tmp_path, policy="gcp_policies.tokens:scale")
    rendered = stack.render()
    assert schema.check_module(rendered.workdir, SCHEMA) == []
    values = json.loads((rendered.workdir / "terraform.tfvars.json").read_text())
    for config in (h["config"] for h in values["heads"].values()):
        assert config["policy_files"] == {"gcp_policies/__init__.py": "", "gcp_policies/tokens.py": POLICY}
        assert config["autoscale"]["policy"] == "gcp_policies.tokens:scale"
    startup = (rendered.workdir / "head_startup.sh").read_text()
    assert "/opt/mlinfra/policy" in startup and 'head.get("policy_files", {})' in startup


def test_a_policy_outside_the_stacks_directory_cannot_be_shipped(tmp_path):
    # json.decoder is importable here, but lives in the standard library, not beside the stack.
    with pytest.raises(SpecError, match=r"autoscale.policy: module 'json.decoder' is not a .py file in the stack's directory"):
        autoscaled(tmp_path, policy="json.decoder:scale").render()


def test_plan_warns_when_an_autoscaled_gcp_stack_cannot_read_its_replicas(tmp_path):
    blind, seen = autoscaled(tmp_path / "a", ssh_cidrs=()), autoscaled(tmp_path / "b")
    warning = f"warning: serve.ssh_cidrs is empty: {NO_SSH} (status, cost, verify)"
    assert warning in DRIVER.notes(blind.spec, DRIVER.validate(blind.spec))
    assert warning not in DRIVER.notes(seen.spec, DRIVER.validate(seen.spec))
