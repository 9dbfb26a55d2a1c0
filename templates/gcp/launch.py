"""The mlinfra node launcher, run on each GCP node (stdlib only; any python3 >= 3.8).

startup.sh fetches this file and the node's settings from instance metadata, then:

    python3 launch.py prepare /etc/mlinfra/node.json   # as root, once per boot
    python3 launch.py run /etc/mlinfra/node.json       # as the service user, under systemd

The settings (serve.command, serve.env, the port) are data in a JSON file: the command
runs as ``/bin/sh -c COMMAND`` exactly as the user wrote it, with ``PORT`` set, the same
contract as on the local target. No value is ever pasted into shell or unit-file text.

``serve.secrets`` arrive as references only ("sm:projects/P/secrets/S/versions/V"): ``run``
reads each from Secret Manager with the node's service account (a token from the metadata
server) into the server's environment, and nowhere else — not metadata, not a file, not a log.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import time

VENV = "/opt/mlinfra/venv"
SERVER = "/opt/mlinfra/serve.py"
SHIM = "/usr/local/bin/mlinfra"
GPU_WAIT_S = 900  # the Deep Learning VM installs its driver on first boot; that takes minutes
# GCE_METADATA_HOST is the override Google's own client libraries honour; the Secret Manager URL
# is overridable for tests against a stand-in.
METADATA_HOST = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
SECRET_MANAGER = os.environ.get("MLINFRA_SECRET_MANAGER_URL", "https://secretmanager.googleapis.com")


def load(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def prepare(node):
    """Provide `mlinfra serve` when the command uses it and the image lacks it.

    The reference server (mlinfra/serve.py; startup.sh writes it from metadata) runs in its own venv with
    aiohttp and numpy from PyPI. The PyPI name "mlinfra" belongs to another project, so it is
    never installed from there.
    """
    words = node["command"].split()
    if not words or words[0] != "mlinfra" or shutil.which("mlinfra") or (node.get("workload") or {}).get("image"):
        return
    if not os.path.exists(SERVER) or os.path.getsize(SERVER) == 0:
        print("mlinfra: the command uses `mlinfra` but no reference server was shipped", file=sys.stderr)
        return
    if not os.path.exists(os.path.join(VENV, "bin", "python")):
        if subprocess.call([sys.executable, "-m", "venv", VENV]) != 0:
            # Ubuntu cloud images ship python3 without ensurepip; python3-venv adds it.
            subprocess.check_call(["apt-get", "update", "-q"])
            subprocess.check_call(["apt-get", "install", "-y", "-q", "python3-venv"])
            subprocess.check_call([sys.executable, "-m", "venv", VENV])
    subprocess.check_call([os.path.join(VENV, "bin", "pip"), "install", "-q", "aiohttp", "numpy"])
    with open(SHIM, "w", encoding="utf-8") as handle:
        handle.write(
            "#!/bin/sh\n"
            "# Installed by the mlinfra node launcher: only the reference server is available here.\n"
            'if [ "$1" = serve ]; then shift; exec %s/bin/python %s "$@"; fi\n'
            'echo "mlinfra: only \'mlinfra serve\' is available on nodes" >&2\n'
            "exit 2\n" % (VENV, SERVER)
        )
    os.chmod(SHIM, 0o755)


def wait_for_gpu(node, timeout_s=GPU_WAIT_S):
    """Start the server only once the driver answers, so it sees its GPUs from the start."""
    if not node.get("gpus"):
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if subprocess.call(["nvidia-smi", "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0:
                return True
        except OSError:
            pass  # nvidia-smi not installed yet
        time.sleep(5)
    print("mlinfra: no GPU driver after %ds; starting anyway (verify will report it)" % timeout_s, file=sys.stderr)
    return False


def environment(node, base=None):
    env = dict(os.environ if base is None else base)
    env.update(node.get("env") or {})
    env.update({"PORT": str(node["port"]), "MLINFRA_STACK": node["stack"], "MLINFRA_NODE": node["node"]})
    return env


class SecretError(Exception):
    pass


def read_secrets(refs):
    """{ENV_NAME: value} for the node's secret references, read with its service account."""
    from urllib.error import URLError
    from urllib.request import Request, urlopen

    if not refs:
        return {}
    url = "http://%s/computeMetadata/v1/instance/service-accounts/default/token" % METADATA_HOST
    try:
        with urlopen(Request(url, headers={"Metadata-Flavor": "Google"}), timeout=10) as response:
            token = json.load(response)["access_token"]
    except (URLError, OSError, ValueError, KeyError) as exc:
        raise SecretError("no service-account token from the metadata server (%s)" % exc) from None
    values = {}
    for name, ref in sorted(refs.items()):
        version = ref[len("sm:"):]
        request = Request("%s/v1/%s:access" % (SECRET_MANAGER, version), headers={"Authorization": "Bearer " + token})
        try:
            with urlopen(request, timeout=10) as response:
                values[name] = base64.b64decode(json.load(response)["payload"]["data"]).decode("utf-8")
        except (URLError, OSError, ValueError, KeyError) as exc:  # the message names the secret, never a value
            raise SecretError("secret %s: cannot read %s (%s)" % (name, version, exc)) from None
    return values


def server_environment(node, base=None):
    """The server's environment: serve.env, PORT, MLINFRA_*, and the secrets (serve.setup's too)."""
    env = environment(node, base)
    env.update(read_secrets(node.get("secrets")))
    return env


def run(node):
    wait_for_gpu(node)
    try:
        env = server_environment(node)
    except SecretError as exc:
        print("mlinfra: %s" % exc, file=sys.stderr)
        return 1
    sys.stdout.flush()
    hooks = workload_hooks(node)  # issue 11: `docker run` for serve.image; MODEL_DIR
    argv = hooks.server_argv(node, env) if hooks else ["/bin/sh", "-c", node["command"]]
    os.execve(argv[0], argv, env)


# -- issue 11: serve.image, serve.setup, [model] — the code is in workload_gcp.py beside this file ----
def workload_hooks(node):
    """workload_gcp (and workload.py, which it uses), imported only for a node with a workload."""
    if not any((node.get("workload") or {}).values()):
        return None
    return _workload_gcp()


def _workload_gcp():
    here = os.path.dirname(os.path.abspath(__file__))  # startup.sh ships both beside this file, always
    if here not in sys.path:
        sys.path.insert(0, here)
    import workload_gcp

    return workload_gcp
# -- end issue 11 -------------------------------------------------------------------------------------


def main(argv):
    if len(argv) != 3 or argv[1] not in ("prepare", "run"):
        print("usage: launch.py prepare|run NODE_JSON", file=sys.stderr)
        return 2
    node = load(argv[2])
    if argv[1] == "prepare":
        try:
            prepare(node)
        except Exception as exc:  # noqa: BLE001 (apt-get, pip, a venv, a bug): the node's reason, not a traceback
            return _workload_gcp().prepare_failed(node, "mlinfra serve (the reference server)", exc)
        hooks = workload_hooks(node)  # issue 11: setup, model, image pull; non-zero stops startup.sh
        return hooks.prepare(node, server_environment) if hooks else 0
    return run(node)  # returns only when it cannot start the server; otherwise the server replaced it


if __name__ == "__main__":
    sys.exit(main(sys.argv))
