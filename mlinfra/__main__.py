"""`mlinfra` and `python -m mlinfra`. Ctrl-C at any moment — even while the CLI's modules are
still importing — is an interrupt (exit 130, one line), never a traceback."""

import sys


def main() -> None:
    try:
        if sys.argv[1:2] == ["serve"]:  # the reference server needs none of the CLI (Typer, click)
            from mlinfra.serve import main_process

            main_process(sys.argv[2:])
        from mlinfra.cli import app

        app()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
