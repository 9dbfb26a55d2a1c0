"""`mlinfra` and `python -m mlinfra`. Ctrl-C at any moment — even while the CLI's modules are
still importing — is an interrupt (exit 130, one line), never a traceback.

For the commands whose first step is a Terraform run, Terraform's process starts before anything
else loads, so that starting Terraform and starting mlinfra overlap (``engine.spawn``'s standby);
`up` and `down` then usually run without typer (``cli.fast``)."""

import sys

_RUN_TERRAFORM = frozenset({"up", "down", "plan"})
_FAST = frozenset({"up", "down"})


def main() -> None:
    try:
        command = sys.argv[1] if len(sys.argv) > 1 else ""
        if command in _RUN_TERRAFORM and "--help" not in sys.argv:
            from mlinfra.engine.spawn import start_standby

            start_standby()
        if command in _FAST:
            from mlinfra.cli.fast import run

            code = run(sys.argv[1:])
            if code is not None:
                raise SystemExit(code)
        from mlinfra.cli import app

        app()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
