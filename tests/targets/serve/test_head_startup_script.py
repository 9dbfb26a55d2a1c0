"""templates/serve-gcp/head_startup.sh as an autoscaled stack's head VM runs it at each boot, with
its paths moved under a temporary root. The metadata server is the Google stand-in
(tests/standins/google.py), reached by the real curl through http_proxy, so curl's own --retry and
its partial-transfer failure are what the script meets; the head's config is what the stack
renders. apt-get, `python3 -m venv` (the venv's python is this interpreter), pip and ray are
stand-ins that record what they were asked. What is tested is the script's own logic: every file
goes in whole or not at all, a transient metadata error is retried, and Ray counts as installed
only once pip finished.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys

import pytest

from helpers import TEMPLATES, gcp_stack
from standins.google import Google

SCRIPT = TEMPLATES / "serve-gcp" / "head_startup.sh"
RAY = "ray[serve]==2.60.0"
POLICY = "import math\n\n\ndef scale(ctx):\n    return math.ceil(ctx.total_num_requests / 2), {}\n"

# The Serve app as the head imports it (PYTHONPATH=/opt/mlinfra): records each entry point it runs.
APP = (
    "import json, os, sys\n\n\n"
    "def main():\n"
    "    head = json.loads(os.environ['MLINFRA_HEAD'])\n"
    "    with open(os.environ['CALLS'], 'a') as calls:\n"
    "        calls.write(f\"app {sys.argv[1]} port={head['serve_port']}\\n\")\n"
    "    return 0\n"
)

# Each stand-in appends "NAME ARGS" to calls.log. `python3 -m venv DIR` makes DIR/bin/python (this
# interpreter), pip and ray (copied from $VENV_BIN); any other python3 call is this interpreter.
VENV_BIN = {
    "python": f'exec {sys.executable} "$@"\n',
    "pip": 'echo "pip $*" >>"$CALLS"\n[ ! -e "$ROOT/pip-fails" ]\n',
    "ray": 'echo "ray $*" >>"$CALLS"\n',
}
STANDINS = {
    "python3": 'if [ "${1:-}" = -m ] && [ "${2:-}" = venv ]; then\n'
               '  echo "python3 -m venv $3" >>"$CALLS"\n'
               '  mkdir -p "$3/bin"\n  cp -p "$VENV_BIN"/* "$3/bin/"\n  exit 0\nfi\n'
               f'exec {sys.executable} "$@"\n',
    "apt-get": 'echo "apt-get $*" >>"$CALLS"\n',
}


def executables(folder, scripts: dict[str, str]) -> None:
    folder.mkdir()
    for name, body in scripts.items():
        (folder / name).write_text("#!/bin/bash\n" + body)
        (folder / name).chmod(0o755)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict:
    """The head's config (metadata mlinfra-head) as an autoscaled stack with a custom policy renders it."""
    folder = tmp_path_factory.mktemp("stack")
    package = folder / "ray-gcp" / "head_policies"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tokens.py").write_text(POLICY)
    account = "ray-head@ml-demo-123456.iam.gserviceaccount.com"
    stack = gcp_stack(folder, "ray-gcp", compute={"gpu": "t4"}, serve={"ssh_cidrs": ["203.0.113.0/24"]},
                      gcp={"regions": ["us-central1"], "service_account": account},
                      autoscale={"min_replicas": 0, "max_replicas": 3, "policy": "head_policies.tokens:scale"})
    values = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())
    return values["heads"]["us-central1-0"]["config"]


@pytest.fixture
def head(tmp_path, config):
    """(root, google, script, config): the head's metadata, served by the stand-in."""
    google = Google.start(attributes={"mlinfra-head": json.dumps(config), "mlinfra-serve-app": APP,
                                      "mlinfra-mig-provider": "# mig_provider.py v2\n"})
    root = tmp_path / "root"
    root.mkdir()
    executables(tmp_path / "bin", STANDINS)
    executables(tmp_path / "venv-bin", VENV_BIN)
    # Every path the script writes, moved under root.
    text = re.sub(r"(?<![\w.])/(opt|etc|run|var)(?=/)", lambda m: f"{root}/{m[1]}", SCRIPT.read_text())
    for line in text.splitlines():  # nothing may reach this machine's own /opt, /etc or /run
        assert not re.search(r"(?<![\w.])/(opt|etc|run)/", line), line
    script = tmp_path / "head_startup.sh"
    script.write_text(text)
    yield root, google, script, config
    google.stop()


def boot(tmp_path, head) -> tuple[subprocess.CompletedProcess, list[str]]:
    root, google, script, _ = head
    calls = tmp_path / "calls.log"
    calls.unlink(missing_ok=True)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "ROOT": str(root), "CALLS": str(calls),
           "http_proxy": f"http://{google.address}", "HOME": str(tmp_path), "VENV_BIN": str(tmp_path / "venv-bin")}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    return done, calls.read_text().splitlines() if calls.exists() else []


def test_a_first_boot_writes_every_file_whole_and_starts_the_head(tmp_path, head):
    root, google, _, config = head
    done, calls = boot(tmp_path, head)
    assert done.returncode == 0, done.stderr
    opt = root / "opt" / "mlinfra"
    assert json.loads((opt / "head.json").read_text()) == config
    assert (opt / "mig_provider.py").read_text() == "# mig_provider.py v2\n"
    assert (opt / "mlinfra_serve_app.py").read_text() == APP
    autoscaler = json.loads((opt / "autoscaler.json").read_text())
    assert autoscaler == config["autoscaler"] | {
        "provider": config["autoscaler"]["provider"] | {"head_ip": google.network_ip}}
    assert (opt / "policy" / "head_policies" / "tokens.py").read_text() == POLICY
    assert calls[:2] == [f"python3 -m venv {opt}/venv", f"pip install -q {RAY}"]
    assert calls[2:] == [
        f"ray start --head --port=6379 --num-cpus=0 --include-dashboard=false --disable-usage-stats "
        f"--metrics-export-port={config['metrics_port']} --autoscaling-config={opt}/autoscaler.json",
        f"app deploy port={config['serve_port']}",
    ]
    assert not list(root.rglob("*.new"))
    # What `mlinfra status` runs over SSH: executable, and it reaches the app's status entry point.
    status = opt / "status"
    assert stat.S_IMODE(status.stat().st_mode) == 0o755
    ran = subprocess.run([str(status)], env={"PATH": "/usr/bin:/bin", "CALLS": str(tmp_path / "status.log")},
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert (tmp_path / "status.log").read_text() == f"app status port={config['serve_port']}\n"


def test_transient_metadata_errors_are_retried(tmp_path, head):
    """The metadata server answers 503 while it is unavailable: each read tries again (curl --retry)."""
    google = head[1]
    google.flaky = {"mlinfra-head": [503, 503], "network-interfaces/0/ip": [503]}
    done, calls = boot(tmp_path, head)
    assert done.returncode == 0, done.stderr
    assert google.reads.count("mlinfra-head") == 3 and google.reads.count("network-interfaces/0/ip") == 2
    assert json.loads((head[0] / "opt" / "mlinfra" / "autoscaler.json").read_text())["provider"]["head_ip"] == (
        google.network_ip)
    assert calls[-1].startswith("app deploy")


def test_metadata_lost_midway_keeps_the_previous_file_whole(tmp_path, head):
    """A reboot's read of head.json that breaks off leaves last boot's file, not half of the new one."""
    root, google = head[0], head[1]
    opt = root / "opt" / "mlinfra"
    opt.mkdir(parents=True)
    (opt / "head.json").write_text('{"v": 1}\n')
    google.cut = {"mlinfra-head"}
    done, calls = boot(tmp_path, head)
    assert done.returncode != 0
    assert "mlinfra: cannot read instance metadata mlinfra-head" in done.stderr
    assert f"mlinfra: head startup failed while reading instance metadata mlinfra-head into {opt}/head.json" in (
        done.stderr)
    assert (opt / "head.json").read_text() == '{"v": 1}\n'
    assert not list(root.rglob("*.new")) and calls == []  # it stopped there: no venv, no Ray


def test_ray_counts_as_installed_only_once_pip_finished(tmp_path, head):
    """A reboot during pip (here: pip fails) leaves a venv with a python but without all of Ray:
    the next boot builds it again, and a boot after a finished install does not."""
    root = head[0]
    venv = root / "opt" / "mlinfra" / "venv"
    (root / "pip-fails").write_text("")
    done, calls = boot(tmp_path, head)
    assert done.returncode != 0 and f"head startup failed while installing {RAY}" in done.stderr
    assert (venv / "bin" / "python").exists() and not (venv / ".mlinfra-installed").exists()
    assert not [call for call in calls if call.startswith("ray ")]

    (root / "pip-fails").unlink()
    (venv / "half-installed").write_text("")
    done, calls = boot(tmp_path, head)
    assert done.returncode == 0, done.stderr
    assert calls[:2] == [f"python3 -m venv {venv}", f"pip install -q {RAY}"]
    assert not (venv / "half-installed").exists()  # built again from nothing
    assert (venv / ".mlinfra-installed").read_text() == RAY + "\n"

    done, calls = boot(tmp_path, head)
    assert done.returncode == 0, done.stderr
    assert not [call for call in calls if call.startswith(("pip ", "python3 "))]
    assert calls[-1].startswith("app deploy")


def test_the_head_writes_no_file_in_place():
    """Every redirection to a file under /opt/mlinfra goes to NAME.new (then renamed), and every
    metadata read is curl with --retry (none through Python's urllib, which does not retry)."""
    text = SCRIPT.read_text()
    for target in re.findall(r">\s*\"?(/opt/mlinfra/[^\s\"]+)", text):
        assert target.endswith(".new"), target
    assert "write_text(" not in text.replace("new.write_text(text)", "")
    assert "urllib" not in text
    for script in (SCRIPT, TEMPLATES / "gcp" / "startup.sh"):
        curls = [line for line in script.read_text().splitlines() if re.search(r"\bcurl\b", line)]
        assert curls and all("--retry" in line for line in curls), script


def shell_function(text: str, name: str) -> str:
    match = re.search(rf"^{name}\(\) {{\n.*?^}}\n", text, re.S | re.M)
    assert match, name
    return match[0]


@pytest.mark.parametrize("name", ["metadata", "fetch_file"])
def test_the_head_reads_metadata_as_a_nodes_startup_does(name):
    """One snippet, two scripts: each is shipped on its own (Terraform's file()), so the text is
    repeated, and kept the same here."""
    head, node = SCRIPT.read_text(), (TEMPLATES / "gcp" / "startup.sh").read_text()
    assert shell_function(head, name) == shell_function(node, name)
