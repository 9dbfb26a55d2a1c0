"""A dead local node is seen at once: the launcher's supervisor records how the server ended.

These run templates/local/node.py directly, with the environment Terraform's local-exec gives it
(templates/local/main.tf.j2), against real processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlinfra.targets.local.process import exit_reason, log_tail, read_record
from mlinfra.verify.health import check_health

NODE_PY = Path(__file__).resolve().parents[3] / "templates" / "local" / "node.py"
SERVER = f"exec {sys.executable} -m http.server $PORT --bind 127.0.0.1"
STACK = "exit-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def carriers(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds ``marker``, e.g. the node's token."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


def wait_for(probe, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


class Launcher:
    """node.py as Terraform runs it: `python -S node.py start|stop KEY` with local-exec's environment."""

    def __init__(self, run_dir: Path, cwd: Path):
        self.run_dir, self.cwd, self.started = run_dir, cwd, []

    def start(self, key: str, command: str, env: dict | None = None, cwd: str | None = None,
              port: int | None = None, pass_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
        self.started.append(key)
        environment = os.environ | {
            "MLINFRA_STACK": STACK, "MLINFRA_NODE": key, "MLINFRA_COMMAND": command,
            "MLINFRA_PORT": str(port or free_port()), "MLINFRA_CWD": str(self.cwd) if cwd is None else cwd,
            "MLINFRA_NODE_ENV": json.dumps(env or {}), "MLINFRA_RUN_DIR": str(self.run_dir)}
        return subprocess.run([sys.executable, "-S", str(NODE_PY), "start", key], env=environment,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                              pass_fds=pass_fds)

    def stop(self, key: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-S", str(NODE_PY), "stop", key],
                              env=os.environ | {"MLINFRA_RUN_DIR": str(self.run_dir)},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


@pytest.fixture
def launcher(tmp_path):
    run_dir = tmp_path / "nodes"
    launch = Launcher(run_dir, tmp_path)
    tokens = []
    yield launch
    for key in launch.started:
        tokens.append(read_record(run_dir, key).get("token"))
        launch.stop(key)
    for token in filter(None, tokens):
        assert carriers(f"MLINFRA_NODE_TOKEN={token}") == []


def test_record_names_the_server_and_its_supervisor(launcher):
    started = launcher.start("a-0", SERVER)
    assert started.returncode == 0, started.stderr
    record = read_record(launcher.run_dir, "a-0")
    assert set(record) == {"pid", "token", "port", "started_at", "log", "supervisor"}
    assert f"started pid {record['pid']} on port {record['port']}" in started.stdout
    assert b"http.server" in Path(f"/proc/{record['pid']}/cmdline").read_bytes()
    assert sorted(carriers(f"MLINFRA_NODE_TOKEN={record['token']}")) == sorted([record["pid"], record["supervisor"]])
    # Only the server counts as the stack's process (tests count those by MLINFRA_STACK).
    assert carriers(f"MLINFRA_STACK={STACK}") == [record["pid"]]
    assert exit_reason(launcher.run_dir, "a-0") is None  # alive


def test_the_node_gets_no_descriptor_the_launcher_inherited(launcher, tmp_path):
    """Terraform hands the launcher descriptors on purpose (mlinfra's stack lock travels with it):
    the node must hold none of them, or a running server would keep the stack locked."""
    with open(tmp_path / "lock", "w") as held:
        started = launcher.start("a-0", "exec sleep 60", pass_fds=(held.fileno(),))
    assert started.returncode == 0, started.stderr
    record = read_record(launcher.run_dir, "a-0")
    for pid in (record["pid"], record["supervisor"]):
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert set(fds) == {0, 1, 2}, fds
        assert (fds[0], fds[1], fds[2]) == (os.devnull, record["log"], record["log"])


def test_a_killed_server_is_reported_with_its_signal(launcher):
    assert launcher.start("a-0", f"echo serving; {SERVER}").returncode == 0
    pid = read_record(launcher.run_dir, "a-0")["pid"]
    os.kill(pid, signal.SIGKILL)
    reason = wait_for(lambda: exit_reason(launcher.run_dir, "a-0"), seconds=1.0)
    assert reason is not None and reason.startswith(f"process {pid} was killed by signal 9 (SIGKILL)")
    assert "last log lines: serving" in reason
    assert json.loads((launcher.run_dir / "a-0.exit.json").read_text())["code"] == -9


def test_a_server_that_exits_is_reported_with_its_code_and_log(launcher):
    assert launcher.start("a-0", "echo loading; echo 'no model at /models/x' >&2; exit 3").returncode == 0
    pid = read_record(launcher.run_dir, "a-0")["pid"]
    reason = wait_for(lambda: exit_reason(launcher.run_dir, "a-0"))
    assert reason == f"process {pid} exited with code 3; last log lines: loading | no model at /models/x"
    assert log_tail(launcher.run_dir / "a-0.log", lines=1) == "no model at /models/x"


def test_without_an_exit_file_the_status_is_unknown(launcher):
    assert launcher.start("a-0", "exit 0").returncode == 0
    exit_file = launcher.run_dir / "a-0.exit.json"
    assert wait_for(exit_file.exists)
    exit_file.unlink()  # as if the supervisor had been killed first
    pid = read_record(launcher.run_dir, "a-0")["pid"]
    assert exit_reason(launcher.run_dir, "a-0") == f"process {pid} exited (status unknown)"


def test_no_record_means_no_reason(tmp_path):
    assert exit_reason(tmp_path, "a-0") is None
    (tmp_path / "a-0.json").write_text("{not json")
    assert read_record(tmp_path, "a-0") == {} and exit_reason(tmp_path, "a-0") is None


def test_stop_removes_the_record_and_exit_file_and_every_token_process(launcher):
    # The server forks a child that outlives it; the supervisor records the server's death.
    assert launcher.start("a-0", f"sleep 300 & {SERVER}").returncode == 0
    record = read_record(launcher.run_dir, "a-0")
    os.kill(record["pid"], signal.SIGKILL)
    assert wait_for((launcher.run_dir / "a-0.exit.json").exists)
    token = f"MLINFRA_NODE_TOKEN={record['token']}"
    assert len(carriers(token)) == 1  # the sleep
    stopped = launcher.stop("a-0")
    assert stopped.returncode == 0, stopped.stderr
    assert sorted(p.name for p in launcher.run_dir.iterdir()) == ["a-0.log"]
    assert carriers(token) == []


def test_start_over_an_orphan_record_stops_the_orphan_first(launcher):
    port = free_port()
    assert launcher.start("a-0", SERVER, port=port).returncode == 0
    orphan = read_record(launcher.run_dir, "a-0")
    again = launcher.start("a-0", SERVER, port=port)  # the apply that started it never saved state
    assert again.returncode == 0, again.stdout + again.stderr
    assert "stopping a copy left by an interrupted apply" in again.stdout
    assert carriers(f"MLINFRA_NODE_TOKEN={orphan['token']}") == []
    assert read_record(launcher.run_dir, "a-0")["token"] != orphan["token"]


def test_start_fails_clearly_when_the_server_cannot_be_started(launcher, tmp_path):
    started = launcher.start("a-0", SERVER, cwd=str(tmp_path / "missing"))
    assert started.returncode == 1
    assert "node a-0: cannot start the server: [Errno 2] No such file or directory" in started.stderr
    assert "cannot start the server" in log_tail(launcher.run_dir / "a-0.log")
    assert not (launcher.run_dir / "a-0.json").exists()


@pytest.mark.parametrize("stack_env,expected", [
    ({}, "1/1/1"),
    ({"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "4"}, "1/8/4"),
])
def test_blas_thread_pools_default_to_one_thread(launcher, monkeypatch, stack_env, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # the caller's own value does not reach the node
    command = 'echo "threads=$OPENBLAS_NUM_THREADS/$OMP_NUM_THREADS/$MKL_NUM_THREADS"'
    assert launcher.start("a-0", command, env=stack_env).returncode == 0
    assert wait_for((launcher.run_dir / "a-0.exit.json").exists)
    assert log_tail(launcher.run_dir / "a-0.log") == f"threads={expected}"


def test_health_check_stops_at_once_when_the_process_exited():
    url = f"http://127.0.0.1:{free_port()}/health"  # nothing listens
    result = check_health("n", url, deadline_s=60, exited=lambda: "process 7 exited with code 3")
    assert (result.passed, result.summary) == (False, "exited")
    assert result.message == "the node's process exited: process 7 exited with code 3"
    assert (result.details["attempts"], result.details["last_outcome"]) == (1, "exited")


def test_health_check_keeps_waiting_while_the_process_runs():
    asked = []
    url = f"http://127.0.0.1:{free_port()}/health"
    result = check_health("n", url, deadline_s=0.3, exited=lambda: asked.append(1))
    assert (result.passed, result.details["last_outcome"]) == (False, "not listening")
    assert result.message.startswith("not ready after 0.3s")
    assert len(asked) == result.details["attempts"] > 1


def test_health_check_on_a_dead_node_names_its_exit(launcher):
    port = free_port()
    assert launcher.start("a-0", "echo 'CUDA out of memory'; exit 3", port=port).returncode == 0
    result = check_health("n", f"http://127.0.0.1:{port}/", deadline_s=60,
                          exited=lambda: exit_reason(launcher.run_dir, "a-0"))
    assert result.summary == "exited" and result.details["last_outcome"] == "exited"
    assert "exited with code 3; last log lines: CUDA out of memory" in result.message
