"""Autoscaled serving on the local target, end to end: a real Ray head, real Serve, real servers.

The tests share one stack and run in order: from zero, a held request (the gate's cold start),
scale-up under load with its queue depth in status, back to zero, a killed server replaced, and
`down` (beside another Ray cluster it must spare).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

from typer.testing import CliRunner

from helpers import stack_processes
from mlinfra.cli import app
from targets.serve.rayhelpers import load, replicas, wait_for

ENV = {"SLOW_MS": "300"}
UPSCALE_DELAY_S = 1
DOWNSCALE_DELAY_S = 4
STACK = f"""
    name = "ray-elastic"
    [serve]
    command = "{{command}}"
    [autoscale]
    min_replicas = 0
    max_replicas = 3
    target_ongoing_requests = 1
    upscale_delay_s = {UPSCALE_DELAY_S}
    downscale_delay_s = {DOWNSCALE_DELAY_S}
    [verify]
    requests = 6
    concurrency = 2
    warmup = 0
    p95_ms = 60000
"""


def test_zero_replicas_after_up_and_status_json(ray_stack, monkeypatch):
    monkeypatch.chdir(ray_stack.spec.path.parent)
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    scaling = data["autoscale"]
    assert scaling["engine"] == "ray-serve"
    assert (scaling["replicas"], scaling["min_replicas"], scaling["max_replicas"]) == (0, 0, 3)
    assert data["endpoint"].startswith("http://127.0.0.1:") and data["endpoint"] == data["nodes"][0]["endpoint"]
    [region] = scaling["regions"].values()
    assert (scaling["queue_depth"], region["queue_depth"], region["queued"], region["nodes"]) == (0, 0, 0, 1)
    table = CliRunner().invoke(app, ["status"])
    assert "replicas 0 running, 0 starting (min 0, max 3), queue 0 (0 waiting for a replica), 1 Ray node(s)" in (
        table.stdout
    )


def test_the_gates_first_request_at_zero_is_named_the_cold_start(ray_stack, monkeypatch):
    """The request is held while a replica starts, answered 200, and the report says so and how long."""
    monkeypatch.chdir(ray_stack.spec.path.parent)
    result = CliRunner().invoke(app, ["verify", "--check", "latency"])
    assert result.exit_code == 0, result.output
    found = re.search(r"cold-start.*first request (\d+\.\d)s from 0 replicas \(HTTP 200\)", result.output)
    assert found, result.output
    assert float(found.group(1)) >= 0.3  # it waited for a replica (the server alone takes 300 ms)
    assert replicas(ray_stack) >= 1
    # Replicas running now: the next first request is no cold start, and is not named one.
    warm = ray_stack.verify(checks=["latency"])
    assert [r.check for r in warm.results] == ["latency"] and warm.passed


def test_sustained_load_brings_replicas_above_one(ray_stack):
    endpoint = ray_stack.status().endpoint
    with load(endpoint, clients=6) as statuses:
        # target 1 in flight per replica, 6 clients: Serve wants 3; the bound is the delay plus
        # replica start-up (~3 s each on two cores) plus status polling.
        wait_for(lambda: replicas(ray_stack) > 1, timeout_s=UPSCALE_DELAY_S + 40)
        # 6 closed-loop clients: status shows requests in flight or waiting (exported every 2 s).
        wait_for(lambda: (ray_stack.status().autoscale["queue_depth"] or 0) >= 2, timeout_s=30)
    assert statuses and set(statuses) == {200}


def test_idle_brings_replicas_back_to_zero_and_the_queue_empties(ray_stack):
    wait_for(lambda: replicas(ray_stack) == 0, timeout_s=DOWNSCALE_DELAY_S + 45, every_s=2)
    wait_for(lambda: ray_stack.status().autoscale["queue_depth"] == 0, timeout_s=30)


def test_verify_autoscale_reports_cold_start_scale_up_and_down(ray_stack, monkeypatch):
    monkeypatch.chdir(ray_stack.spec.path.parent)
    result = CliRunner().invoke(app, ["verify", "--check", "autoscale", "--idle", "--json"])
    assert result.exit_code == 0, result.output
    [check] = json.loads(result.stdout)["results"]
    figures = check["details"]
    assert check["check"] == "autoscale" and check["passed"]
    assert figures["replicas_at_rest"] == 0 and figures["cold_start_s"] > 0.3
    assert figures["peak_replicas"] > 1 and figures["scale_up_s"] <= UPSCALE_DELAY_S + 60
    assert figures["scale_down_s"] is not None and figures["errors"] == 0
    assert "cold start" in check["summary"] and f"back to 0 in {figures['scale_down_s']:.1f}s" in check["summary"]


def _server_pid(endpoint: str) -> int:
    with urllib.request.urlopen(endpoint + "/pid", timeout=60) as response:
        return int(response.read())


def test_a_replica_whose_server_was_killed_is_replaced(ray_stack):
    endpoint = ray_stack.status().endpoint
    # Steady light traffic keeps the replica in demand, so only its health check can replace it:
    # without one, every request would fail against the dead server for as long as it lasts.
    with load(endpoint, clients=1, pause_s=0.2) as statuses:
        first = _server_pid(endpoint)
        os.kill(first, signal.SIGKILL)
        killed_at = len(statuses)

        def replaced() -> bool:
            recent = statuses[killed_at:][-5:]
            return len(recent) == 5 and set(recent) == {200}

        wait_for(replaced, timeout_s=45, every_s=0.5)
    assert _server_pid(endpoint) != first


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _marked(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in open(f"/proc/{entry}/environ", "rb").read().split(b"\0"):
                found.append(int(entry))
        except OSError:
            continue
    return found


def test_down_stops_the_stacks_ray_and_spares_another_cluster(ray_stack):
    """Another Ray cluster (not mlinfra's) runs beside the stack; `down` must not touch it."""
    marker = f"RAY_BESIDE_TEST={uuid.uuid4().hex}"
    temp_dir = tempfile.mkdtemp(prefix="rb-")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **dict([marker.split("=", 1)]))
    cli = "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
    ports = [_free_port() for _ in range(4)]
    try:
        subprocess.run(
            [
                sys.executable,
                "-c",
                cli,
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={ports[0]}",
                f"--ray-client-server-port={ports[1]}",
                f"--dashboard-agent-listen-port={ports[2]}",
                f"--metrics-export-port={ports[3]}",
                "--include-dashboard=false",
                "--include-log-monitor=false",
                "--disable-usage-stats",
                "--num-cpus=1",
                f"--temp-dir={temp_dir}",
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        beside = _marked(marker)
        assert beside
        assert stack_processes(ray_stack.name)
        result = ray_stack.down(force=True)
        assert result.destroyed
        assert stack_processes(ray_stack.name) == []
        assert not ray_stack.status().deployed
        assert [pid for pid in beside if os.path.exists(f"/proc/{pid}")] == beside  # every one still runs
        with socket.create_connection(("127.0.0.1", ports[0]), timeout=2):
            pass  # and its GCS still answers
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _marked(marker):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(1.0)
        shutil.rmtree(temp_dir, ignore_errors=True)
