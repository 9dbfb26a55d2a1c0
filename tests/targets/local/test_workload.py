"""serve.setup, [model] and serve.image on the local target (issue 11), with real processes:
Terraform, the node launcher, the server, and a real fake-gcs-server for `gs://` models.

Containers cannot run in this sandbox (podman 4.3 from Debian imports an image from a tarball,
but `podman run` fails: crun cannot set RLIMIT_NPROC without CAP_SYS_RESOURCE, and refuses the
hybrid cgroup v1/v2 mount). So the container path runs a stand-in engine: a script that records
the argv and environment it was given, checks them, then serves HTTP as the container would.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HTTP_SERVER, TEMPLATES, write_stack

from mlinfra import Stack
from mlinfra.errors import EngineError, MlinfraError

MLINFRA = [sys.executable, "-m", "mlinfra"]
# The server proves what it was given before it serves: the model's bytes under MODEL_DIR.
SHOW_MODEL = "cat $MODEL_DIR/weights.bin > seen-model && " + HTTP_SERVER


@pytest.fixture
def emulator(emulator, monkeypatch):  # conftest's, with the models bucket and the launcher told where it is
    emulator.create_bucket("models")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)  # read by the launcher, never by the node
    return emulator


def stack_file(tmp_path: Path, name: str, serve: str, model: str = "") -> Path:
    return write_stack(
        tmp_path,
        f"""
        name = "{name}"
        [serve]
        health_path = "/"
        {serve}
        {model}
    """,
    )


def workload_record(stack: Stack, key: str = "local-0") -> dict:
    return json.loads((stack.workspace.nodes_dir / f"{key}.workload.json").read_text())


def up(stack: Stack):
    return stack.up(verify=False)


# -- setup -------------------------------------------------------------------------------------------


def test_setup_runs_once_before_the_first_start_in_order(tmp_path):
    path = stack_file(
        tmp_path,
        "setup-ok",
        f"""command = "cat made && {HTTP_SERVER}"
        setup = ["echo one > made", "echo two >> made"]""",
    )
    stack = Stack.load(path)
    try:
        up(stack)
        assert (tmp_path / "made").read_text() == "one\ntwo\n"
        assert workload_record(stack)["setup"] == {"steps": 2, "result": "ok"}
        (tmp_path / "made").write_text("kept\n")
        up(stack)  # nothing changed: the node keeps running, setup does not run again
        assert (tmp_path / "made").read_text() == "kept\n"
        log = Path(stack.status().nodes[0].log).read_text()
        assert log.count("mlinfra: setup step 1 of 2: echo one > made") == 1
        stack.down()
        up(stack)  # a new node (down, then up): its setup runs again, so a rebuild proves it still works
        assert (tmp_path / "made").read_text() == "one\ntwo\n"
        assert workload_record(stack)["setup"] == {"steps": 2, "result": "ok"}
    finally:
        stack.down()


def test_a_failing_setup_step_fails_up_with_the_step_and_the_log_tail(tmp_path):
    path = stack_file(
        tmp_path,
        "setup-bad",
        f'''command = "{HTTP_SERVER}"
        setup = ["echo fine", "echo no-such-package >&2; exit 3", "echo never > never"]''',
    )
    stack = Stack.load(path)
    try:
        with pytest.raises(EngineError) as info:
            up(stack)
        message = str(info.value)
        assert "node local-0: setup step 2 of 3 (echo no-such-package >&2; exit 3) failed with exit code 3" in message
        assert "last log lines: " in message and "no-such-package" in message
        assert not (tmp_path / "never").exists()
        assert not (stack.workspace.nodes_dir / "local-0.setup.json").exists()  # it runs again next time
    finally:
        stack.down()


# -- the model ---------------------------------------------------------------------------------------


def test_a_model_from_a_path_is_verified_copied_and_given_as_model_dir(tmp_path):
    (tmp_path / "weights").mkdir()
    body = b"\x00demand-v3"
    (tmp_path / "weights" / "weights.bin").write_bytes(body)
    manifest = f"{hashlib.sha256(body).hexdigest()}  weights.bin\n"
    path = stack_file(
        tmp_path,
        "model-path",
        f'command = "{SHOW_MODEL}"',
        f'[model]\nuri = "weights"\nsha256 = "{hashlib.sha256(manifest.encode()).hexdigest()}"',
    )
    stack = Stack.load(path)
    try:
        up(stack)
        assert (tmp_path / "seen-model").read_bytes() == b"\x00demand-v3"
        ran = workload_record(stack)["model"]
        assert ran["downloaded"] is True and ran["files"] == 1 and ran["uri"] == str(tmp_path / "weights")
    finally:
        stack.down()


def test_a_gcs_model_is_fetched_verified_and_not_downloaded_again_on_restart(tmp_path, emulator):
    data = os.urandom(300_000)
    generation = emulator.upload("models", "demand/v3/weights.bin", data)["generation"]
    path = stack_file(
        tmp_path,
        "model-gcs",
        f'command = "{SHOW_MODEL}"',
        f'[model]\nuri = "gs://models/demand/v3/weights.bin"\nsha256 = "{hashlib.sha256(data).hexdigest()}"',
    )
    stack = Stack.load(path)
    try:
        up(stack)
        assert (tmp_path / "seen-model").read_bytes() == data
        first = workload_record(stack)["model"]
        assert first["downloaded"] is True and first["generation"] == str(generation)
        cached = next(stack.workspace.root.glob("models/*/model/weights.bin"))
        inode = cached.stat().st_ino
        stack.replace_nodes(["local-0"])  # what heal does: the node is destroyed and created again
        again = workload_record(stack)["model"]
        assert again["downloaded"] is False and again["generation"] == first["generation"]
        assert cached.stat().st_ino == inode  # the same file: nothing was written
        assert "model: gs://models/demand/v3/weights.bin is cached" in Path(stack.status().nodes[0].log).read_text()
        # A new generation of the object is a new model: downloaded, and the server sees it.
        emulator.upload("models", "demand/v3/weights.bin", b"v4")
        stack.down()
        with pytest.raises(EngineError, match="checksum mismatch: model.sha256 is "):
            up(stack)
    finally:
        stack.down()


def test_a_gcs_prefix_is_checked_against_its_manifest_and_a_bad_checksum_fails_up(tmp_path, emulator):
    emulator.upload("models", "ranker/config.json", b'{"k": 3}')
    emulator.upload("models", "ranker/weights.bin", b"\x01\x02")
    manifest = "".join(
        f"{hashlib.sha256(body).hexdigest()}  {name}\n"
        for name, body in (("config.json", b'{"k": 3}'), ("weights.bin", b"\x01\x02"))
    )
    good = hashlib.sha256(manifest.encode()).hexdigest()
    path = stack_file(
        tmp_path,
        "model-bad",
        f'command = "{SHOW_MODEL}"',
        f'[model]\nuri = "gs://models/ranker/"\nsha256 = "{"0" * 64}"',
    )
    stack = Stack.load(path)
    try:
        with pytest.raises(EngineError) as info:
            up(stack)
        assert (
            f"node local-0: model gs://models/ranker/: checksum mismatch: model.sha256 is {'0' * 64}, "
            f"the download's is {good}" in str(info.value)
        )
        assert not list(stack.workspace.root.glob("models/*/model"))  # nothing unverified is kept
        path.write_text(path.read_text().replace("0" * 64, good))
        stack = Stack.load(path)
        up(stack)
        assert (tmp_path / "seen-model").read_bytes() == b"\x01\x02"
        assert workload_record(stack)["model"]["files"] == 2
    finally:
        stack.down()


def test_a_missing_gcs_object_fails_up_naming_it(tmp_path, emulator):
    path = stack_file(tmp_path, "model-none", f'command = "{HTTP_SERVER}"', '[model]\nuri = "gs://models/nope/"')
    stack = Stack.load(path)
    try:
        with pytest.raises(EngineError, match="model gs://models/nope/: no such object or prefix"):
            up(stack)
    finally:
        stack.down()


# -- the container -----------------------------------------------------------------------------------

ENGINE = f"""#!{sys.executable}
# A stand-in for `podman`/`docker` (containers cannot run here): records its argv and the values of
# the --env names it was given, then serves HTTP on the published port as the container would.
import json, os, sys
argv = sys.argv[1:]
names = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
open(os.path.join(os.path.dirname(__file__), "engine-argv.json"), "w").write(json.dumps({{"argv": argv, "env": {{n: os.environ.get(n) for n in names}}}}))
if argv[0] == "rm":
    sys.exit(0)
port = argv[argv.index("--publish") + 1].rsplit(":", 1)[1]
os.execv(sys.executable, [sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1"])
"""


def test_an_image_runs_with_its_exact_argv_values_passed_by_name(tmp_path, monkeypatch):
    engine = tmp_path / "podman"
    engine.write_text(ENGINE)
    engine.chmod(0o755)
    monkeypatch.setenv("MLINFRA_CONTAINER_ENGINE", str(engine))
    monkeypatch.setenv("HF_TOKEN_SOURCE", "hf_s3cr3t")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(b"w")
    image = "ghcr.io/acme/ranker:v1"
    path = stack_file(
        tmp_path,
        "image",
        f'''image = "{image}"
        command = "--model /models/ranker --max-len '2 048'"
        env = {{ MODE = "$(id)" }}
        secrets = {{ HF_TOKEN = "env:HF_TOKEN_SOURCE" }}''',
        '[model]\nuri = "weights"\ndir = "/models/ranker"',
    )
    stack = Stack.load(path)
    notes = stack.driver.notes(stack.spec, stack.placement)
    assert notes == [
        f"warning: serve.image {image!r} has no digest, so this deployment is not reproducible: "
        "pin it as 'ghcr.io/acme/ranker@sha256:<digest>'"
    ]
    try:
        up(stack)
        seen = json.loads((tmp_path / "engine-argv.json").read_text())
        port = stack.status().nodes[0].endpoint.rsplit(":", 1)[1]
        cache = str(next(stack.workspace.root.glob("models/*/model")))
        assert seen["argv"] == [
            "run",
            "--rm",
            "--name",
            "mlinfra-image-local-0",
            "--publish",
            f"127.0.0.1:{port}:{port}",
            "--env",
            "HF_TOKEN",
            "--env",
            "MODE",
            "--env",
            "MODEL_DIR",
            "--env",
            "PORT",
            "--env",
            "PYTHONUNBUFFERED",
            "--volume",
            f"{cache}:/models/ranker:ro",
            image,
            "--model",
            "/models/ranker",
            "--max-len",
            "2 048",
        ]
        assert seen["env"] == {
            "HF_TOKEN": "hf_s3cr3t",
            "MODE": "$(id)",
            "MODEL_DIR": "/models/ranker",
            "PORT": port,
            "PYTHONUNBUFFERED": "1",
        }
        assert "hf_s3cr3t" not in json.dumps(workload_record(stack))  # the value is on no command line
        assert workload_record(stack)["image"] == image
    finally:
        stack.down()
    # `down` removed the container by name too (a daemon may outlive its client).
    assert json.loads((tmp_path / "engine-argv.json").read_text())["argv"] == ["rm", "-f", "mlinfra-image-local-0"]


def test_an_image_without_an_engine_fails_up_saying_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLINFRA_CONTAINER_ENGINE", "no-such-engine")
    path = stack_file(tmp_path, "noengine", 'image = "busybox@sha256:' + "a" * 64 + '"')
    stack = Stack.load(path)
    assert stack.driver.notes(stack.spec, stack.placement) == []  # pinned: no warning
    try:
        with pytest.raises(MlinfraError, match="node local-0: serve.image needs no-such-engine on this machine"):
            up(stack)
    finally:
        stack.down()


def test_the_cli_prints_what_each_node_runs(tmp_path):
    path = stack_file(
        tmp_path,
        "shows",
        f'''command = "{HTTP_SERVER}"
        setup = ["true"]''',
    )
    try:
        done = subprocess.run(
            MLINFRA + ["up", "--yes", "--no-verify"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, done.stderr
        status = subprocess.run(MLINFRA + ["status"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert "shows-local-0 runs: command " in status.stdout and "setup ok (1 step(s))" in status.stdout
        data = json.loads(
            subprocess.run(
                MLINFRA + ["status", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=60
            ).stdout
        )
        assert data["nodes"][0]["workload"]["setup"] == {"steps": 1, "result": "ok"}
    finally:
        subprocess.run(MLINFRA + ["down", "--yes"], cwd=path.parent, capture_output=True, timeout=120)


def test_gpus_are_attached_the_way_each_engine_takes_them():
    """docker: --gpus all (the NVIDIA Container Toolkit's hook); podman: the CDI device name."""
    sys.path.insert(0, str(TEMPLATES / "node"))
    try:
        import workload
    finally:
        sys.path.pop(0)
    for engine, flags in (("/usr/bin/docker", ["--gpus", "all"]), ("/usr/bin/podman", ["--device", "nvidia.com/gpu=all"])):
        argv = workload.container_argv(engine, "img@sha256:" + "a" * 64, "n", 8000, ["PORT"], ["--x"], gpus=1)
        assert argv == [engine, "run", "--rm", "--name", "n", "--publish", "127.0.0.1:8000:8000", "--env", "PORT",
                        *flags, "img@sha256:" + "a" * 64, "--x"]
    assert "--gpus" not in workload.container_argv("docker", "img", "n", 8000, [], [], gpus=0)


def test_an_object_name_cannot_write_outside_the_cache(tmp_path, monkeypatch):
    """GCS object names are any text; one like "m/../../x" must not become a path outside the cache."""
    sys.path.insert(0, str(TEMPLATES / "node"))
    try:
        import workload
    finally:
        sys.path.pop(0)
    for name in ("../../escaped", "a//b", "/etc/x"):
        monkeypatch.setattr(workload, "gcs_objects", lambda uri, endpoint, token, name=name: ([(name, 1, "1", "u")], False))
        with pytest.raises(workload.WorkloadError, match="is not a safe relative path"):
            workload.fetch_model("gs://b/m/", "", str(tmp_path / "cache"), sys.stderr)
    assert not (tmp_path / "escaped").exists()
