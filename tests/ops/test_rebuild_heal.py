"""Disposable infrastructure on the local target: timed rebuild, self-healing, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from helpers import stack_processes, write_stack
from typer.testing import CliRunner

from mlinfra import Stack
from mlinfra.cli import app
from mlinfra.errors import UsageError
from mlinfra.ops.rebuild import parse_duration

runner = CliRunner()
SERVE = f"exec {sys.executable} -m mlinfra.serve"


def stack_file(tmp_path, name, *, regions='["east", "west"]', replicas=2, command=SERVE, extra=""):
    return write_stack(tmp_path, f"""
        name = "{name}"
        {extra}
        [local]
        regions = {regions}
        [compute]
        replicas = {replicas}
        [serve]
        command = '{command}'
        [verify]
        requests = 40
        concurrency = 4
        warmup = 4
        health_timeout_s = 20
    """)


def test_rebuild_two_regions_two_replicas(tmp_path, monkeypatch, deployed):
    monkeypatch.chdir(tmp_path)
    stack = Stack.load(stack_file(tmp_path, "rb"))
    deployed(stack)
    stack.up(verify=False)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = runner.invoke(app, ["rebuild", "--yes", "--report", "report.json", "--junit", "junit.xml"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert [p["name"] for p in report["phases"]] == ["destroy", "apply", "ready", "verify"]
    assert all(p["ok"] for p in report["phases"]) and report["passed"] and report["within_budget"]
    assert report["phases"][0]["terraform_s"] > 0 and report["phases"][2]["wait_s"] > 0
    checks = {(c["node"], c["check"]) for c in report["checks"]}
    names = [f"rb-{r}-{i}" for r in ("east", "west") for i in (0, 1)]
    assert checks == {(n, c) for n in names for c in ("health", "gpu", "latency")}
    assert all(c["passed"] for c in report["checks"])
    before = {n["name"]: n["pid"] for n in report["nodes_before"]}
    after = {n["name"]: n["pid"] for n in report["nodes_after"]}
    assert sorted(before) == sorted(after) == names
    assert all(before[n] != after[n] for n in names)  # every node really was rebuilt
    cases = [c.get("classname") for c in ET.parse(tmp_path / "junit.xml").getroot().iter("testcase")]
    assert cases[:4] == [f"mlinfra.verify.rebuild-{p}" for p in ("destroy", "apply", "ready", "verify")]
    assert summary.read_text().startswith("### mlinfra rebuild `rb`: PASSED")
    assert result.stdout.splitlines()[-1].startswith("PASSED: rebuilt and verified in ")


def test_failed_rebuild_says_what_is_left_and_can_clean_up(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack_file(tmp_path, "rb-fail", regions='["a"]', replicas=1, command="exit 3")
    result = runner.invoke(app, ["rebuild", "--yes", "--report", "r.json"])
    assert result.exit_code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["failed_phase"] == "ready" and report["left_running"] == ["rb-fail-a-0"]
    assert report["cleanup_command"] == "mlinfra down --yes -f mlinfra.toml"
    assert "to clean up: mlinfra down --yes -f mlinfra.toml" in result.stderr
    result = runner.invoke(app, ["rebuild", "--yes", "--cleanup-on-failure", "--report", "r.json"])
    report = json.loads((tmp_path / "r.json").read_text())
    assert result.exit_code == 1 and report["cleaned_up"] and report["left_running"] == []
    assert Stack.load(tmp_path / "mlinfra.toml").status().deployed is False


def test_protected_stack_is_not_rebuilt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stack_file(tmp_path, "rb-prod", extra="protected = true")
    result = runner.invoke(app, ["rebuild", "--yes"])
    assert result.exit_code == 2
    assert result.stderr == "error: stack 'rb-prod' is protected (protected = true); pass --force to rebuild it\n"


def test_heal_replaces_only_the_broken_node(tmp_path, deployed):
    stack = Stack.load(stack_file(tmp_path, "hl", regions='["a", "b"]', replicas=1))
    deployed(stack)
    nodes = {n.key: n for n in stack.up(verify=False).nodes}
    os.kill(nodes["a-0"].pid, signal.SIGKILL)
    seen = []
    report = stack.heal(detect_s=2, on_replacement=seen.append)
    assert [(r.node, r.failed_check, r.outcome, r.attempts) for r in report.replacements] == [
        ("hl-a-0", "health", "healed", 1)]
    assert seen == report.replacements and report.healthy == ["hl-b-0"] and report.passed
    after = {n.key: n for n in stack.status().nodes}
    assert after["b-0"].pid == nodes["b-0"].pid  # the healthy node was not touched
    assert after["a-0"].pid != nodes["a-0"].pid and after["a-0"].ready
    assert stack.verify().passed


def test_node_that_keeps_crashing_is_unrecoverable(tmp_path, monkeypatch, deployed):
    monkeypatch.chdir(tmp_path)
    # Node b-0 crashes at every start; a-0 is fine.
    command = f'[ "$MLINFRA_NODE" = "b-0" ] && exit 1; {SERVE}'
    stack = Stack.load(stack_file(tmp_path, "hl-bad", regions='["a", "b"]', replicas=1, command=command))
    deployed(stack)
    healthy_pid = {n.key: n.pid for n in stack.up(verify=False, wait_ready=False).nodes}["a-0"]
    # The default detection window: a dead process is seen at once, while a-0 (alive, loading
    # its model on a busy machine) has its full 10 s to answer and is not replaced.
    report = stack.heal(attempts=2, backoff_s=0.1)
    [replacement] = report.replacements
    assert (replacement.node, replacement.outcome, replacement.attempts) == ("hl-bad-b-0", "unrecoverable", 2)
    # Seen at once, not after the 20 s health deadline: the node's process is gone, and why.
    assert replacement.reason.startswith("the node's process exited: process ")
    assert " exited with code 1" in replacement.reason
    assert report.unrecoverable == ["hl-bad-b-0"] and not report.passed
    assert {n.key: n.pid for n in stack.status().nodes}["a-0"] == healthy_pid
    result = runner.invoke(app, ["heal", "--attempts", "1", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout.splitlines()[0])["outcome"] == "unrecoverable"  # the JSON-lines log


def test_sigint_during_the_apply_phase_then_down_leaves_nothing(tmp_path):
    stack_file(tmp_path, "rb-int", regions='["a", "b", "c"]', replicas=2)
    proc = subprocess.Popen([sys.executable, "-m", "mlinfra", "rebuild", "--yes"], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = ""
    try:
        for line in proc.stderr:
            seen += line
            if seen.count("phase destroy: done") and ": create…" in line:
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130, seen + rest
        assert "interrupted: Terraform stopped gracefully and saved its state" in rest
    finally:
        proc.kill()
        down = subprocess.run([sys.executable, "-m", "mlinfra", "down", "--yes"], cwd=tmp_path,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert down.returncode == 0, down.stderr
    assert stack_processes("rb-int") == []
    state = json.loads((tmp_path / ".mlinfra" / "rb-int" / "terraform.tfstate").read_text())
    assert state["resources"] == []


@pytest.mark.parametrize("text,seconds", [("10m", 600), ("90s", 90), ("1h", 3600), ("1m30s", 90), ("45", 45)])
def test_budget_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "5x", "m"])
def test_bad_budget_is_bad_input(text):
    with pytest.raises(UsageError):
        parse_duration(text)


def test_heal_watch_logs_each_replacement_as_a_json_line(tmp_path, deployed):
    stack = Stack.load(stack_file(tmp_path, "hl-watch", regions='["a"]', replicas=1))
    deployed(stack)
    pid = stack.up(verify=False).nodes[0].pid
    proc = subprocess.Popen([sys.executable, "-m", "mlinfra", "heal", "--watch", "--interval", "1s"], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        os.kill(pid, signal.SIGKILL)
        line = proc.stdout.readline()  # blocks until the watcher has replaced the node
        entry = json.loads(line)
        assert (entry["node"], entry["failed_check"], entry["outcome"], entry["attempts"]) == \
            ("hl-watch-a-0", "health", "healed", 1)
        assert entry["at"].endswith("Z") and entry["elapsed_s"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert stack.status().nodes[0].ready
