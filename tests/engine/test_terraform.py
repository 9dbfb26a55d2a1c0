"""The engine against real Terraform: events, diagnostics, configuration, binaries, interrupts."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import HTTP_SERVER, write_stack

from mlinfra import Stack
from mlinfra.engine import Terraform, terraform_env
from mlinfra.errors import EngineError, UsageError


def module(tmp_path: Path, text: str) -> Path:
    (tmp_path / "main.tf").write_text(text)
    return tmp_path


def test_plan_summary_lists_addresses(tmp_path):
    engine = Terraform(module(tmp_path, 'resource "terraform_data" "n" {\n  for_each = toset(["b", "a"])\n}\n'))
    engine.init()
    summary = engine.plan()
    assert (summary.add, summary.change, summary.destroy) == (2, 0, 0)
    assert [(c.address, c.action) for c in summary.changes] == [
        ('terraform_data.n["a"]', "create"), ('terraform_data.n["b"]', "create")]
    engine.apply()
    assert engine.plan().has_changes is False


def test_errors_are_built_from_diagnostics_with_file_and_line(tmp_path):
    engine = Terraform(module(tmp_path, 'resource "terraform_data" "n" {\n  input = var.missing\n}\n'))
    engine.init()
    with pytest.raises(EngineError) as info:
        engine.plan()
    assert str(info.value) == (
        "terraform plan failed: Reference to undeclared input variable: An input variable with the name "
        f'"missing" has not been declared. This variable can be declared with a variable "missing" {{}} block. '
        f"({tmp_path / 'main.tf'}:2)"
    )


def test_init_runs_only_when_needed(tmp_path):
    engine = Terraform(module(tmp_path, 'resource "terraform_data" "n" {}\n'))
    assert engine.init() is True
    assert engine.init() is False
    (tmp_path / "extra.tf").write_text('resource "terraform_data" "m" {}\n')
    assert engine.init() is True


def test_missing_cli_config_file_is_dropped_existing_one_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(tmp_path / "absent.tfrc"))
    assert "TF_CLI_CONFIG_FILE" not in terraform_env()
    engine = Terraform(module(tmp_path, 'resource "terraform_data" "n" {}\n'))
    assert "CLI configuration" not in engine.run(["validate"], json_events=False).stderr

    # A user's real configuration is passed through: Terraform reads this one (and says
    # what is wrong with it), which it could not if mlinfra replaced or hid it.
    config = tmp_path / "user.tfrc"
    config.write_text('provider_installation {\n  bogus_method {}\n}\n')
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", str(config))
    assert terraform_env()["TF_CLI_CONFIG_FILE"] == str(config)
    stderr = engine.run(["validate"], json_events=False).stderr
    assert "bogus_method" in stderr


def test_non_interactive_environment():
    env = terraform_env()
    assert env["TF_IN_AUTOMATION"] == "1" and env["TF_INPUT"] == "0"


def test_user_terraform_binary_is_used(tmp_path, monkeypatch, deployed):
    log = tmp_path / "calls.log"
    wrapper = tmp_path / "bin" / "terraform"
    wrapper.parent.mkdir()
    # A stand-in for a user's own terraform/tofu binary: the bundled Terraform behind a logging shim.
    wrapper.write_text(f'#!/bin/sh\necho "$1" >> {log}\nexec {sys.executable} -m mlinfra.engine._exec "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("MLINFRA_TERRAFORM", str(wrapper))
    stack = Stack.load(write_stack(tmp_path, f'name = "userbin"\n[serve]\ncommand = "{HTTP_SERVER}"\nhealth_path = "/"\n'))
    deployed(stack)
    assert stack.up(verify=False).applied
    # Nobody reviews the plan: one Terraform run plans and applies.
    assert log.read_text().split() == ["init", "apply"]
    stack.down()
    assert log.read_text().split() == ["init", "apply", "apply"]  # destroy = apply -destroy -auto-approve
    shown = []
    assert stack.up(verify=False, confirm=lambda summary: shown.append(summary) or True).applied
    # A reviewed plan is saved, shown, then applied exactly: two runs.
    assert log.read_text().split()[3:] == ["plan", "apply"] and shown[0].add == 1


def test_missing_user_binary_is_bad_input(monkeypatch, tmp_path):
    monkeypatch.setenv("MLINFRA_TERRAFORM", "/no/such/terraform")
    with pytest.raises(UsageError) as info:
        Terraform(tmp_path)
    assert str(info.value) == "MLINFRA_TERRAFORM=/no/such/terraform: no such executable"
    assert info.value.exit_code == 2


SLOW_MODULE = '''
resource "terraform_data" "slow" {
  for_each = toset(["a", "b"])
  provisioner "local-exec" {
    command = "exec sleep 30"  # exec: Terraform kills the provisioner process, not its children
    environment = { SLOW_MODULE_TOKEN = "@token@" }  # how the test finds its own sleeps, never by name
  }
}
'''

DRIVER = """
import sys
from mlinfra.engine import Terraform
from mlinfra.errors import Interrupted
engine = Terraform(sys.argv[1], on_event=lambda e: print(e.status, flush=True))
engine.init()
engine.plan()
try:
    engine.apply()
except Interrupted as exc:
    print("INTERRUPTED", exc, flush=True)
    sys.exit(130)
"""


def _carrying(token: str) -> list[int]:
    """The processes whose environment holds ``SLOW_MODULE_TOKEN=token``: this test's, and no
    other program's `sleep 30` (a name would match whatever else runs on the machine)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SLOW_MODULE_TOKEN={token}".encode() in environ:
            found.append(int(pid))
    return found


def test_sigint_during_apply_stops_terraform_gracefully_and_saves_state(tmp_path):
    token = uuid.uuid4().hex
    module(tmp_path, SLOW_MODULE.replace("@token@", token))
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:  # wait until both resources are being created
        seen.append(line.strip())
        if seen.count("start") == 2:
            break
    deadline = time.monotonic() + 20
    while len(_carrying(token)) < 2 and time.monotonic() < deadline:  # both provisioners' sleeps run
        time.sleep(0.05)
    assert len(_carrying(token)) == 2  # so the check for leftovers below can fail
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 130, out
    assert "INTERRUPTED interrupted: Terraform stopped gracefully and saved its state" in out
    state = (tmp_path / "terraform.tfstate").read_text()
    assert '"terraform_data"' in state and '"tainted"' in state  # recorded, marked for replacement
    assert _carrying(token) == []
