"""Secrets by construction on the local target: a value given through [serve.secrets] (or sitting
in the operator's environment) reaches the server's environment and nothing else — not the work
dir, the state, the plan, an ejected module; the work dir is 0700 and its files 0600."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from helpers import HTTP_SERVER, write_stack
from typer.testing import CliRunner

from mlinfra import Stack
from mlinfra.cli import app

SECRET = "hf_s3cr3t-value-0123456789"
OPERATOR_TOKEN = "ya29.operator-token-that-must-not-leak"


def environ(pid: int) -> dict[str, str]:
    pairs = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def everything_under(path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


def test_a_secret_reaches_the_server_only(tmp_path, monkeypatch, deployed):
    monkeypatch.setenv("SOURCE_OF_HF_TOKEN", SECRET)
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", OPERATOR_TOKEN)  # the operator's own credentials
    path = write_stack(tmp_path, f"""
        name = "sec-local"
        [local]
        regions = ["a"]
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
        env = {{ MODEL = "demand-v3" }}
        secrets = {{ HF_TOKEN = "env:SOURCE_OF_HF_TOKEN" }}
    """)
    stack = Stack.load(path)
    deployed(stack)
    planned = CliRunner().invoke(app, ["plan", "--json", "-f", str(path)])
    assert planned.exit_code == 0, planned.output
    node = stack.up(verify=False).nodes[0]

    env = environ(node.pid)
    assert env["HF_TOKEN"] == SECRET and env["MODEL"] == "demand-v3"
    # Only what the stack declares, mlinfra's identity variables, a few basics (PWD: the shell sets it).
    basics = {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER", "LOGNAME", "PORT", "PWD",
              "PYTHONUNBUFFERED", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    assert set(env) - basics - {"HF_TOKEN", "MODEL"} <= {v for v in env if v.startswith("MLINFRA_")}
    assert "GOOGLE_OAUTH_ACCESS_TOKEN" not in env and "SOURCE_OF_HF_TOKEN" not in env

    ejected = tmp_path / "eject"
    stack.render(ejected)
    for where, text in [("the work dir", everything_under(stack.workdir)), ("the ejected module", everything_under(ejected)),
                        ("plan --json", planned.stdout.encode())]:
        assert SECRET.encode() not in text, where
        assert OPERATOR_TOKEN.encode() not in text, where
    assert b"env:SOURCE_OF_HF_TOKEN" in (stack.workdir / "terraform.tfvars.json").read_bytes()  # the reference only

    assert stat.S_IMODE(stack.workdir.stat().st_mode) == 0o700
    loose = [str(p.relative_to(stack.workdir)) for p in stack.workdir.rglob("*")
             if p.is_file() and stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert loose == []
    assert not (stack.workdir / "tfplan").exists()  # a saved plan holds every value: gone after use


def test_a_missing_secret_source_fails_up_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_THAT_IS_NOT_SET", raising=False)
    write_stack(tmp_path, f"""
        name = "sec-missing"
        [local]
        regions = ["a"]
        [serve]
        command = "{HTTP_SERVER}"
        secrets = {{ HF_TOKEN = "env:SOURCE_THAT_IS_NOT_SET" }}
    """)
    run = subprocess.run([sys.executable, "-m", "mlinfra", "up", "--yes", "--no-verify"], cwd=tmp_path,
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, env=os.environ.copy())
    try:
        assert run.returncode == 1
        assert "secret HF_TOKEN: the environment variable SOURCE_THAT_IS_NOT_SET is not set" in run.stderr
    finally:
        down = subprocess.run([sys.executable, "-m", "mlinfra", "down", "--yes"], cwd=tmp_path,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert down.returncode == 0, down.stderr
