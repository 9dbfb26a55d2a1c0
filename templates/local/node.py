"""Start or stop one local node: `python node.py start|stop NODE_KEY`.

Copied verbatim into the rendered module; Terraform's local-exec runs it, so
the module applies and destroys without mlinfra. Everything about the node
comes from the environment (set from terraform.tfvars.json), never from text
pasted into a shell line.

A node is a process group started in its own session, with a unique token in
its environment. `stop` kills only processes that carry that token (children
included, even ones that left the group), so it never kills by name and never
touches a process that merely reused a pid.

`start` does not run the server itself: it starts a small shell supervisor
(``SUPERVISOR``) that runs the server as its child, waits for it and writes its
exit status to `<key>.exit.json`. Without a parent that waits, the exit status
is lost, and a dead node looks the same as one still loading. A shell, not a
second Python: a node start costs one interpreter less (~30 ms of CPU each,
which adds up when ten nodes start at once on two cores).
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
HOME_VAR = "MLINFRA_NODE_HOME"  # the stack's nodes/ dir, in every process of every node
STACK_VAR, HELD_STACK_VAR = "MLINFRA_STACK", "MLINFRA_SUPERVISED_STACK"
# Many numpy servers on one small machine would each start a BLAS thread pool sized to every
# core (measured: ~0.6 CPU-s per node start). One thread each, unless the stack's env says so.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
STOP_GRACE_S = 10.0
# The supervisor, run by /bin/sh with the node's environment. The command runs as its child
# (`sh -c`, its own text: nothing is pasted into this script); a status above 128 is the shell's
# way of saying "killed by signal status-128", recorded as a negative code like Popen's.
SUPERVISOR = (
    "cmd=$MLINFRA_COMMAND; exit_file=$MLINFRA_EXIT_FILE; "
    'if [ -n "${MLINFRA_SUPERVISED_STACK+set}" ]; then export MLINFRA_STACK="$MLINFRA_SUPERVISED_STACK"; fi; '
    "unset MLINFRA_COMMAND MLINFRA_EXIT_FILE MLINFRA_SUPERVISED_STACK; "
    '/bin/sh -c "$cmd"; status=$?; '
    'if [ "$status" -gt 128 ]; then code=$((128 - status)); else code=$status; fi; '
    "printf '{\"code\": %d}\\n' \"$code\" > \"$exit_file.tmp\" && mv \"$exit_file.tmp\" \"$exit_file\""
)


def _record_path(run_dir: Path, key: str) -> Path:
    return run_dir / f"{key}.json"


def _exit_path(run_dir: Path, key: str) -> Path:
    return run_dir / f"{key}.exit.json"


def _write_json(path: Path, value: dict) -> None:
    """Atomically: a reader sees the whole file or none."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start(key: str) -> int:
    run_dir = Path(os.environ["MLINFRA_RUN_DIR"])
    port = int(os.environ["MLINFRA_PORT"])
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = _record_path(run_dir, key)
    if record_path.exists():
        # A record without a resource in state: an apply was killed after starting this node
        # but before saving state. Stop that orphan so the node never runs twice.
        print(f"node {key}: stopping a copy left by an interrupted apply")
        stop(key)
    if _port_in_use(port):
        print(f"node {key}: port {port} is already in use by another process; with serve.port set, choose "
              "another; without it, run `mlinfra up` again to pick a free port", file=sys.stderr)
        return 1
    _exit_path(run_dir, key).unlink(missing_ok=True)  # a stale exit must not describe this run
    token = uuid.uuid4().hex
    # The token first, on disk: if this launcher is killed from here on (Ctrl-C in Terraform),
    # `stop` (and mlinfra's sweep, by the stack's run dir) can still find what it started.
    _write_json(record_path, {"pid": None, "token": token, "port": port, "started_at": time.time(),
                              "log": str(run_dir / f"{key}.log")})
    try:
        env = _node_env(token) | {"MLINFRA_COMMAND": os.environ["MLINFRA_COMMAND"],
                                  "MLINFRA_EXIT_FILE": str(_exit_path(run_dir, key))}
    except SecretMissing as exc:
        record_path.unlink(missing_ok=True)
        print(f"node {key}: {exc}", file=sys.stderr)
        return 1
    log_path = run_dir / f"{key}.log"
    try:  # serve.setup, [model] and serve.image (issue 11), before the server starts
        container = _prepare_workload(key, run_dir, env, log_path)
    except Exception as exc:  # workload.WorkloadError, or a setup step the node could not run at all
        record_path.unlink(missing_ok=True)
        print(f"node {key}: {exc}", file=sys.stderr)
        return 1
    # stdin and stdout/stderr away from Terraform's pipes: local-exec waits until they close.
    with open(log_path, "ab") as log:
        try:
            supervisor = subprocess.Popen(["/bin/sh", "-c", SUPERVISOR], cwd=os.environ.get("MLINFRA_CWD") or None,
                                          env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, umask=0o022)  # the server's own files: as usual
        except OSError as exc:
            print(f"node {key}: cannot start the server: {exc}", file=sys.stderr)
            log.write(f"node {key}: cannot start the server: {exc}\n".encode())
            record_path.unlink(missing_ok=True)
            return 1
    pid = _server_pid(supervisor)
    record = {"pid": pid, "token": token, "port": port, "started_at": time.time(), "log": str(log_path),
              "supervisor": supervisor.pid, **({"container": container} if container else {})}
    try:
        _write_json(record_path, record)
    except BaseException:
        os.killpg(supervisor.pid, signal.SIGKILL)  # nobody could find or stop a server without a record
        raise
    print(f"node {key}: started pid {pid} on port {port}")
    return 0


def _prepare_workload(key: str, run_dir: Path, env: dict, log_path: Path) -> list:
    """Run serve.setup once, fetch [model] into the stack's cache (MODEL_DIR), and with serve.image
    turn the command into the container's `run`. Updates ``env``; returns [engine, name] of the
    container to remove on stop ([] without one). What the node runs goes to <key>.workload.json."""
    spec = json.loads(os.environ.get("MLINFRA_WORKLOAD") or "{}")
    if not spec.get("image") and not spec.get("setup") and not spec.get("model_uri"):
        (run_dir / f"{key}.workload.json").unlink(missing_ok=True)
        return []
    import fcntl
    import shlex

    import workload  # templates/node/workload.py, copied beside this file

    ran = {"image": spec.get("image", ""), "command": os.environ["MLINFRA_COMMAND"]}
    setup_env = {k: v for k, v in env.items() if k not in ("MLINFRA_COMMAND", "MLINFRA_EXIT_FILE")}  # token kept
    ran["setup"] = workload.run_setup(spec.get("setup", []), setup_env, os.environ.get("MLINFRA_CWD"),
                                      str(log_path), str(run_dir / f"{key}.setup.json"))
    model_host_dir = ""
    if spec.get("model_uri"):
        uri = spec["model_uri"]
        cache = Path(os.environ["MLINFRA_MODEL_CACHE"]) / workload.cache_key(uri)
        cache.mkdir(parents=True, exist_ok=True)
        # Google's client libraries read STORAGE_EMULATOR_HOST for an emulator; a token for real GCS
        # comes from GOOGLE_OAUTH_ACCESS_TOKEN (as for Terraform's google provider). Neither reaches the node.
        endpoint = os.environ.get("STORAGE_EMULATOR_HOST") or workload.GCS_API
        with open(cache.parent / f"{cache.name}.lock", "w") as lock, open(log_path, "a") as log:
            fcntl.flock(lock, fcntl.LOCK_EX)  # nodes of the stack share the cache: one download
            ran["model"] = workload.fetch_model(uri, spec.get("model_sha256", ""), str(cache), log, endpoint,
                                                os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN", ""))
        model_host_dir = str(cache / "model")
        env["MODEL_DIR"] = spec["model_dir"] if spec.get("image") else model_host_dir
    container = []
    if spec.get("image"):
        engine = workload.find_engine(os.environ.get("MLINFRA_CONTAINER_ENGINE", ""))
        name = f"mlinfra-{os.environ.get(STACK_VAR, 'stack')}-{key}"
        passed = [n for n in env if n not in KEPT_VARS and not n.startswith("MLINFRA_") and n not in BLAS_THREAD_VARS]
        argv = workload.container_argv(engine, spec["image"], name, int(os.environ["MLINFRA_PORT"]), passed,
                                       spec.get("args", []), model_host_dir, spec.get("model_dir", ""),
                                       int(os.environ.get("MLINFRA_GPUS") or 0))
        env["MLINFRA_COMMAND"] = "exec " + shlex.join(argv)
        ran["command"] = shlex.join(argv)
        container = [engine, name]
    _write_json(run_dir / f"{key}.workload.json", ran)
    return container


def _server_pid(supervisor: subprocess.Popen) -> int:
    """The supervisor's child (the server), as soon as it exists: so that Terraform's "created"
    means the node's pid is known. A command that ended at once leaves only the supervisor (its
    exit file says how); without /proc (macOS) the supervisor stands for the node."""
    children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and supervisor.poll() is None:
        try:
            found = children.read_text().split()
        except OSError:
            return supervisor.pid
        if found:
            return int(found[0])
        time.sleep(0.001)
    return supervisor.pid


# What a node inherits from the operator's environment: the basics a program needs, nothing else
# (no cloud tokens, no keys); everything more comes from the stack's serve.env and serve.secrets.
KEPT_VARS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME")
IDENTITY_VARS = ("MLINFRA_NODE", "MLINFRA_PORT")


class SecretMissing(Exception):
    pass


def _node_env(token: str) -> dict:
    """The server's environment, built from nothing: the kept basics, the node's identity, BLAS
    threads, the stack's env, its secrets (read here, from this process's environment, and put
    nowhere else), PORT and the token."""
    env = {name: os.environ[name] for name in KEPT_VARS + IDENTITY_VARS if name in os.environ}
    # The supervisor carries the token (so `stop` kills it) but not MLINFRA_STACK, which marks the
    # processes running a stack's command; it hands the value on to the server.
    if STACK_VAR in os.environ:
        env[HELD_STACK_VAR] = os.environ[STACK_VAR]
    env.update(dict.fromkeys(BLAS_THREAD_VARS, "1"))
    env.update(json.loads(os.environ.get("MLINFRA_NODE_ENV") or "{}"))
    for name, ref in json.loads(os.environ.get("MLINFRA_SECRETS") or "{}").items():
        source = ref.removeprefix("env:")
        if source not in os.environ:
            raise SecretMissing(f"secret {name}: the environment variable {source} is not set where mlinfra runs "
                                f"(serve.secrets.{name} = {ref!r})")
        env[name] = os.environ[source]
    # The interpreter's own bin directory first, so `mlinfra serve` resolves in a venv.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", os.defpath)
    # The run dir names the stack's work dir: with the token, the node's identity (never its name).
    env.update({"PORT": os.environ["MLINFRA_PORT"], TOKEN_VAR: token, HOME_VAR: os.environ["MLINFRA_RUN_DIR"],
                "PYTHONUNBUFFERED": "1"})
    return env


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
    # No /proc (macOS): the supervisor (the group leader) and the server, while their group exists
    # (a pid is not reused while a group of that id lives).
    leader = record.get("supervisor", record["pid"])
    try:
        os.killpg(leader, 0)
        return list(dict.fromkeys((leader, record["pid"])))
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
    while True:  # look first: most servers are gone the moment they get SIGTERM
        pids = [pid for pid in pids if _alive(pid)]
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.005)


def stop(key: str) -> int:
    run_dir = Path(os.environ["MLINFRA_RUN_DIR"])
    path = _record_path(run_dir, key)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        _exit_path(run_dir, key).unlink(missing_ok=True)
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
    if record.get("container"):  # a container engine's daemon may keep it after its client died
        engine, name = record["container"]
        try:
            subprocess.call([engine, "rm", "-f", name], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"node {key}: could not remove container {name} ({exc}); remove it with `{engine} rm -f {name}`")
    # The supervisor is gone by now, so it cannot write the exit file after this.
    _exit_path(run_dir, key).unlink(missing_ok=True)
    # A destroyed node's setup is forgotten: the next node (up after down, heal, rebuild) runs it
    # again, so a rebuild proves the setup still works instead of trusting an old run.
    (run_dir / f"{key}.setup.json").unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    print(f"node {key}: stopped")
    return 0


def main(argv: list[str]) -> int:
    commands = {"start": start, "stop": stop}
    if len(argv) != 3 or argv[1] not in commands:
        print("usage: node.py start|stop NODE_KEY", file=sys.stderr)
        return 2
    return commands[argv[1]](argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
