"""Start or stop one region's Ray head and its Serve app: `python head.py start|stop KEY`.

Copied verbatim into the rendered module; Terraform's local-exec runs it. Everything comes
from the environment (``MLINFRA_HEAD``: this head's values from terraform.tfvars.json).

`start` runs `ray start --head` in a session of its own with a unique token in the
environment: every Ray process (GCS, raylet, agents, workers, Serve's controller, proxy and
replicas, and each replica's serve.command) inherits it. `stop` signals exactly the processes
that carry the token. Never `ray stop`: it stops every Ray cluster on the machine.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

TOKEN_VAR = "MLINFRA_NODE_TOKEN"
HOME_VAR = "MLINFRA_NODE_HOME"  # the stack's nodes/ dir: mlinfra finds the stack's processes by it
STOP_GRACE_S = 3.0  # Ray keeps nothing worth flushing here; idle workers linger on SIGTERM
RAY_START_TIMEOUT_S = 120.0
DEPLOY_TIMEOUT_S = 600.0  # covers min_replicas cold starts (a model load) before serve.run returns
# Serve's autoscaler reads metrics the replicas and handles push; its 10 s default makes every
# decision ~10 s late. These must be in the environment of `ray start` (the research notes).
# The metrics agent's export interval bounds how stale `mlinfra status`'s queue depth is.
PUSH_INTERVALS = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
                  "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
                  "RAY_metrics_report_interval_ms": "2000"}


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def ray_env(head: dict, token: str) -> dict:
    env = dict(os.environ)
    env.pop("MLINFRA_HEAD", None)
    module_dir = os.environ["MLINFRA_MODULE_DIR"]
    # The Serve app module (mlinfra_serve_app.py) beside this file, and the stack's directory
    # (where a custom policy module lives), importable by every Ray worker.
    path = [module_dir, head["cwd"]] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(PUSH_INTERVALS)
    env.update({"PYTHONPATH": os.pathsep.join(path), "RAY_USAGE_STATS_ENABLED": "0", TOKEN_VAR: token,
                HOME_VAR: os.environ["MLINFRA_RUN_DIR"], "PYTHONUNBUFFERED": "1"})
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def start(key: str) -> int:
    head = json.loads(os.environ["MLINFRA_HEAD"])
    run_dir = Path(os.environ["MLINFRA_RUN_DIR"])
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / f"{key}.json"
    if record_path.exists():  # left by an interrupted apply: never two heads for one region
        print(f"head {key}: stopping a copy left by an interrupted apply")
        stop(key)
    busy = [p for p in (head["gcs_port"], head["serve_port"]) if _port_in_use(p)]
    if busy:
        print(f"head {key}: port {busy[0]} is in use by another process; run `mlinfra up` again", file=sys.stderr)
        return 1
    token = uuid.uuid4().hex
    log_path = run_dir / f"{key}.log"
    # Token first, on disk: whatever happens next, `stop` can find what was started.
    _write_json(record_path, {"pid": None, "token": token, "temp_dir": head["temp_dir"], "log": str(log_path),
                              "started_at": time.time()})
    env = ray_env(head, token)
    command = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()",
               "start", "--head", "--node-ip-address=127.0.0.1", f"--port={head['gcs_port']}",
               f"--ray-client-server-port={head['client_port']}",
               f"--dashboard-agent-listen-port={head['agent_port']}",
               f"--metrics-export-port={head['metrics_port']}", "--include-dashboard=false",
               # No log monitor: it only streams worker logs to drivers, and no driver stays (~90 MB).
               "--include-log-monitor=false", "--disable-usage-stats", f"--num-cpus={os.cpu_count() or 1}",
               f"--temp-dir={head['temp_dir']}"]
    with open(log_path, "ab") as log:
        try:
            subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True, check=True, timeout=RAY_START_TIMEOUT_S)
            print(f"head {key}: Ray head up on 127.0.0.1:{head['gcs_port']}; deploying the Serve app")
            # The app module is imported by name (not run as __main__), so Ray pickles its
            # classes by reference and workers import the same file.
            subprocess.run([sys.executable, "-c", "import sys, mlinfra_serve_app; sys.exit(mlinfra_serve_app.main())",
                            "deploy"], env=env | {"MLINFRA_HEAD": json.dumps(head)}, stdin=subprocess.DEVNULL,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True, check=True,
                           timeout=DEPLOY_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"head {key}: start failed ({exc}); last log lines:\n{_tail(log_path)}", file=sys.stderr)
            stop(key)
            return 1
    record = json.loads(record_path.read_text()) | {"pid": _gcs_pid(token)}
    _write_json(record_path, record)
    print(f"head {key}: serving on http://127.0.0.1:{head['serve_port']}")
    return 0


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _environ(pid: int) -> list:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def token_processes(token: str) -> list:
    marker = f"{TOKEN_VAR}={token}".encode()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
            and marker in _environ(int(p))]


def _gcs_pid(token: str) -> int | None:
    """The GCS server: the process that stands for the head (the cluster lives while it does)."""
    for pid in token_processes(token):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "gcs_server":
                return pid
        except OSError:
            continue
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal(pids: list, sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop(key: str) -> int:
    run_dir = Path(os.environ["MLINFRA_RUN_DIR"])
    record_path = run_dir / f"{key}.json"
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        print(f"head {key}: no record, nothing to stop")
        return 0
    pids = token_processes(record["token"])
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    # What ignored SIGTERM, and whatever was forked meanwhile (a worker, a replica's server).
    for _ in range(3):
        late = token_processes(record["token"])
        if not late:
            break
        _signal(late, signal.SIGKILL)
        time.sleep(0.2)
    shutil.rmtree(record.get("temp_dir") or "/nonexistent", ignore_errors=True)
    record_path.unlink(missing_ok=True)
    print(f"head {key}: stopped")
    return 0


def main(argv: list) -> int:
    commands = {"start": start, "stop": stop}
    if len(argv) != 3 or argv[1] not in commands:
        print("usage: head.py start|stop KEY", file=sys.stderr)
        return 2
    return commands[argv[1]](argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
