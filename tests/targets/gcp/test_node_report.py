"""The GCP gate without ingress, end to end on this machine: templates/gcp/guest_report.py runs
as on a node (a real server on localhost, the nvidia-smi stand-in replaying recorded outputs)
and writes its guest attribute through the metadata-server stand-in; the operator's side
(targets/gcp/node_checks.py through verify.run) reads it back with getGuestAttributes from the
same stand-in (tests/standins/google.py: every body from Google's references, named there).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import DATA, ROOT, TEMPLATES, gcp_stack
from standins.google import TOKEN, Google

from mlinfra import verify
from mlinfra.nodes import Node
from mlinfra.targets.gcp import node_checks

REPORTER = TEMPLATES / "gcp" / "guest_report.py"
NVIDIA_SMI = ROOT / "tests" / "standins" / "nvidia-smi"


class ModelServer:
    """A real HTTP server on localhost: its health path answers ``health`` (200 or 503). Its
    predictions wait while ``slow`` is cleared: a server whose latency sample takes its time."""

    def __init__(self, health: int):
        self.slow = threading.Event()
        self.slow.set()
        slow = self.slow

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status):
                body = b'{"ok": true}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self.answer(health if self.path == "/health" else 404)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                slow.wait(60)
                self.answer(200 if self.path == "/predict" else 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.slow.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stack(tmp_path, monkeypatch):
    # The operator reads the stand-in's Compute API with a token, as with GOOGLE_OAUTH_ACCESS_TOKEN.
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", TOKEN)
    return gcp_stack(tmp_path, "demand-predictor", gcp={"regions": ["us-central1"], "zones": ["us-central1-a"]},
                     compute={"gpu": "nvidia-tesla-t4", "gpu_count": 1, "machine_type": "n1-standard-4"},
                     serve={"port": 8000}, verify={"health_timeout_s": 2, "requests": 30, "warmup": 2})


@pytest.fixture
def google(stack, monkeypatch):
    google = Google.start(attributes={"mlinfra-check": node_checks.settings(stack.spec),
                                      "mlinfra-check-request": "boot"})
    monkeypatch.setenv("MLINFRA_COMPUTE_API_URL", f"http://{google.address}/compute/v1")
    yield google
    google.stop()


def node_env(tmp_path, google, fixture: str | None) -> dict:
    """The node's environment: its metadata server, and nvidia-smi replaying ``fixture`` (None: not installed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "GCE_METADATA_HOST": google.address}
    if fixture is not None:
        (bin_dir / "nvidia-smi").symlink_to(NVIDIA_SMI)
        env["MLINFRA_NVSMI_FIXTURE"] = str(DATA / "nvidia-smi" / fixture)
    return env


def node_file(tmp_path, port: int) -> str:
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"stack": "demand-predictor", "node": "us-central1-0", "port": port, "gpus": 1,
                                "health_path": "/health", "command": "true", "env": {}, "secrets": {}}))
    return str(path)


def deployed_node() -> Node:
    # A documentation address (RFC 5737) nothing answers on: the gate must not need it.
    return Node(key="us-central1-0", name="demand-predictor-us-central1-0", region="us-central1", replica=0,
                endpoint="http://192.0.2.10:8000", health_url="http://192.0.2.10:8000/health", zone="us-central1-a")


def report_from_node(tmp_path, stack, google, *, health: int, fixture: str | None):
    server = ModelServer(health)
    try:
        done = subprocess.run([sys.executable, str(REPORTER), "once", node_file(tmp_path, server.port)],
                              env=node_env(tmp_path, google, fixture), capture_output=True, text=True, timeout=60)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    return verify.run(stack, [deployed_node()]), server.port


def by_check(report):
    return {result.check: result for result in report.results}


def test_a_healthy_node_with_its_gpu_passes_the_gate_with_no_ingress(tmp_path, stack, google):
    report, port = report_from_node(tmp_path, stack, google, health=200, fixture="t4.txt")
    results = by_check(report)
    assert report.passed, [(r.check, r.message) for r in report.results]
    # Two writes per run (guest attributes are for small, rare values): health and gpu, then the sample.
    assert google.puts == ["mlinfra/report", "mlinfra/latency"]
    assert results["gpu"].summary.startswith("1× Tesla T4, driver ") and results["gpu"].summary.endswith("(on the node)")
    assert results["health"].summary.startswith("HTTP 200 after ") and "(on the node, 20" in results["health"].summary
    assert results["latency"].summary.endswith("(on the node: server time, without the network)")
    assert results["latency"].details["ok"] == 30 and results["latency"].details["url"] == f"http://127.0.0.1:{port}/predict"
    assert {r.details["measured"] for r in report.results} == {"on the node"}
    assert "admits only ranges that are not on the internet" in results["latency"].details["why"]


def test_a_node_without_the_driver_fails_the_gpu_check_with_the_usual_diagnosis(tmp_path, stack, google):
    report, _ = report_from_node(tmp_path, stack, google, health=200, fixture=None)
    gpu = by_check(report)["gpu"]
    assert not gpu.passed and gpu.details["diagnosis"] == "nvidia-smi missing"
    assert gpu.message.startswith("nvidia-smi is not installed on the node, so no NVIDIA driver is installed. Fix: ")
    assert by_check(report)["health"].passed  # the server itself is up


def test_a_node_with_another_gpu_fails_naming_both(tmp_path, stack, google):
    report, _ = report_from_node(tmp_path, stack, google, health=200, fixture="l4.txt")
    gpu = by_check(report)["gpu"]
    assert not gpu.passed
    assert gpu.message.startswith("expected 1× nvidia-tesla-t4 (Tesla T4), found 1× NVIDIA L4")


def test_an_unhealthy_server_fails_health_on_the_node_and_latency_is_not_run(tmp_path, stack, google):
    report, port = report_from_node(tmp_path, stack, google, health=503, fixture="t4.txt")
    results = by_check(report)
    assert not results["health"].passed and results["health"].details["measured"] == "on the node"
    assert results["health"].message.startswith(f"on the node, http://127.0.0.1:{port}/health answered HTTP 503 for ")
    assert results["health"].details["attempts"] >= 2  # it waited (health_timeout_s = 2) before giving up
    assert results["latency"].message == "not run: the node is not healthy"
    assert results["gpu"].passed


def test_a_node_that_never_reports_fails_in_one_line_saying_where_to_look(tmp_path, stack, google, monkeypatch):
    monkeypatch.setattr(node_checks, "BOOT_GRACE_S", 0.0)
    monkeypatch.setattr(node_checks, "RUN_MARGIN_S", 0.0)
    monkeypatch.setattr(node_checks, "POLL_S", 0.2)
    report = verify.run(stack, [deployed_node()], checks=["health", "gpu"])
    health, gpu = by_check(report)["health"], by_check(report)["gpu"]
    assert not health.passed and health.summary == "no report"
    assert health.message.startswith("no report from the node (guest attribute mlinfra/report) within 2 s")
    assert "gcloud compute instances get-serial-port-output demand-predictor-us-central1-0 --zone us-central1-a" \
        in health.message
    assert not gpu.passed and gpu.summary == "no report"


def test_fresh_asks_the_node_for_a_new_run_and_waits_for_that_one(tmp_path, stack, google):
    server = ModelServer(200)
    watcher = subprocess.Popen([sys.executable, str(REPORTER), "watch", node_file(tmp_path, server.port)],
                               env=node_env(tmp_path, google, "t4.txt"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        first = google.wait_for_guest("mlinfra", "report", timeout_s=60)
        assert first is not None and json.loads(first)["run"] == "boot" and json.loads(first)["boot"]
        report = verify.run(stack, [deployed_node()], checks=["health", "gpu"], fresh=True)
        asked = google.attributes["mlinfra-check-request"]
        assert asked != "boot" and set(google.attributes) == {"mlinfra-check", "mlinfra-check-request"}
        assert report.passed and {r.details.get("run") for r in report.results if r.check == "health"} == {asked}
        # The boot run sampled latency; the fresh run of health and gpu did not (the request named them).
        assert asked.endswith(" checks=health,gpu")
        assert google.puts == ["mlinfra/report", "mlinfra/latency", "mlinfra/report"]
    finally:
        watcher.terminate()
        watcher.communicate(timeout=30)
        server.stop()


def test_the_default_module_needs_no_ingress_for_the_gate(tmp_path, stack):
    workdir = stack.render().workdir
    values = json.loads((workdir / "terraform.tfvars.json").read_text())
    assert values["serve_cidrs"] == ["10.0.0.0/8"] and values["ssh_cidrs"] == []
    assert json.loads(values["node_check"])["gpu_command"][0] == "nvidia-smi"
    main = (workdir / "main.tf").read_text()
    assert '"enable-guest-attributes" = "TRUE"' in main
    assert (workdir / "guest_report.py").read_text() == REPORTER.read_text()
    assert "guest_report.py watch /etc/mlinfra/node.json" in (workdir / "startup.sh").read_text()


def test_latency_is_measured_from_here_when_the_port_answers(tmp_path, google, monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", TOKEN)
    # A public range allowed and no MLINFRA_CLIENT_IP: mlinfra cannot tell before, so verify tries the port.
    stack = gcp_stack(tmp_path, "demand-predictor", gcp={"regions": ["us-central1"], "zones": ["us-central1-a"]},
                      compute={"gpu": "nvidia-tesla-t4", "gpu_count": 1, "machine_type": "n1-standard-4"},
                      serve={"port": 8000, "allow_cidrs": ["34.72.10.0/24"]},
                      verify={"health_timeout_s": 2, "requests": 30, "warmup": 2, "concurrency": 2})
    assert "cannot tell offline" in " ".join(stack.notes())
    server = ModelServer(200)
    try:
        done = subprocess.run([sys.executable, str(REPORTER), "once", node_file(tmp_path, server.port)],
                              env=node_env(tmp_path, google, "t4.txt"), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        here = f"http://127.0.0.1:{server.port}"
        node = Node(key="us-central1-0", name="demand-predictor-us-central1-0", region="us-central1", replica=0,
                    endpoint=here, health_url=here + "/health", zone="us-central1-a")
        report = verify.run(stack, [node])
    finally:
        server.stop()
    results = by_check(report)
    assert report.passed, [(r.check, r.message) for r in report.results]
    assert results["latency"].details["measured"] == "from this machine"
    assert results["latency"].details["url"] == here + "/predict"
    assert results["latency"].summary.endswith(" (from this machine)")
    assert results["health"].details["measured"] == results["gpu"].details["measured"] == "on the node"
    monkeypatch.setenv("MLINFRA_CLIENT_IP", "not-an-address")
    assert "MLINFRA_CLIENT_IP='not-an-address' is not an IP address" in " ".join(stack.notes())


def test_health_and_gpu_are_published_before_the_latency_sample(tmp_path, stack, google):
    server = ModelServer(200)
    server.slow.clear()  # every prediction waits: the sample cannot finish until the test says so
    node = subprocess.Popen([sys.executable, str(REPORTER), "once", node_file(tmp_path, server.port)],
                            env=node_env(tmp_path, google, "t4.txt"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = google.wait_for_guest("mlinfra", "report", timeout_s=60)
        assert first is not None, "the node held health and gpu back until its latency sample was done"
        assert json.loads(first)["health"]["ok"] and json.loads(first)["latency"] == "pending"
        assert ("mlinfra", "latency") not in google.guest
        server.slow.set()
        node.communicate(timeout=60)
        report = verify.run(stack, [deployed_node()])
    finally:
        node.kill()
        server.stop()
    assert report.passed, [(r.check, r.message) for r in report.results]
    assert by_check(report)["latency"].details["ok"] == 30


def test_heal_gets_health_and_gpu_from_a_node_whose_latency_sample_is_slow(tmp_path, stack, google, monkeypatch):
    monkeypatch.setattr(node_checks, "RUN_MARGIN_S", 30.0)
    server = ModelServer(200)
    watcher = subprocess.Popen([sys.executable, str(REPORTER), "watch", node_file(tmp_path, server.port)],
                               env=node_env(tmp_path, google, "t4.txt"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert google.wait_for_guest("mlinfra", "latency", timeout_s=60) is not None  # the boot run is over
        server.slow.clear()  # from now on a latency sample would not finish
        # What heal asks (ops/heal.py _failures): a fresh run of health and gpu, 10 s to detect.
        report = verify.run(stack, [deployed_node()], checks=["health", "gpu"], health_deadline_s=10, fresh=True)
        assert report.passed, [(r.check, r.message) for r in report.results]
        assert google.puts == ["mlinfra/report", "mlinfra/latency", "mlinfra/report"]
    finally:
        watcher.terminate()
        watcher.communicate(timeout=30)
        server.stop()


def test_a_request_during_a_slow_sample_ends_it_so_heal_is_answered(tmp_path, stack, google, monkeypatch):
    monkeypatch.setattr(node_checks, "RUN_MARGIN_S", 30.0)
    server = ModelServer(200)
    server.slow.clear()  # the boot run's sample: each prediction hangs until the node's 10 s timeout
    watcher = subprocess.Popen([sys.executable, str(REPORTER), "watch", node_file(tmp_path, server.port)],
                               env=node_env(tmp_path, google, "t4.txt"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        boot = google.wait_for_guest("mlinfra", "report", timeout_s=60)
        assert boot is not None and json.loads(boot)["latency"] == "pending"  # the boot sample is under way
        report = verify.run(stack, [deployed_node()], checks=["health", "gpu"], health_deadline_s=10, fresh=True)
        assert report.passed, [(r.check, r.message) for r in report.results]
        cut = json.loads(google.guest[("mlinfra", "latency")])
        assert cut["run"] == "boot" and cut["cut_short"] > 0  # the boot sample gave way to heal's request
    finally:
        watcher.terminate()
        watcher.communicate(timeout=30)
        server.stop()


def test_an_openai_stack_gets_a_streamed_sample_measured_per_token_on_the_node(tmp_path, monkeypatch):
    """`mlinfra serve` (the reference LLM server) on the node's localhost: the node streams the
    completions the operator built and the operator judges them with the same token budgets."""
    import socket
    import time
    import urllib.request

    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", TOKEN)
    stack = gcp_stack(tmp_path, "demand-predictor", gcp={"regions": ["us-central1"], "zones": ["us-central1-a"]},
                      compute={"gpu": "nvidia-tesla-t4", "gpu_count": 1, "machine_type": "n1-standard-4"},
                      serve={"port": 8000},
                      verify={"protocol": "openai", "path": "/v1/chat/completions", "max_tokens": 8, "requests": 10,
                              "warmup": 1, "health_timeout_s": 5, "ttft_p95_ms": 60000, "itl_p95_ms": 60000})
    sent = json.loads(node_checks.settings(stack.spec))["latency"]
    assert [json.loads(body)["stream"] for body in sent["bodies"]] == [True] * 4 and "payload" not in sent
    google = Google.start(attributes={"mlinfra-check": node_checks.settings(stack.spec),
                                      "mlinfra-check-request": "boot"})
    monkeypatch.setenv("MLINFRA_COMPUTE_API_URL", f"http://{google.address}/compute/v1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlinfra.serve", "--port", str(port), "--token-ms", "1"],
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):  # until it listens (the node's own health wait is what the test checks)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        done = subprocess.run([sys.executable, str(REPORTER), "once", node_file(tmp_path, port)],
                              env=node_env(tmp_path, google, "t4.txt"), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        report = verify.run(stack, [deployed_node()])
    finally:
        server.terminate()
        server.wait(10)
        google.stop()
    latency = by_check(report)["latency"]
    assert report.passed, [(r.check, r.message) for r in report.results]
    assert latency.details["protocol"] == "openai" and latency.details["output_tokens"] == 80
    assert latency.details["url"] == f"http://127.0.0.1:{port}/v1/chat/completions"
    assert latency.summary.startswith("TTFT p50 ") and "(on the node: server time" in latency.summary
    assert latency.details["budget"]["p95_ms"] == 0.0  # protocol openai: no whole-stream budget by default
