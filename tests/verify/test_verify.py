"""The verification suite on the local target's real servers, and its CI reports."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET

import pytest
from helpers import write_stack
from typer.testing import CliRunner

from mlinfra import Stack
from mlinfra.cli import app
from mlinfra.verify import health
from mlinfra.verify.report import histogram_lines, junit_xml, markdown, verdict
from mlinfra.verify.result import CheckResult

runner = CliRunner()
SERVE = f"exec {sys.executable} -m mlinfra.serve"


@pytest.mark.parametrize("path,status,outcome", [
    ("/health", 200, health.READY), ("/health", 204, health.READY), ("/health", 301, health.READY),
    ("/health", 503, health.NOT_READY), ("/health", 500, health.NOT_READY),
    ("/v2/health/ready", 400, health.NOT_READY), ("/v2/health/ready", 404, health.NOT_READY),
    ("/health", 404, health.MISCONFIGURED), ("/health", 401, health.MISCONFIGURED), ("/ping", 403, health.MISCONFIGURED),
])
def test_status_classification(path, status, outcome):
    assert health.classify_status(path, status) == outcome


def stack_with(tmp_path, name, command=SERVE, verify="", regions='["a"]'):
    return Stack.load(write_stack(tmp_path, f"""
        name = "{name}"
        [local]
        regions = {regions}
        [serve]
        command = "{command}"
        [verify]
        requests = 60
        concurrency = 4
        warmup = 5
        {verify}
    """))


def test_all_checks_pass_on_healthy_nodes(tmp_path, deployed):
    stack = stack_with(tmp_path, "v-ok", regions='["a", "b"]')
    deployed(stack)
    up = stack.up()  # the gate ran
    assert up.passed and up.verify.passed
    report = stack.verify()
    assert [(r.node, r.check, r.status) for r in report.results] == [
        ("v-ok-a-0", "health", "pass"), ("v-ok-a-0", "gpu", "skip"), ("v-ok-a-0", "latency", "pass"),
        ("v-ok-b-0", "health", "pass"), ("v-ok-b-0", "gpu", "skip"), ("v-ok-b-0", "latency", "pass"),
    ]
    latency = report.results[2].details
    assert latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert report.verdict == "PASSED: 4 passed, 0 failed, 2 skipped"


def test_stopped_node_fails_health_at_once_naming_how_it_exited(tmp_path, deployed):
    import os
    import signal

    # The default 600 s health deadline: a dead node must not be polled until it runs out.
    stack = stack_with(tmp_path, "v-stop", regions='["a", "b"]')
    deployed(stack)
    nodes = stack.up().nodes
    os.kill(nodes[0].pid, signal.SIGTERM)
    report = stack.verify(checks=["health", "latency"])
    by_key = {(r.node, r.check): r for r in report.results}
    failed = by_key[("v-stop-a-0", "health")]
    assert not failed.passed and failed.summary == "exited"
    # The reference server shuts down cleanly on SIGTERM; its log's last lines come along.
    assert failed.message.startswith(f"the node's process exited: process {nodes[0].pid} exited with code 0; "
                                     "last log lines: ")
    assert "mlinfra serve: stopped" in failed.message
    # Polling a dead node until the deadline would be thousands of attempts.
    assert failed.details["attempts"] < 100 and failed.details["last_outcome"] == "exited"
    assert by_key[("v-stop-a-0", "latency")].message == "not run: the node is not healthy"
    assert by_key[("v-stop-b-0", "health")].passed and by_key[("v-stop-b-0", "latency")].passed
    assert not report.passed and report.verdict == "FAILED: 2 passed, 2 failed"


def test_killed_node_fails_cli_verify_naming_node_and_signal(tmp_path, deployed):
    import os
    import signal

    stack = stack_with(tmp_path, "v-kill", regions='["a"]')
    deployed(stack)
    pid = stack.up(verify=False).nodes[0].pid
    os.kill(pid, signal.SIGKILL)
    result = CliRunner().invoke(app, ["verify", "-f", str(stack.path), "--check", "health"])
    assert result.exit_code == 1, result.output
    assert "v-kill-a-0" in result.output and f"process {pid} was killed by signal 9 (SIGKILL)" in result.output


def test_run_verify_is_a_deprecated_alias_of_verify(tmp_path, deployed):
    stack = stack_with(tmp_path, "v-alias", regions='["a"]')
    deployed(stack)
    stack.up(verify=False)
    with pytest.warns(DeprecationWarning, match="use Stack.verify"):
        report = stack.run_verify(checks=["health"])
    assert report.passed and [r.check for r in report.results] == ["health"]


def test_slow_server_fails_the_latency_budget_with_the_measured_p95(tmp_path, deployed):
    stack = stack_with(tmp_path, "v-slow", command=f"{SERVE} --delay-ms 60", verify="p95_ms = 20")
    deployed(stack)
    up = stack.up()
    assert not up.passed
    latency = [r for r in up.verify.results if r.check == "latency"][0]
    assert not latency.passed
    p95 = latency.details["p95_ms"]
    assert p95 >= 60
    assert f"p95 {p95:.1f} ms > budget 20 ms" in latency.message


def test_server_that_starts_late_passes_after_waiting(tmp_path, deployed):
    stack = stack_with(tmp_path, "v-late", command=f"{SERVE} --load-seconds 3", verify="health_timeout_s = 60")
    deployed(stack)
    up = stack.up(verify=False, wait_ready=False)
    report = stack.verify(checks=["health"])
    result = report.results[0]
    assert result.passed and result.elapsed_s >= 2.0 and result.details["attempts"] > 2
    assert up.verify is None


def test_wrong_health_path_fails_fast_as_misconfigured(tmp_path, deployed):
    stack = Stack.load(write_stack(tmp_path, f"""
        name = "v-path"
        [serve]
        command = "{SERVE}"
        health_path = "/nope"
        [verify]
        health_timeout_s = 120
    """))
    deployed(stack)
    report = stack.up().verify
    result = report.results[0]
    assert result.check == "health" and not result.passed
    assert result.summary == "misconfigured (HTTP 404)"
    assert result.elapsed_s < 60  # failed fast, long before the 120 s deadline


def test_cli_verify_exit_codes_and_reports(tmp_path, monkeypatch, deployed):
    monkeypatch.chdir(tmp_path)
    stack = stack_with(tmp_path, "v-cli")
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = runner.invoke(app, ["verify"])
    assert (result.exit_code, result.stderr) == (1, "error: stack 'v-cli' is not deployed: run `mlinfra up` first\n")
    assert runner.invoke(app, ["verify", "--check", "gpuu"]).stderr == \
        "error: unknown check 'gpuu': choose from health, gpu, latency, autoscale\n"
    deployed(stack)
    stack.up(verify=False)
    result = runner.invoke(app, ["verify", "--junit", "report.xml"])
    assert result.exit_code == 0, result.output
    assert result.stdout.rstrip().splitlines()[-1] == "PASSED: 2 passed, 0 failed, 1 skipped"
    suite = ET.parse(tmp_path / "report.xml").getroot().find("testsuite")
    cases = [(c.get("classname"), c.get("name")) for c in suite.iter("testcase")]
    assert cases == [("mlinfra.verify.health", "v-cli-a-0"), ("mlinfra.verify.gpu", "v-cli-a-0"),
                     ("mlinfra.verify.latency", "v-cli-a-0")]
    assert summary.read_text().startswith("### mlinfra verify `v-cli`: PASSED")
    data = json.loads(runner.invoke(app, ["verify", "--json", "--check", "health"]).stdout)
    assert data["passed"] is True and [r["check"] for r in data["results"]] == ["health"]


def test_junit_failure_messages_explain_and_names_are_unique():
    results = [
        CheckResult("n-0", "health", True, "ready after 1.0s"),
        CheckResult("n-0", "gpu", False, "1× NVIDIA L4", message="expected 1× nvidia-tesla-t4 (Tesla T4), found 1× NVIDIA L4"),
        CheckResult("n-0", "latency", True, "p95 3.1 ms", skipped=False),
        CheckResult("n-1", "gpu", True, "no GPU", message='skipped: gpu = "none"', skipped=True),
    ]
    root = ET.fromstring(junit_xml("s", results, 1.5))
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "1")
    names = [f"{c.get('classname')}.{c.get('name')}" for c in suite.iter("testcase")]
    assert len(names) == len(set(names))
    failure = suite.findall("testcase")[1].find("failure")
    assert failure.get("message") == "expected 1× nvidia-tesla-t4 (Tesla T4), found 1× NVIDIA L4"
    assert verdict(results) == "FAILED: 2 passed, 1 failed, 1 skipped"


def test_markdown_summary_stays_small_with_many_nodes():
    results = [CheckResult(f"node-{i}", "latency", True, "p95 1.0 ms " + "x" * 200,
                           details={"histogram": [[1.0, 5], [2.0, 9]]}) for i in range(2000)]
    text = markdown("big", results)
    assert len(text.encode()) <= 64 * 1024 and text.endswith("…(truncated)\n")


def test_histogram_lines_scale_to_the_peak():
    lines = histogram_lines([[0.5, 0], [1.0, 10], [2.0, 5], [4.0, 0]], width=10)
    assert lines == ["≤     1.00 ms │██████████ 10", "≤     2.00 ms │█████      5"]


def test_a_verification_that_checked_nothing_fails():
    assert verdict([]) == "FAILED: no nodes were checked"
    skipped = [CheckResult("n-0", "gpu", True, "no GPU requested", skipped=True)]
    assert verdict(skipped) == "FAILED: nothing was checked, 1 skipped"
    from mlinfra.verify import VerifyReport

    assert not VerifyReport("s", []).passed and not VerifyReport("s", skipped).passed
    assert VerifyReport("s", skipped + [CheckResult("n-0", "health", True, "ready")]).passed
    junit = ET.fromstring(junit_xml("s", [], 0.0))
    assert junit.get("failures") == "1" and junit.find(".//failure").get("message") == "FAILED: no nodes were checked"
