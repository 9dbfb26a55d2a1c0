"""Start or stop one local node: `python node.py start|stop NODE_KEY`.

Copied verbatim into the rendered module; Terraform's local-exec runs it, so
the module applies and destroys without mlinfra. Everything about the node
comes from the environment (set from terraform.tfvars.json), never from text
pasted into a shell line.

A node is a process group started in its own session, with a unique token in
its environment. `stop` kills only processes that carry that token (children
included, even ones that left the group), so it never kills by name and never
touches a process that merely reused a pid.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

TOKEN_VAR = "MLINFRA_NODE_TOKEN"
STOP_GRACE_S = 10.0


def _record_path(run_dir: Path, key: str) -> Path:
    return run_dir / f"{key}.json"


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start(key: str) -> int:
    run_dir = Path(os.environ["MLINFRA_RUN_DIR"])
    port = int(os.environ["MLINFRA_PORT"])
    run_dir.mkdir(parents=True, exist_ok=True)
    if _record_path(run_dir, key).exists():
        # A record without a resource in state: an apply was killed after starting this node
        # but before saving state. Stop that orphan so the node never runs twice.
        print(f"node {key}: stopping a copy left by an interrupted apply")
        stop(key)
    if _port_in_use(port):
        print(f"node {key}: port {port} is already in use by another process; "
              "run `mlinfra up` again to pick a free port", file=sys.stderr)
        return 1
    token = uuid.uuid4().hex
    env = dict(os.environ)
    for name in ("MLINFRA_COMMAND", "MLINFRA_ENV", "MLINFRA_RUN_DIR", "MLINFRA_CWD"):
        env.pop(name, None)
    env.update(json.loads(os.environ.get("MLINFRA_ENV") or "{}"))
    # The interpreter's own bin directory first, so `mlinfra serve` resolves in a venv.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update({"PORT": str(port), TOKEN_VAR: token, "PYTHONUNBUFFERED": "1"})
    log_path = run_dir / f"{key}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["/bin/sh", "-c", os.environ["MLINFRA_COMMAND"]],
            cwd=os.environ.get("MLINFRA_CWD") or None,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    record = {"pid": proc.pid, "token": token, "port": port, "started_at": time.time(),
              "log": str(log_path)}
    tmp = _record_path(run_dir, key).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, _record_path(run_dir, key))
    print(f"node {key}: started pid {proc.pid} on port {port}")
    return 0


def _has_token(pid: int, token: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{TOKEN_VAR}={token}".encode() in environ.split(b"\0")


def node_processes(record: dict) -> list[int]:
    """The live processes of this node: those carrying its token."""
    if Path("/proc/self/environ").exists():
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        return [pid for pid in pids if pid != os.getpid() and _has_token(pid, record["token"])]
    # No /proc (macOS): the process group leader, if it is still the process we started.
    try:
        os.killpg(record["pid"], 0)
        return [record["pid"]]
    except OSError:
        return []


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    """Still running (an exited child awaiting its reaper, a zombie, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while pids and time.monotonic() < deadline:
        time.sleep(0.02)
        pids = [pid for pid in pids if _alive(pid)]
    return pids


def stop(key: str) -> int:
    run_dir = Path(os.environ["MLINFRA_RUN_DIR"])
    path = _record_path(run_dir, key)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"node {key}: no record, nothing to stop")
        return 0
    pids = node_processes(record)  # one scan of /proc; then only these pids are watched
    if not pids:
        print(f"node {key}: pid {record['pid']} already exited")
    _signal_all(pids, signal.SIGTERM)
    pids = _wait_gone(pids, STOP_GRACE_S)
    if pids:
        print(f"node {key}: {len(pids)} process(es) ignored SIGTERM for {STOP_GRACE_S:.0f}s; killing")
        _signal_all(pids, signal.SIGKILL)
        _wait_gone(pids, 2.0)
    # A child forked while we waited carries the token too: one last scan, and no mercy.
    late = node_processes(record)
    _signal_all(late, signal.SIGKILL)
    _wait_gone(late, 2.0)
    path.unlink(missing_ok=True)
    print(f"node {key}: stopped")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print("usage: node.py start|stop NODE_KEY", file=sys.stderr)
        return 2
    return start(argv[2]) if argv[1] == "start" else stop(argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
