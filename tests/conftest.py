"""Fixtures every test shares: an isolated environment, and guaranteed teardown of stacks.

Helpers (paths, stack files, process checks) are in ``helpers.py``.
"""

from __future__ import annotations

import os
import signal
import stat

import pytest

from helpers import Emulator, stack_processes
from mlinfra import Stack

# What the caller's environment must not leak into a test: a CI step summary file, mlinfra's
# own switches, an emulator or Terraform CLI config meant for something else.
_LEAKS = ("GITHUB_STEP_SUMMARY", "STORAGE_EMULATOR_HOST", "TF_CLI_CONFIG_FILE")


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch):
    for name in list(os.environ):
        if name in _LEAKS or name.startswith("MLINFRA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def deployed():
    """Collects stacks a test brings up and always tears them down afterwards."""
    stacks: list[Stack] = []
    yield stacks.append
    for stack in stacks:
        stack.down(force=True)
        assert stack_processes(stack.name) == [], f"processes left behind by {stack.name}"


def pytest_configure(config):
    # Started as a background job (`make test &`), this process inherits SIGINT ignored, and so
    # would every mlinfra it starts: the Ctrl-C tests could then never interrupt anything.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/ from what the renderer produces now (review the diff!)")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


@pytest.fixture
def spy_terraform(tmp_path, monkeypatch):
    """A `terraform` that only records that it ran (MLINFRA_TERRAFORM): the marker file it returns
    exists once any Terraform command ran. Bad input, a refused budget and read-only listings
    must leave it absent."""
    marker = tmp_path / "terraform-ran"
    spy = tmp_path / "terraform"
    spy.write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 1\n')
    spy.chmod(spy.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("MLINFRA_TERRAFORM", str(spy))
    return marker


@pytest.fixture
def emulator(monkeypatch):
    """A real fake-gcs-server (helpers.Emulator), stopped after the test; no STORAGE_EMULATOR_HOST
    from outside leaks into what the test runs."""
    server = Emulator()
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    yield server
    server.stop()
