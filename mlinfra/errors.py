"""The one error hierarchy. Every module may import this; it imports nothing.

An ``MlinfraError`` is an expected failure: the CLI prints its message on one
line (and its hint on the next) and exits with ``exit_code``: 2 = bad input,
nothing was run or written; 1 = the operation failed; 130 = interrupted.
Anything else is a bug and keeps its traceback.

    MlinfraError
    ├── SpecError           the stack file or a stack value is invalid        (2)
    │   └── UnknownGpu      a GPU name the catalog does not know or refuses   (2)
    ├── UsageError          a command called in a way that cannot work         (2)
    ├── Aborted             the user declined; nothing was changed             (1)
    ├── Interrupted         Ctrl-C / SIGTERM; Terraform saved its state        (130)
    ├── EngineError         Terraform failed (diagnostics attached)
    │   └── StateLocked     Terraform could not take the state lock
    ├── LockHeld            another operation holds the stack's lock
    ├── BucketUnreachable   the state bucket's endpoint does not answer
    ├── ParseError          nvidia-smi printed something that is not its CSV
    └── RunnerError         a check's command could not run on a node
        ├── CommandTimedOut
        └── SshError
"""

from __future__ import annotations

from typing import Any


class MlinfraError(Exception):
    """An expected failure with a message meant for the user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class SpecError(MlinfraError):
    """The stack file or a stack value is invalid (bad input: exit 2)."""

    exit_code = 2

    def __init__(self, key: str, message: str, *, source: str | None = None, hint: str | None = None):
        self.key = key
        self.detail = message
        self.source = source
        prefix = f"{source}: " if source else ""
        where = f"{key}: " if key else ""
        super().__init__(f"{prefix}{where}{message}", hint=hint)

    def with_source(self, source: str) -> SpecError:
        return SpecError(self.key, self.detail, source=source, hint=self.hint)

    def at(self, key: str) -> SpecError:
        """The same error, placed at a key path of the stack (``compute.gpu``)."""
        return SpecError(key, self.detail, source=self.source, hint=self.hint)


class UnknownGpu(SpecError):
    """A GPU name the catalog does not know, or one Google Cloud refuses (the message says which)."""

    def __init__(self, message: str):
        super().__init__("", message)


class UsageError(MlinfraError):
    """The command was called in a way that cannot work (bad input: exit 2)."""

    exit_code = 2


class Aborted(MlinfraError):
    """The user declined the plan; nothing was changed."""


class Interrupted(MlinfraError):
    """The user interrupted a running operation; state was saved by Terraform."""

    exit_code = 130


class EngineError(MlinfraError):
    """Terraform failed; the message is built from its diagnostics."""

    def __init__(self, message: str, *, diagnostics: list[Any] | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.diagnostics = diagnostics or []


class StateLocked(EngineError):
    """Terraform could not take the state lock (someone else holds it)."""


class LockHeld(MlinfraError):
    """Another operation holds the stack's lock; ``info`` is its ``LockInfo``."""

    def __init__(self, info: Any, *, hint: str | None = None):
        self.info = info
        super().__init__(
            f"state is locked: {info.describe()}",
            hint=hint or "wait for it to finish; if its holder died, run `mlinfra state unlock`",
        )


class BucketUnreachable(MlinfraError):
    """The state bucket's endpoint did not answer (a TCP check, in seconds)."""


class RunnerError(MlinfraError):
    """A check's command could not be run to completion on the node (the message says why)."""

    label = "cannot run"


class CommandTimedOut(RunnerError):
    label = "timed out"

    def __init__(self, message: str, *, timeout_s: float, stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.timeout_s, self.stdout, self.stderr = timeout_s, stdout, stderr


class SshError(RunnerError):
    """ssh could not connect, authenticate, or trust the host; ``label`` names the class."""

    def __init__(self, label: str, message: str, stderr: str = ""):
        super().__init__(message)
        self.label, self.stderr = label, stderr


class ParseError(MlinfraError):
    """nvidia-smi exited 0 but printed something that is not the CSV we asked for."""
