"""The standby Terraform process (engine.spawn): claimed by the first command with the stack's lock,
refused when it does not fit, and never outliving an mlinfra that did not need it."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlinfra.engine import Terraform, spawn

SLOW = 'resource "terraform_data" "slow" {\n  provisioner "local-exec" {\n    command = "sleep 1"\n  }\n}\n'
STARTS_STANDBY = ("import sys; from mlinfra.engine import spawn; spawn.start_standby(); "
                  "print(spawn._standby[0].pid, flush=True); ")


@pytest.fixture(autouse=True)
def no_standby_left():
    yield
    spawn.discard_standby()


def gone(pid: int, within_s: float = 30) -> bool:
    """Whether the process ``pid`` has ended (exited or a zombie) before the deadline."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_the_first_command_runs_in_the_standby_which_holds_the_lock_while_terraform_runs(tmp_path):
    (tmp_path / "main.tf").write_text(SLOW)
    Terraform(tmp_path).init()  # no standby yet: a process of its own
    spawn.start_standby()
    standby = spawn._standby[0]
    lock_path = tmp_path / ".lock"
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    seen = []

    def on_event(event):
        if event.action == "create" and event.status == "start" and not seen:
            os.close(lock)  # ours is gone: only Terraform's process can still hold the lock
            probe = os.open(lock_path, os.O_RDWR)
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("lock free")
            except BlockingIOError:
                seen.append("lock held")
            finally:
                os.close(probe)
            seen.append(os.readlink(f"/proc/{standby.pid}/cwd"))

    summary, _ = Terraform(tmp_path, on_event, hold=(lock,)).apply_now()
    assert summary.add == 1
    assert spawn._standby is None and standby.returncode == 0  # claimed, and it ran the apply
    assert seen == ["lock held", str(tmp_path.resolve())]
    assert '"terraform_data"' in (tmp_path / "terraform.tfstate").read_text()


def test_a_standby_that_does_not_fit_is_discarded_and_a_process_of_its_own_runs(tmp_path, monkeypatch):
    spawn.start_standby()
    standby = spawn._standby[0]
    monkeypatch.setenv("MLINFRA_TEST_CHANGED", "1")  # the environment it started with is not this one
    assert Terraform(tmp_path).version().count(".") == 2
    assert spawn._standby is None and standby.returncode == -signal.SIGKILL


def test_a_standby_told_there_is_nothing_to_run_exits_without_running_terraform(tmp_path):
    spawn.start_standby()
    proc, control, _, _ = spawn._standby
    spawn._standby = None
    control.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stdout.read() == "" and proc.stderr.read() == ""
    proc.stdout.close()
    proc.stderr.close()


def test_no_standby_for_a_terraform_binary_of_the_users(monkeypatch):
    monkeypatch.setenv("MLINFRA_TERRAFORM", sys.executable)
    spawn.start_standby()
    assert spawn._standby is None


def test_no_standby_where_the_system_has_no_such_socket(monkeypatch):
    def unsupported(*args):
        raise OSError(93, "Protocol not supported")  # macOS: no SOCK_SEQPACKET for AF_UNIX

    monkeypatch.setattr(spawn.socket, "socketpair", unsupported)
    spawn.start_standby()
    assert spawn._standby is None


def test_an_unclaimed_standby_ends_with_mlinfra():
    done = subprocess.run([sys.executable, "-c", STARTS_STANDBY], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert gone(int(done.stdout))


def test_a_standby_ends_when_mlinfra_is_killed():
    proc = subprocess.Popen([sys.executable, "-c", STARTS_STANDBY + "import time; time.sleep(60)"],
                            stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    assert not gone(pid, within_s=0.5)  # it waits for its command while mlinfra lives
    proc.kill()  # kill -9: no exit handler runs; the parent-death signal stops it
    proc.wait()
    assert gone(pid)
