"""serve.image, serve.setup and [model] on a GCP node (issue 11); launch.py calls this.

``prepare`` runs as root from startup.sh, on every boot, before the server's unit starts:
setup steps (once per node; as the server's user, in its environment with its secrets), the model copied from GCS to local disk (progress in the
startup log, checksum verified, cached by object generation so a reboot or a restarted unit
downloads nothing), and ``docker pull`` of the image. What the node runs, or why it failed,
goes to /var/lib/mlinfra/workload.json and to the guest attribute ``mlinfra/workload``
(instance metadata, readable with compute.instances.getGuestAttributes): any failure, expected or
not, is published so and returns non-zero, so startup.sh stops before it writes this boot's
"prepared" marker, and the server's unit (which needs it) never starts on a half-made node.

``server_argv`` gives the server's argv for launch.py's ``run``: with an image, ``docker run``
with the port published, the GPUs attached (``--gpus all``: Docker with the NVIDIA Container
Toolkit; checked on the node, see ``_check_docker``) and the model mounted read-only at
model.dir; without, ``/bin/sh -c COMMAND`` as before, with model.dir linked to the cache.
Standard library only (any python3 >= 3.8), like launch.py.
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
from urllib.request import Request, urlopen

import workload  # workload.py, copied beside this file by startup.sh

STATE = os.environ.get("MLINFRA_STATE_DIR", "/var/lib/mlinfra")
SETUP_LOG = os.path.join(STATE, "setup.log")
SERVICE_USER = os.environ.get("MLINFRA_SERVICE_USER", "mlserve")  # the unit's User=; tests use another
SERVICE_HOME = os.environ.get("MLINFRA_SERVICE_HOME", "/var/lib/mlserve")  # startup.sh makes it
CONTAINER = "mlinfra-serve"
# GCE_METADATA_HOST is the override Google's client libraries honour; the GCS URL is overridable
# for tests against a stand-in (fake-gcs-server serves the same JSON API).
METADATA_HOST = os.environ.get("GCE_METADATA_HOST", "metadata.google.internal")
GCS_URL = os.environ.get("MLINFRA_GCS_URL", workload.GCS_API)


def _spec(node):
    return node.get("workload") or {}


def _metadata(path, data=None):
    url = "http://%s/computeMetadata/v1/%s" % (METADATA_HOST, path)
    request = Request(url, data=data, method="PUT" if data is not None else "GET",
                      headers={"Metadata-Flavor": "Google"})
    with urlopen(request, timeout=10) as response:
        return response.read()


def _token():
    try:
        return json.loads(_metadata("instance/service-accounts/default/token"))["access_token"]
    except (OSError, ValueError, KeyError) as exc:
        raise workload.WorkloadError("model: no service-account token from the metadata server (%s)" % exc) from None


def _publish(status):
    """Where `status`/`verify` can read it without SSH: a file, and a guest attribute."""
    text = json.dumps(status, sort_keys=True)
    try:  # a state dir that cannot be written (the failure being published) must not stop the attribute
        os.makedirs(STATE, exist_ok=True)
        with open(os.path.join(STATE, "workload.json"), "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as exc:
        print("mlinfra: cannot write %s (%s)" % (os.path.join(STATE, "workload.json"), exc), file=sys.stderr)
    try:
        _metadata("instance/guest-attributes/mlinfra/workload", text.encode())
    except OSError as exc:  # guest attributes off (enable-guest-attributes): the file and the log remain
        print("mlinfra: cannot publish the workload status as a guest attribute (%s)" % exc, file=sys.stderr)


def model_cache(spec):
    return os.path.join(STATE, "models", workload.cache_key(spec["model_uri"]))


def _check_docker(gpus):
    """Docker, and with GPUs the NVIDIA Container Toolkit's runtime hook, must be on the image.
    Checked, not assumed, and nothing is installed: the default boot image for a GPU is a Deep
    Learning VM family (clouds/gcp/catalog.default_image), and what an image ships changes with
    its release; a custom gcp.image may have neither. (Source: none found. Searching public
    references for what the Deep Learning VM images ship — Docker, nvidia-container-toolkit —
    gave no authoritative page, so this check is the contract, and its message the diagnosis.)
    `--gpus all` is Docker's flag for the toolkit's hook (docs.nvidia.com/datacenter/cloud-native/
    container-toolkit/latest/docker-specialized.html); podman uses CDI: --device nvidia.com/gpu=all."""
    engine = workload.find_engine("docker")
    if gpus and not (shutil.which("nvidia-container-cli") or shutil.which("nvidia-ctk")):
        raise workload.WorkloadError("serve.image with GPUs needs the NVIDIA Container Toolkit on the boot image "
                                     "(no nvidia-ctk or nvidia-container-cli): choose an image that has it (gcp.image)")
    return engine


def _service_user():
    """(uid, gid, home) of the user the server's unit runs as (User=mlserve; startup.sh makes it)."""
    entry = pwd.getpwnam(SERVICE_USER)
    return entry.pw_uid, entry.pw_gid, SERVICE_HOME


def _become(uid, gid):
    """For serve.setup's child: drop root for the service user, as systemd's User= does for the
    server, so what setup installs (pip install --user, caches under HOME) is the server's."""
    if os.getuid() == uid:
        return None  # already that user (a test run as the service user)

    def demote():
        os.setgroups(os.getgrouplist(SERVICE_USER, gid))
        os.setgid(gid)
        os.setuid(uid)

    return demote


def _setup_environment(node, server_environment, home):
    """What the server's unit sees (launch.py's run: serve.env, PORT, MLINFRA_*, the secrets from
    Secret Manager), on the base systemd gives a User= service: HOME, USER, LOGNAME of that user."""
    base = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": home,
            "USER": SERVICE_USER, "LOGNAME": SERVICE_USER, "LANG": os.environ.get("LANG", "C.UTF-8")}
    return server_environment(node, base)


def _redact(text, secrets):
    """No secret value in what is published (guest attributes are readable by project viewers) or printed."""
    for value in sorted(secrets, key=len, reverse=True):
        if value:
            text = text.replace(value, "***")
    return text


def prepare(node, server_environment):
    """Setup, the model and the image for this boot; 0 when the server may start. Every failure,
    expected or not, is published as the node's reason: a boot that dies with a traceback would
    leave the gate waiting out its deadline for a report that never comes."""
    spec = _spec(node)
    status = _status(node)
    stage, secrets = "prepare", []
    try:
        os.makedirs(STATE, exist_ok=True)
        if spec.get("setup"):
            stage = "serve.setup"
            uid, gid, home = _service_user()
            env = _setup_environment(node, server_environment, home)
            secrets = [env[name] for name in (node.get("secrets") or {}) if name in env]
            # The log holds what setup printed: readable by root only, like the secrets it may echo.
            os.close(os.open(SETUP_LOG, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
            os.chmod(SETUP_LOG, 0o600)  # a log from an earlier version may be world-readable
            status["setup"] = workload.run_setup(spec["setup"], env, home, SETUP_LOG,
                                                 os.path.join(STATE, "setup.json"), _become(uid, gid))
        else:
            status["setup"] = {"steps": 0, "result": "none"}
        if spec.get("model_uri"):
            stage = "model"
            cache = model_cache(spec)
            os.makedirs(cache, exist_ok=True)
            status["model"] = workload.fetch_model(spec["model_uri"], spec.get("model_sha256", ""), cache, sys.stdout,
                                                   GCS_URL, _token())
            if not spec.get("image"):  # the server reads model.dir on the host: a link to the cache
                stage = "model.dir %s" % spec["model_dir"]
                _link_model(os.path.join(cache, "model"), spec["model_dir"])
        if spec.get("image"):
            stage = "serve.image"
            engine = _check_docker(node.get("gpus"))
            print("mlinfra: pulling %s" % spec["image"], flush=True)
            if subprocess.call([engine, "pull", spec["image"]], stdin=subprocess.DEVNULL) != 0:
                raise workload.WorkloadError("serve.image: `docker pull %s` failed (see the startup log)" % spec["image"])
            # The unit runs as the service user; the docker group lets it start the container
            # (root-equivalent on this VM, which exists to run this one server).
            if subprocess.call(["usermod", "-aG", "docker", SERVICE_USER]) != 0:
                raise workload.WorkloadError("serve.image: cannot add %s to the docker group" % SERVICE_USER)
    except workload.WorkloadError as exc:
        return _fail(status, str(exc), secrets)
    except Exception as exc:  # noqa: BLE001 (OSError, a missing usermod, a secret that cannot be read, a bug)
        return _fail(status, "%s: %s: %s" % (stage, type(exc).__name__, exc), secrets)
    _publish(status)
    return 0


def _status(node):
    return {"image": _spec(node).get("image", ""), "command": node["command"]}


def prepare_failed(node, stage, exc):
    """launch.py's own prepare (the reference server's venv) failed: published as every failure here is."""
    return _fail(_status(node), "%s: %s: %s" % (stage, type(exc).__name__, exc), [])


def startup_failed(stage, message, node_path=""):
    """startup.sh's ERR trap: a step of its own (a file from metadata, the service user, a unit)
    failed, before or after launch.py, published as the node's reason like every failure here —
    a first boot that dies there would otherwise publish nothing and leave the gate waiting."""
    try:
        with open(node_path, encoding="utf-8") as handle:
            status = _status(json.load(handle))
    except (OSError, ValueError, KeyError, TypeError):  # node.json may be the file that could not be read
        status = {}
    return _fail(status, "startup.sh: %s: %s" % (stage, message), [])


def _fail(status, message, secrets):
    status["error"] = _redact(message, secrets)
    print("mlinfra: %s" % status["error"], file=sys.stderr)
    _publish(status)
    return 1


def _link_model(target, link):
    """model.dir as a link to the cache. Only a link that points into mlinfra's cache is replaced:
    anything else there (a directory, a file, a link of the image's) is refused, never removed."""
    if os.path.lexists(link):
        if not (os.path.islink(link) and os.readlink(link).startswith(os.path.join(STATE, "models") + os.sep)):
            raise workload.WorkloadError("model.dir %s already exists and is not mlinfra's link to the model: "
                                         "choose another model.dir" % link)
        os.unlink(link)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)


def server_argv(node, env):
    """The server's argv for execve; sets MODEL_DIR in ``env``."""
    spec = _spec(node)
    if spec.get("model_uri"):
        env["MODEL_DIR"] = spec["model_dir"]
    if not spec.get("image"):
        return ["/bin/sh", "-c", node["command"]]
    engine = workload.find_engine("docker")
    # A container left by a crashed run would hold the name: remove it first.
    subprocess.call([engine, "rm", "-f", CONTAINER], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    passed = [name for name in env if name in (node.get("env") or {}) or name in (node.get("secrets") or {})]
    passed += ["PORT", "MLINFRA_STACK", "MLINFRA_NODE"] + (["MODEL_DIR"] if spec.get("model_uri") else [])
    model_host = os.path.join(model_cache(spec), "model") if spec.get("model_uri") else ""
    # bind "": the port on every interface; the stack's firewall rules decide who reaches it.
    return workload.container_argv(engine, spec["image"], CONTAINER, int(node["port"]), passed, spec.get("args", []),
                                   model_host, spec.get("model_dir", ""), node.get("gpus", 0), bind="")


if __name__ == "__main__":  # python3 workload_gcp.py fail STAGE MESSAGE [NODE_JSON]: startup.sh's ERR trap
    if len(sys.argv) not in (4, 5) or sys.argv[1] != "fail":
        print("usage: workload_gcp.py fail STAGE MESSAGE [NODE_JSON]", file=sys.stderr)
        sys.exit(2)
    startup_failed(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) == 5 else "")
    sys.exit(0)
