"""Hostile input and interrupts get one line and the documented exit code, never a traceback
(issue: "Nothing lost, nothing hidden")."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

from helpers import HTTP_SERVER, write_stack
from typer.testing import CliRunner

from mlinfra import Stack
from mlinfra.cli import app
from mlinfra.errors import SpecError

runner = CliRunner()
MLINFRA = [sys.executable, "-m", "mlinfra"]


def test_a_stack_file_that_is_a_symlink_loop_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.toml").symlink_to("b.toml")
    (tmp_path / "b.toml").symlink_to("a.toml")
    result = runner.invoke(app, ["plan", "-f", "a.toml"])
    assert (result.exit_code, result.stderr) == (2, "error: a.toml: cannot read the stack file: Too many levels of "
                                                    "symbolic links\n")


def test_a_work_dir_location_that_cannot_be_written_is_bad_input(tmp_path, monkeypatch):
    # Root ignores permission bits, so make the work dir's place a file instead: mkdir fails the same way.
    write_stack(tmp_path, 'name = "blocked"\n')
    (tmp_path / ".mlinfra").write_text("not a directory\n")
    monkeypatch.chdir(tmp_path)
    for command in (["render"], ["plan"], ["up", "--yes"], ["check"]):
        result = runner.invoke(app, command)
        if command == ["check"]:  # check reports every item: the render item fails, with the reason
            assert result.exit_code == 1 and "cannot use " in result.stdout, result.output
            continue
        assert result.exit_code == 2, (command, result.output)
        assert result.stderr.startswith("error: cannot use ") and "as a work dir: Not a directory" in result.stderr
        assert result.stderr.count("\n") == 1


def test_ctrl_c_at_the_confirmation_prompt_exits_130(tmp_path):
    write_stack(tmp_path, f'name = "prompt"\n[local]\nregions = ["a"]\n[serve]\ncommand = "{HTTP_SERVER}"\n')
    pid, fd = pty.fork()
    if pid == 0:  # the child: mlinfra on a terminal, which asks before applying
        os.chdir(tmp_path)
        os.execv(sys.executable, MLINFRA + ["up", "--no-verify"])
    seen, deadline = b"", time.monotonic() + 60
    while b"Do you want to" not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            seen += os.read(fd, 4096)
    os.write(fd, b"\x03")  # Ctrl-C, as the terminal sends it
    reaped, status = 0, 0
    while time.monotonic() < deadline and not reaped:
        try:
            chunk = os.read(fd, 4096) if select.select([fd], [], [], 1)[0] else b""
        except OSError:
            chunk = b""
        seen += chunk
        if not chunk:
            reaped, status = os.waitpid(pid, os.WNOHANG)
    if not reaped:  # never hang the suite: a child still waiting at the deadline is a failure
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 130, text
    assert "interrupted at the prompt: nothing was changed" in text and "Traceback" not in text
    assert not (tmp_path / ".mlinfra" / "prompt" / "terraform.tfstate").exists()


def test_ctrl_c_while_the_cli_imports_exits_130(tmp_path):
    write_stack(tmp_path, 'name = "early"\n')
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "mlinfra", "plan"], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if b"typer" in line:  # in the middle of importing the CLI
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=30) == 130
    assert rest.rstrip().endswith(b"error: interrupted") and b"Traceback" not in rest


def test_a_held_local_lock_says_who_holds_it(tmp_path):
    stack = Stack.load(write_stack(tmp_path, 'name = "held"\n'))
    lock = stack.lock()
    lock.acquire("apply")
    try:
        result = runner.invoke(app, ["up", "--yes", "-f", str(stack.path)])
    finally:
        lock.release()
    assert result.exit_code == 1
    assert f"hint: held by pid {os.getpid()} on this machine (still running)" in result.stderr
    assert "state unlock" not in result.stderr  # it could only answer "nothing to unlock"


def test_a_name_with_accents_gets_a_usable_suggestion():
    try:
        Stack(name="rel-ünï")
    except SpecError as exc:
        assert exc.message.endswith("— did you mean 'rel-uni'?")
    else:
        raise AssertionError("an invalid name was accepted")


def test_a_damaged_state_file_points_at_its_backup(tmp_path, deployed):
    stack = Stack.load(write_stack(tmp_path, f'name = "damaged"\n[local]\nregions = ["a"]\n[serve]\n'
                                             f'command = "{HTTP_SERVER}"\nhealth_path = "/"\n'))
    deployed(stack)
    stack.up(verify=False)
    stack.down()
    stack.up(verify=False)  # the backup now holds a good state
    state = stack.workdir / "terraform.tfstate"
    good = state.read_text()
    state.write_text('{"version": 4, "serial": ')
    try:
        result = runner.invoke(app, ["plan", "-f", str(stack.path)])
        assert result.exit_code == 1
        assert "terraform.tfstate.backup: check it, then copy it over terraform.tfstate" in result.stderr
    finally:
        state.write_text(good)


def test_a_state_endpoint_written_as_terraform_writes_it_is_accepted(tmp_path):
    for endpoint in ("http://127.0.0.1:4443", "http://127.0.0.1:4443/storage/v1/"):
        stack = Stack(name="ep", path=tmp_path / "mlinfra.toml",
                      state={"backend": "gcs", "bucket": "tf-state", "endpoint": endpoint})
        assert stack.backend.config()["storage_custom_endpoint"] == "http://127.0.0.1:4443/storage/v1/"
        from mlinfra.state import gcs

        assert gcs.endpoint(stack.spec.state) == "http://127.0.0.1:4443"
    assert json.dumps(stack.backend.config())  # plain JSON, for backend.tfbackend.json
