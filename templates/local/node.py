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
which adds up when ten nodes start at once on two cores). For the same reason
the launcher itself runs with ``-S`` and imports only what a start or stop
needs (no pathlib, subprocess, socket or uuid: ~14 ms of CPU instead of ~32);
``serve.setup``, ``[model]`` and ``serve.image`` import what they use.
"""

import json
import os
import signal
import sys
import time

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


def _record_path(run_dir: str, key: str) -> str:
    return os.path.join(run_dir, f"{key}.json")


def _exit_path(run_dir: str, key: str) -> str:
    return os.path.join(run_dir, f"{key}.exit.json")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_json(path: str, value: dict) -> None:
    """Atomically: a reader sees the whole file or none."""
    tmp = os.path.splitext(path)[0] + ".tmp"
    with open(tmp, "w") as out:
        out.write(json.dumps(value))
    os.replace(tmp, path)


def _port_in_use(port: int) -> bool:
    """Something answers on 127.0.0.1:port. With ``_socket``, the C module under ``socket``: the
    Python layer (enums and all) costs ~5 ms to import, on every node start."""
    try:
        import _socket as sockets
    except ImportError:
        import socket as sockets  # type: ignore[no-redef]
    sock = sockets.socket(sockets.AF_INET, sockets.SOCK_STREAM)
    try:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
    finally:
        sock.close()


def start(key: str) -> int:
    run_dir = os.environ["MLINFRA_RUN_DIR"]
    port = int(os.environ["MLINFRA_PORT"])
    os.makedirs(run_dir, exist_ok=True)
    record_path = _record_path(run_dir, key)
    if os.path.exists(record_path):
        # A record without a resource in state: an apply was killed after starting this node
        # but before saving state. Stop that orphan so the node never runs twice.
        print(f"node {key}: stopping a copy left by an interrupted apply")
        stop(key)
    if _port_in_use(port):
        print(f"node {key}: port {port} is already in use by another process; with serve.port set, choose "
              "another; without it, run `mlinfra up` again to pick a free port", file=sys.stderr)
        return 1
    _unlink(_exit_path(run_dir, key))  # a stale exit must not describe this run
    token = os.urandom(16).hex()
    # The token first, on disk: if this launcher is killed from here on (Ctrl-C in Terraform),
    # `stop` (and mlinfra's sweep, by the stack's run dir) can still find what it started.
    log_path = os.path.join(run_dir, f"{key}.log")
    _write_json(record_path, {"pid": None, "token": token, "port": port, "started_at": time.time(), "log": log_path})
    try:
        env = _node_env(token) | {"MLINFRA_COMMAND": os.environ["MLINFRA_COMMAND"],
                                  "MLINFRA_EXIT_FILE": _exit_path(run_dir, key)}
    except SecretMissing as exc:
        _unlink(record_path)
        print(f"node {key}: {exc}", file=sys.stderr)
        return 1
    try:  # serve.setup, [model] and serve.image (issue 11), before the server starts
        container = _prepare_workload(key, run_dir, env, log_path)
    except Exception as exc:  # workload.WorkloadError, or a setup step the node could not run at all
        _unlink(record_path)
        print(f"node {key}: {exc}", file=sys.stderr)
        return 1
    try:
        supervisor = _spawn_supervisor(env, log_path)
    except OSError as exc:
        print(f"node {key}: cannot start the server: {exc}", file=sys.stderr)
        with open(log_path, "ab") as log:
            log.write(f"node {key}: cannot start the server: {exc}\n".encode())
        _unlink(record_path)
        return 1
    pid = _server_pid(supervisor)
    record = {"pid": pid, "token": token, "port": port, "started_at": time.time(), "log": log_path,
              "supervisor": supervisor, **({"container": container} if container else {})}
    try:
        _write_json(record_path, record)
    except BaseException:
        os.killpg(supervisor, signal.SIGKILL)  # nobody could find or stop a server without a record
        raise
    print(f"node {key}: started pid {pid} on port {port}")
    return 0


def _spawn_supervisor(env: dict, log_path: str) -> int:
    """Start the supervisor in a session of its own, in serve's cwd, with the usual umask for the
    server's own files; stdin and stdout/stderr away from Terraform's pipes (local-exec waits until
    they close). posix_spawn rather than subprocess: one import less on every node start."""
    cwd = os.environ.get("MLINFRA_CWD") or None
    if cwd is not None and not os.path.isdir(cwd):  # what Popen(cwd=) said: before anything runs
        raise FileNotFoundError(2, "No such file or directory", cwd)
    # What Popen's close_fds did: no descriptor of ours reaches the node beyond 0-2. Inherited ones
    # matter: mlinfra's stack lock travels with Terraform on purpose, and a server holding it
    # would keep the stack locked for as long as it runs.
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    for fd in [int(name) for name in os.listdir(fd_dir) if int(name) > 2]:
        try:
            os.set_inheritable(fd, False)
        except OSError:  # the listing's own descriptor, closed by now
            pass
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    previous_cwd, previous_umask = os.open(".", os.O_RDONLY), os.umask(0o022)
    try:
        if cwd is not None:
            os.chdir(cwd)  # posix_spawn has no cwd argument; this process is done with its own
        actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0), (os.POSIX_SPAWN_DUP2, log, 1),
                   (os.POSIX_SPAWN_DUP2, log, 2), (os.POSIX_SPAWN_CLOSE, log)]
        return os.posix_spawn("/bin/sh", ["/bin/sh", "-c", SUPERVISOR], env, file_actions=actions, setsid=True)
    finally:
        os.fchdir(previous_cwd)
        os.umask(previous_umask)
        os.close(previous_cwd)
        os.close(log)


def _prepare_workload(key: str, run_dir: str, env: dict, log_path: str) -> list:
    """Run serve.setup once, fetch [model] into the stack's cache (MODEL_DIR), and with serve.image
    turn the command into the container's `run`. Updates ``env``; returns [engine, name] of the
    container to remove on stop ([] without one). What the node runs goes to <key>.workload.json."""
    spec = json.loads(os.environ.get("MLINFRA_WORKLOAD") or "{}")
    if not spec.get("image") and not spec.get("setup") and not spec.get("model_uri"):
        _unlink(os.path.join(run_dir, f"{key}.workload.json"))
        return []
    import fcntl
    import shlex
    from pathlib import Path

    import workload  # templates/node/workload.py, copied beside this file

    ran = {"image": spec.get("image", ""), "command": os.environ["MLINFRA_COMMAND"]}
    setup_env = {k: v for k, v in env.items() if k not in ("MLINFRA_COMMAND", "MLINFRA_EXIT_FILE")}  # token kept
    ran["setup"] = workload.run_setup(spec.get("setup", []), setup_env, os.environ.get("MLINFRA_CWD"),
                                      log_path, os.path.join(run_dir, f"{key}.setup.json"))
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
    _write_json(os.path.join(run_dir, f"{key}.workload.json"), ran)
    return container


def _server_pid(supervisor: int) -> int:
    """The supervisor's child (the server), as soon as it exists: so that Terraform's "created"
    means the node's pid is known. A command that ended at once leaves only the supervisor (its
    exit file says how); without /proc (macOS) the supervisor stands for the node."""
    children = f"/proc/{supervisor}/task/{supervisor}/children"
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and os.waitpid(supervisor, os.WNOHANG) == (0, 0):
        try:
            with open(children) as listed:
                found = listed.read().split()
        except OSError:
            return supervisor
        if found:
            return int(found[0])
        time.sleep(0.001)
    return supervisor


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
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return f"{TOKEN_VAR}={token}".encode() in environ.read().split(b"\0")
    except OSError:
        return False


def node_processes(record: dict) -> list[int]:
    """The live processes of this node: those carrying its token."""
    if os.path.exists("/proc/self/environ"):
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
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
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
    run_dir = os.environ["MLINFRA_RUN_DIR"]
    path = _record_path(run_dir, key)
    try:
        with open(path) as saved:
            record = json.load(saved)
    except FileNotFoundError:
        _unlink(_exit_path(run_dir, key))
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
        import subprocess

        try:
            subprocess.call([engine, "rm", "-f", name], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"node {key}: could not remove container {name} ({exc}); remove it with `{engine} rm -f {name}`")
    # The supervisor is gone by now, so it cannot write the exit file after this.
    _unlink(_exit_path(run_dir, key))
    # A destroyed node's setup is forgotten: the next node (up after down, heal, rebuild) runs it
    # again, so a rebuild proves the setup still works instead of trusting an old run.
    _unlink(os.path.join(run_dir, f"{key}.setup.json"))
    _unlink(path)
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
