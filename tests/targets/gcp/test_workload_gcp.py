"""A GCP node's workload (issue 11): templates/gcp/workload_gcp.py through launch.py, as the node
runs them (`launch.py prepare`, then `launch.py run`), from the files a rendered module ships.

Google's services are stand-ins here:
- GCS: a real fake-gcs-server, which speaks the JSON API the node uses (objects.get, objects.list,
  alt=media; cloud.google.com/storage/docs/json_api/v1/objects);
- the metadata server and the Compute API: tests/standins/google.py (the token, guest attributes
  written by the node and read by the operator's gate);
- docker, nvidia-ctk and usermod: scripts that record their argv (no container runs in this sandbox,
  and the test must not change this machine's users).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Emulator, gcp_stack
from standins.google import TOKEN, Google

from mlinfra import verify
from mlinfra.nodes import Node
from mlinfra.targets.gcp import node_checks

SERVICE_ACCOUNT = "ml-node@ml-demo-123456.iam.gserviceaccount.com"
# The node's unit runs as mlserve; here setup runs as `nobody` when the suite runs as root, so these
# tests drop root as the node does (they must not add users to this machine); run as another user,
# setup runs as that user, and the node's code keeps it (no drop to do).
SERVICE_USER = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
SECRET = "hf_setup-s3cr3t-0123456789"
VERSION = "projects/ml-demo-123456/secrets/hf-token/versions/latest"


@pytest.fixture
def google():
    emulator = Emulator()
    emulator.create_bucket("models")
    metadata = Google.start(secrets={VERSION: SECRET})
    yield emulator, metadata
    metadata.stop()
    emulator.stop()


STAND_IN = f"""#!{sys.executable}
import json, os, sys
with open(os.path.join(os.path.dirname(__file__), "calls.jsonl"), "a") as log:
    log.write(json.dumps([os.path.basename(__file__)] + sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def node_dir(tmp_path):
    """The node's /opt/mlinfra: launch.py and its helpers as a rendered GCP module ships them."""
    stack = gcp_stack(tmp_path, "wl", gcp={"service_account": SERVICE_ACCOUNT},
                      serve={"setup": ["true"]}, model={"uri": "gs://models/m/"})
    workdir = stack.render().workdir
    opt = tmp_path / "opt"
    opt.mkdir()
    for name in ("launch.py", "workload.py", "workload_gcp.py"):
        (opt / name).write_text((workdir / name).read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "nvidia-ctk", "usermod"):
        (bin_dir / name).write_text(STAND_IN)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")  # the driver answers: run waits for it
    (bin_dir / "nvidia-smi").chmod(0o755)
    (tmp_path / "home").mkdir()
    if os.geteuid() == 0:
        os.chown(tmp_path / "home", SERVICE_USER.pw_uid, SERVICE_USER.pw_gid)  # as useradd --create-home makes it
    return opt


def node_config(tmp_path: Path, secrets: dict | None = None, command: str = 'cat "$MODEL_DIR/w.bin" > served',
                **workload) -> Path:
    values = {"image": "", "args": [], "setup": [], "model_uri": "", "model_sha256": "", "model_dir": ""} | workload
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"stack": "wl", "node": "us-central1-0", "port": 8000, "gpus": 1, "health_path": "/",
                                  "env": {"MODE": "$(id)"}, "secrets": secrets or {}, "workload": values,
                                  "command": command}))
    return config


def launch(tmp_path: Path, node_dir: Path, command: str, config: Path, google: Google, emulator: Emulator):
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "GCE_METADATA_HOST": google.address, "MLINFRA_GCS_URL": emulator.url,
           "MLINFRA_STATE_DIR": str(tmp_path / "state"), "MLINFRA_SERVICE_HOME": str(tmp_path / "home"),
           "MLINFRA_SERVICE_USER": SERVICE_USER.pw_name, "MLINFRA_SECRET_MANAGER_URL": f"http://{google.address}"}
    return subprocess.run([sys.executable, str(node_dir / "launch.py"), command, str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_prepare_fetches_the_model_once_runs_setup_and_publishes_what_the_node_runs(tmp_path, node_dir, google):
    emulator, metadata = google
    generation = emulator.upload("models", "m/w.bin", b"weights-v3")["generation"]
    model_dir = tmp_path / "models" / "m"
    config = node_config(tmp_path, setup=["echo ran >> setup-ran"], model_uri="gs://models/m/w.bin",
                         model_sha256=hashlib.sha256(b"weights-v3").hexdigest(), model_dir=str(model_dir))
    first = launch(tmp_path, node_dir, "prepare", config, metadata, emulator)
    assert first.returncode == 0, first.stderr
    assert "model: downloading gs://models/m/w.bin (1 file, 0.0 MiB)" in first.stdout
    assert (model_dir / "w.bin").read_bytes() == b"weights-v3"  # model.dir: a link to the cache
    status = json.loads(metadata.guest[("mlinfra", "workload")])
    assert status["model"]["generation"] == str(generation) and status["model"]["downloaded"] is True
    assert status["setup"] == {"steps": 1, "result": "ok"} and "error" not in status
    assert json.loads((tmp_path / "state" / "workload.json").read_text()) == status
    # A reboot: prepare again. No download, no second setup.
    again = launch(tmp_path, node_dir, "prepare", config, metadata, emulator)
    assert again.returncode == 0, again.stderr
    assert "is cached (generation %s), no download" % generation in again.stdout
    assert (tmp_path / "home" / "setup-ran").read_text() == "ran\n"
    # The server (no image): serve.command with MODEL_DIR = model.dir.
    run = launch(tmp_path, node_dir, "run", config, metadata, emulator)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "served").read_bytes() == b"weights-v3"


def test_a_bad_checksum_fails_prepare_and_says_why_where_status_can_read_it(tmp_path, node_dir, google):
    emulator, metadata = google
    emulator.upload("models", "m/w.bin", b"tampered")
    config = node_config(tmp_path, model_uri="gs://models/m/w.bin", model_sha256="0" * 64,
                         model_dir=str(tmp_path / "models" / "m"))
    done = launch(tmp_path, node_dir, "prepare", config, metadata, emulator)
    assert done.returncode == 1
    message = f"model gs://models/m/w.bin: checksum mismatch: model.sha256 is {'0' * 64}, the download's is " \
              f"{hashlib.sha256(b'tampered').hexdigest()}"
    assert f"mlinfra: {message}" in done.stderr
    assert json.loads(metadata.guest[("mlinfra", "workload")])["error"] == message
    assert not (tmp_path / "models" / "m").exists()


def test_an_image_is_pulled_then_run_with_gpus_port_and_the_model_read_only(tmp_path, node_dir, google):
    emulator, metadata = google
    emulator.upload("models", "m/a.bin", b"a")
    emulator.upload("models", "m/b.bin", b"b")
    image = "vllm/vllm-openai@sha256:" + "c" * 64
    config = node_config(tmp_path, image=image, args=["--model", "/models/m"], model_uri="gs://models/m/",
                         model_dir="/models/m")
    prepared = launch(tmp_path, node_dir, "prepare", config, metadata, emulator)
    assert prepared.returncode == 0, prepared.stderr
    assert not Path("/models/m").exists()  # with an image, model.dir exists only inside the container
    run = launch(tmp_path, node_dir, "run", config, metadata, emulator)
    assert run.returncode == 0, run.stderr
    calls = [json.loads(line) for line in (tmp_path / "bin" / "calls.jsonl").read_text().splitlines()]
    cache = next((tmp_path / "state" / "models").glob("*/model"))
    assert calls == [
        ["docker", "pull", image],
        ["usermod", "-aG", "docker", SERVICE_USER.pw_name],
        ["docker", "rm", "-f", "mlinfra-serve"],
        ["docker", "run", "--rm", "--name", "mlinfra-serve", "--publish", "8000:8000",
         "--env", "MLINFRA_NODE", "--env", "MLINFRA_STACK", "--env", "MODE", "--env", "MODEL_DIR", "--env", "PORT",
         "--volume", f"{cache}:/models/m:ro", "--gpus", "all", image, "--model", "/models/m"],
    ]


def test_an_image_with_gpus_needs_the_nvidia_container_toolkit(tmp_path, node_dir, google):
    emulator, metadata = google
    os.remove(tmp_path / "bin" / "nvidia-ctk")
    config = node_config(tmp_path, image="vllm/vllm-openai:v0.6.3")
    done = launch(tmp_path, node_dir, "prepare", config, metadata, emulator)
    assert done.returncode == 1
    assert "serve.image with GPUs needs the NVIDIA Container Toolkit on the boot image" in done.stderr


def test_the_gate_says_why_a_node_never_started_its_server(tmp_path, node_dir, google, monkeypatch):
    """The node's failed checksum, written at boot, is what `verify` shows: read back with
    getGuestAttributes by the operator's side (targets/gcp/node_checks.py), without waiting out
    the health deadline for a report that will never come."""
    emulator, metadata = google
    emulator.upload("models", "m/w.bin", b"tampered")
    config = node_config(tmp_path, model_uri="gs://models/m/w.bin", model_sha256="0" * 64,
                         model_dir=str(tmp_path / "models" / "m"))
    assert launch(tmp_path, node_dir, "prepare", config, metadata, emulator).returncode == 1
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("MLINFRA_COMPUTE_API_URL", f"http://{metadata.address}/compute/v1")
    stack = gcp_stack(tmp_path, "wl", gcp={"service_account": SERVICE_ACCOUNT, "zones": ["us-central1-a"]},
                      model={"uri": "gs://models/m/w.bin"}, verify={"health_timeout_s": 20})
    monkeypatch.setattr(node_checks, "BOOT_GRACE_S", 0.0)  # were the early stop lost, this waits 20 s, not 15 min
    node = Node(key="us-central1-0", name="wl-us-central1-0", region="us-central1", replica=0,
                endpoint="http://192.0.2.10:8000", health_url="http://192.0.2.10:8000/health", zone="us-central1-a")
    report = verify.run(stack, [node], checks=["health"])
    health = report.results[0]
    assert not health.passed and health.summary == "no report"
    assert health.message.startswith("the node did not start its server: model gs://models/m/w.bin: checksum mismatch: ")


def test_setup_runs_as_the_server_user_with_its_environment_and_secrets(tmp_path, node_dir, google):
    """serve.setup sees what the server's unit sees: its user, HOME and working dir, serve.env and
    the secrets from Secret Manager (an HF_TOKEN for `huggingface-cli download`), and what it
    installs belongs to that user. No secret value reaches the boot log or the published status."""
    emulator, metadata = google
    step = 'printf "%s|%s|%s|%s|%s" "$HF_TOKEN" "$MODE" "$HOME" "$(id -un)" "$(pwd)" > setup-env; mkdir -p .cache/x'
    config = node_config(tmp_path, secrets={"HF_TOKEN": f"sm:{VERSION}"}, setup=[step])
    done = launch(tmp_path, node_dir, "prepare", config, metadata, emulator)
    assert done.returncode == 0, done.stderr
    home = tmp_path / "home"
    assert (home / "setup-env").read_text() == f"{SECRET}|$(id)|{home}|{SERVICE_USER.pw_name}|{home}"
    assert (home / ".cache" / "x").stat().st_uid == SERVICE_USER.pw_uid  # the server can use what setup made
    published = metadata.guest[("mlinfra", "workload")]
    assert json.loads(published)["setup"] == {"steps": 1, "result": "ok"}
    assert SECRET not in done.stdout + done.stderr + published


def test_a_failing_setup_step_publishes_its_reason_without_the_secret(tmp_path, node_dir, google):
    emulator, metadata = google
    config = node_config(tmp_path, secrets={"HF_TOKEN": f"sm:{VERSION}"},
                         setup=['echo "login failed for token $HF_TOKEN"; exit 3'])
    done = launch(tmp_path, node_dir, "prepare", config, metadata, emulator)
    assert done.returncode == 1
    error = json.loads(metadata.guest[("mlinfra", "workload")])["error"]
    assert error.startswith("setup step 1 of 1 (") and error.endswith("login failed for token ***")
    assert SECRET not in done.stdout + done.stderr
    assert stat.S_IMODE((tmp_path / "state" / "setup.log").stat().st_mode) == 0o600  # what setup printed: root's


def test_a_secret_setup_cannot_read_is_the_nodes_reason(tmp_path, node_dir, google):
    emulator, metadata = google
    config = node_config(tmp_path, secrets={"HF_TOKEN": "sm:projects/ml-demo-123456/secrets/gone/versions/1"},
                         setup=["true"])
    done = launch(tmp_path, node_dir, "prepare", config, metadata, emulator)
    assert done.returncode == 1
    error = json.loads(metadata.guest[("mlinfra", "workload")])["error"]
    assert error.startswith("serve.setup: SecretError: secret HF_TOKEN: cannot read projects/ml-demo-123456/secrets/gone")


@pytest.mark.parametrize("case", ["directory", "file", "under-a-file", "no-usermod"])
def test_every_boot_failure_is_published_as_the_nodes_reason(tmp_path, node_dir, google, case):
    """Not only the failures the code expects: an OSError (model.dir onto an existing directory,
    a makedirs under a file, a missing usermod) is the node's reason too, never a bare traceback
    that leaves the gate waiting out its deadline."""
    emulator, metadata = google
    emulator.upload("models", "m/w.bin", b"weights")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").write_text("not mlinfra's")
    (tmp_path / "afile").write_text("")
    model_dir = {"directory": tmp_path / "taken", "file": tmp_path / "afile",
                 "under-a-file": tmp_path / "afile" / "m", "no-usermod": "/models/m"}[case]
    extra = {"image": "vllm/vllm-openai:v0.6.3"} if case == "no-usermod" else {}
    if case == "no-usermod":
        os.remove(tmp_path / "bin" / "usermod")
    config = node_config(tmp_path, model_uri="gs://models/m/w.bin", model_dir=str(model_dir), **extra)
    done = launch(tmp_path, node_dir, "prepare", config, metadata, emulator)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error = json.loads(metadata.guest[("mlinfra", "workload")])["error"]
    expected = {
        "directory": f"model.dir {model_dir} already exists and is not mlinfra's link to the model",
        "file": f"model.dir {model_dir} already exists and is not mlinfra's link to the model",
        "under-a-file": f"model.dir {model_dir}: FileExistsError: ",
        "no-usermod": "serve.image: FileNotFoundError: ",
    }[case]
    assert error.startswith(expected), error
    assert f"mlinfra: {error}" in done.stderr
    assert (tmp_path / "taken" / "keep").read_text() == "not mlinfra's"  # nothing of the node's was removed


@pytest.mark.parametrize("failing", ["apt-get", "pip"])
def test_a_failed_reference_server_install_is_the_nodes_reason_too(tmp_path, node_dir, google, failing):
    """launch.py's own prepare (the venv, apt-get and pip for `mlinfra serve`) runs for every node, with
    or without a workload: its failure is published like workload_gcp's, not left as a traceback."""
    emulator, metadata = google
    opt, bin_dir = tmp_path / "node-opt", tmp_path / "bin"
    opt.mkdir()
    (opt / "serve.py").write_text("# the reference server, as startup.sh writes it from metadata\n")
    # launch.py's node paths (/opt/mlinfra, /usr/local/bin/mlinfra), moved under tmp_path
    launcher = node_dir / "launch.py"
    launcher.write_text(launcher.read_text().replace('"/opt/mlinfra/', f'"{opt}/')
                        .replace('"/usr/local/bin/mlinfra"', f'"{bin_dir}/mlinfra"'))
    if failing == "apt-get":  # no ensurepip (python3-venv missing), and the package index is locked
        (opt / "venv").write_text("")  # `python3 -m venv` fails here, as without ensurepip
        (bin_dir / "apt-get").write_text("#!/bin/sh\necho 'E: Could not get lock /var/lib/apt/lists/lock' >&2\nexit 100\n")
        (bin_dir / "apt-get").chmod(0o755)
    else:  # the venv exists; PyPI cannot be reached
        (opt / "venv" / "bin").mkdir(parents=True)
        (opt / "venv" / "bin" / "python").write_text("")
        (opt / "venv" / "bin" / "pip").write_text("#!/bin/sh\necho 'ERROR: No matching distribution found for aiohttp' >&2\nexit 1\n")
        (opt / "venv" / "bin" / "pip").chmod(0o755)
    config = node_config(tmp_path, command="mlinfra serve --port 8000")  # no workload: no hooks imported
    done = launch(tmp_path, node_dir, "prepare", config, metadata, emulator)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    status = json.loads(metadata.guest[("mlinfra", "workload")])
    command = {"apt-get": "['apt-get', 'update', '-q']", "pip": f"['{opt}/venv/bin/pip', 'install', '-q', 'aiohttp', 'numpy']"}
    assert status["error"] == (f"mlinfra serve (the reference server): CalledProcessError: Command '{command[failing]}' "
                               f"returned non-zero exit status {100 if failing == 'apt-get' else 1}.")
    assert status["command"] == "mlinfra serve --port 8000"
    assert f"mlinfra: {status['error']}" in done.stderr
    assert json.loads((tmp_path / "state" / "workload.json").read_text()) == status
    assert not (bin_dir / "mlinfra").exists()  # no shim for a server that is not there
