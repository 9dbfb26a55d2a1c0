"""`mlinfra` and `python -m mlinfra`. Ctrl-C at any moment — even while the CLI's modules are
still importing — is an interrupt (exit 130, one line), never a traceback.

Start-up is most of what mlinfra adds to a Terraform run, so this entry point does three things
first (the library, ``import mlinfra``, does none of them):

- for the commands whose first step is a Terraform run, Terraform's process starts before
  anything else loads (``engine.spawn``'s standby), so that the two start-ups overlap;
- `up` and `down` parse their usual command lines without typer (``cli.fast``);
- the garbage collector stays off while modules load: what they build lives until exit, and
  collecting it is wasted work (~7 ms of collections during start-up, ~17 ms at exit).
"""

import atexit
import gc
import sys

_RUN_TERRAFORM = frozenset({"up", "down", "plan"})
_FAST = frozenset({"up", "down"})


def _loaded() -> None:
    """Start-up is over: what exists now lives until exit; collect only what comes after."""
    gc.freeze()
    gc.enable()


def main() -> None:
    try:
        if sys.argv[1:2] == ["serve"]:  # the reference server needs none of the CLI (Typer, click)
            from mlinfra.serve import main_process

            main_process(sys.argv[2:])  # a long-lived process: none of the start-up tricks below
        gc.disable()
        atexit.register(gc.freeze)  # registered first, so it runs last: no final collection either
        command = sys.argv[1] if len(sys.argv) > 1 else ""
        usual = "--help" not in sys.argv
        if command in _RUN_TERRAFORM and usual:
            from mlinfra.engine.spawn import start_standby

            start_standby()
        if command in _FAST and usual:
            import mlinfra.api  # noqa: F401 (what up and down load first)
            from mlinfra.cli.fast import run

            _loaded()
            code = run(sys.argv[1:])
            if code is not None:
                raise SystemExit(code)
        from mlinfra.cli import app

        _loaded()
        app()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
