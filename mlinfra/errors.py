"""The one error hierarchy. Every module may import this; it imports nothing.

An ``MlinfraError`` is an expected failure: the CLI prints its message on one
line and exits with ``exit_code`` (2 = bad input, 1 = the operation failed).
Anything else is a bug and keeps its traceback.
"""


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

    def __init__(self, key: str, message: str, *, source: str | None = None):
        self.key = key
        self.detail = message
        self.source = source
        prefix = f"{source}: " if source else ""
        where = f"{key}: " if key else ""
        super().__init__(f"{prefix}{where}{message}")

    def with_source(self, source: str) -> "SpecError":
        return SpecError(self.key, self.detail, source=source)


class UsageError(MlinfraError):
    """The command was called in a way that cannot work (bad input: exit 2)."""

    exit_code = 2


class EngineError(MlinfraError):
    """Terraform failed; the message is built from its diagnostics."""

    def __init__(self, message: str, *, diagnostics: list | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.diagnostics = diagnostics or []


class Interrupted(MlinfraError):
    """The user interrupted a running operation; state was saved by Terraform."""

    exit_code = 130
