"""How a check runs a command on a node: here (``LocalRunner``), or over SSH (``ssh.SshRunner``).

A runner returns the command's exit status and output, or raises ``RunnerError`` when it could
not run it to completion (a timeout kills the command's whole process group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import NamedTuple, Protocol

from mlinfra.errors import CommandTimedOut


class RunResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    def run(self, argv: list[str], timeout_s: float) -> RunResult: ...


# After a timeout we kill the process group and wait this long at most: a process stuck in the
# driver (uninterruptible sleep) ignores even SIGKILL, and the check must still return.
_REAP_S = 2.0


def run_argv(argv: list[str], timeout_s: float) -> RunResult:
    """Run ``argv`` (no shell) with a hard timeout; raise CommandTimedOut when it is exceeded."""
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # Its own session: killing the group also stops children that hold the pipes open.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        try:
            stdout, stderr = process.communicate(timeout=_REAP_S)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", ""
        raise CommandTimedOut(
            f"{argv[0]} did not finish within {timeout_s:g} s",
            timeout_s=timeout_s,
            stdout=stdout or "",
            stderr=stderr or "",
        ) from None
    return RunResult(process.returncode, stdout, stderr)


class LocalRunner:
    """Runs the command on this machine (the local target)."""

    def run(self, argv: list[str], timeout_s: float) -> RunResult:
        try:
            return run_argv(argv, timeout_s)
        except FileNotFoundError:
            # What a shell would say, so a missing binary is diagnosed the same way locally and over SSH.
            return RunResult(127, "", f"{argv[0]}: command not found\n")
        except PermissionError as exc:
            return RunResult(126, "", f"{argv[0]}: {exc.strerror}\n")
