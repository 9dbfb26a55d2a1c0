"""`mlinfra up` and `down` without typer (cli.fast): the same options, parsed to the same values as
the typer commands, the same messages and exit codes; anything unusual is left to typer."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import HTTP_SERVER, write_stack
from typer.main import get_command
from typer.testing import CliRunner

from mlinfra.cli import app, fast, lifecycle

runner = CliRunner()
MLINFRA = [sys.executable, "-m", "mlinfra"]


def typer_options(command: str) -> dict[str, tuple[str, bool, str | None]]:
    """Each option string of the typer command → (parameter, is a flag, environment variable)."""
    found = {}
    for param in get_command(app).commands[command].params:
        for opt in param.opts + param.secondary_opts:
            found[opt] = (param.name, param.is_flag, param.envvar)
    return found


@pytest.mark.parametrize("command", ["up", "down"])
def test_the_fast_path_knows_exactly_the_typer_commands_options(command):
    ours = {opt: (param, param not in fast.VALUED, fast.ENV_VAR if param == "env" else None)
            for opt, param in fast.OPTIONS[command].items()}
    assert ours == {opt: spec for opt, spec in typer_options(command).items() if opt != "--help"}
    defaults = {p.name: p.default for p in get_command(app).commands[command].params if p.name != "help"}
    assert defaults["file"] == fast.DEFAULT_FILE


def typer_values(monkeypatch, argv: list[str]) -> dict:
    """The values the typer command hands to cli.lifecycle for ``argv``."""
    seen = {}

    def recorder(function):
        def record(*args):
            seen.update(inspect.signature(function).bind(*args).arguments)
            return 0
        return record

    monkeypatch.setattr("mlinfra.cli.stack.run_up", recorder(lifecycle.run_up))
    monkeypatch.setattr("mlinfra.cli.stack.run_down", recorder(lifecycle.run_down))
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    return seen


@pytest.mark.parametrize("argv", [
    ["up"],
    ["up", "--yes", "--no-wait"],
    ["up", "-f", "x.toml", "-e", "prod", "-y", "--json", "--no-verify", "--junit", "j.xml", "--no-zone-fallback"],
    ["up", "--file=dir/x.toml", "--env=dev", "--junit=out/j.xml"],
    ["up", "--no-wait", "--file", "x.toml", "--yes"],
    ["down"],
    ["down", "-y", "--force", "--json", "-f", "x.toml"],
    ["down", "--env", "staging", "--yes"],
])
@pytest.mark.parametrize("env_var", [None, "", "from-env"])
def test_the_fast_path_parses_a_command_line_as_typer_does(monkeypatch, argv, env_var):
    if env_var is not None:
        monkeypatch.setenv("MLINFRA_ENV", env_var)
    expected = typer_values(monkeypatch, argv)
    assert fast.parse(argv[0], argv[1:]) == expected
    assert isinstance(expected["file"], Path)


@pytest.mark.parametrize("argv", [
    ["up", "--help"], ["up", "--bogus"], ["up", "-y", "-y"], ["up", "-y", "--yes"], ["up", "-f"], ["up", "--file="],
    ["up", "-fx.toml"], ["up", "-f", "-y"], ["up", "--yes=1"], ["up", "extra"], ["up", "--", "-y"], ["up", "-yf", "x"],
    ["down", "--no-wait"], ["down", "--junit", "j.xml"], ["plan"], ["status"],
])
def test_anything_unusual_is_left_to_typer(argv):
    assert fast.parse(argv[0], argv[1:]) is None
    assert fast.run(argv) is None


def mlinfra(cwd, *args):
    return subprocess.run(MLINFRA + list(args), cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=120)


def test_errors_on_the_fast_path_read_as_on_typers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (["up", "--yes", "-f", "missing.toml"], ["down", "--yes", "-f", "missing.toml"]):
        done = mlinfra(tmp_path, *argv)
        typed = runner.invoke(app, argv)
        assert (done.returncode, done.stderr) == (typed.exit_code, typed.stderr) == (2, typed.stderr)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    write_stack(tmp_path, f'name = "kept"\nprotected = true\n[local]\nregions = ["a"]\n[serve]\ncommand = "{HTTP_SERVER}"\n')
    done = mlinfra(tmp_path, "down", "--yes")
    assert (done.returncode, done.stderr) == (2, runner.invoke(app, ["down", "--yes"]).stderr)
    done = mlinfra(tmp_path, "up", "--yes", "--bogus")  # typer's own message for what the fast path leaves to it
    assert done.returncode == 2 and "No such option: --bogus" in done.stderr


def test_up_and_down_on_the_fast_path(tmp_path):
    write_stack(tmp_path, f'name = "quick"\n[local]\nregions = ["a"]\n[serve]\ncommand = "{HTTP_SERVER}"\n'
                          'health_path = "/"\n')
    try:
        up = mlinfra(tmp_path, "up", "-y", "--no-verify")  # http.server answers no POST: no latency check
        assert up.returncode == 0, up.stderr
        assert "Plan: 1 to add, 0 to change, 0 to destroy." in up.stderr and "Applied in" in up.stderr
        assert "quick-a-0" in up.stdout and "ready" in up.stdout
        again = mlinfra(tmp_path, "up", "--yes", "--no-wait")
        assert again.returncode == 0 and "No changes: the stack matches its file." in again.stderr
    finally:
        down = mlinfra(tmp_path, "down", "--yes", "--json")
    assert down.returncode == 0, down.stderr
    assert '"destroyed": true' in down.stdout


def test_a_reader_that_went_away_is_exit_1_quietly_as_with_typer(tmp_path):
    write_stack(tmp_path, f'name = "gone"\n[local]\nregions = ["a"]\n[serve]\ncommand = "{HTTP_SERVER}"\n')
    for argv in (["down", "--yes", "--json"], ["down", "--yes", "--json", "--"]):  # fast, then typer's ("--")
        assert (fast.parse("down", argv[1:]) is None) == ("--" in argv)
        proc = subprocess.Popen(MLINFRA + argv, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # nobody reads the JSON
        assert (proc.wait(timeout=120), proc.stderr.read()) == (1, ""), argv
        proc.stderr.close()
