"""One lock per stack, held for a whole operation (plan + confirm + apply).

Terraform locks state per command, so between mlinfra's ``plan`` and its
``apply`` another ``up`` could slip in. mlinfra therefore takes the stack's
lock itself, for the whole operation, and runs Terraform with ``-lock=false``.

- local state: an advisory ``flock`` on ``<workdir>/.lock`` (the OS drops it
  when the holder dies, even by ``kill -9``), with the holder's info inside.
- GCS state: the very object Terraform's ``gcs`` backend uses,
  ``<prefix>/default.tflock``, created only if absent, holding Terraform's
  LockInfo JSON; its generation is the lock ID. So plain ``terraform`` sees
  mlinfra's lock and the other way round, and ``terraform force-unlock ID``
  (or ``mlinfra state unlock``) clears it. A crashed holder leaves it behind,
  by design: someone must look before state is touched again.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from mlinfra.errors import LockHeld, MlinfraError  # noqa: F401 (LockHeld re-exported)
from mlinfra.workspace import LOCK, private_dir, workdir_mutex  # noqa: F401 (workdir_mutex re-exported)


def _random_uuid() -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` makes it, without
    importing ``uuid``, which loads ``platform`` (~5 ms of every `up` and `down`)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return raw.hex()


@dataclass(frozen=True)
class LockInfo:
    """Terraform's statemgr.LockInfo, field for field (that is what goes into the lock object)."""

    ID: str
    Operation: str
    Who: str
    Version: str
    Created: str  # RFC 3339, UTC
    Path: str = ""
    Info: str = ""

    @classmethod
    def new(cls, operation: str, path: str = "") -> LockInfo:
        from mlinfra import __version__
        from mlinfra.timeutil import utc_now

        created = utc_now(precise=True)
        return cls(
            ID=_random_uuid(),
            Operation=operation,
            Who=f"{getpass.getuser()}@{socket.gethostname()}",
            Version=f"mlinfra {__version__}",
            Created=created,
            Path=path,
            Info=f"pid {os.getpid()}",
        )

    @classmethod
    def unknown(cls, who: str = "unknown") -> LockInfo:
        """A holder that left no readable record (only that the lock is held is known)."""
        return cls("?", "unknown operation", who, "", "")

    @classmethod
    def from_json(cls, text: str) -> LockInfo:
        data = json.loads(text)
        return cls(**{name: str(data.get(name) or "") for name in cls.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    def age_s(self) -> float | None:
        try:
            created = dt.datetime.fromisoformat(self.Created.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (dt.datetime.now(dt.UTC) - created).total_seconds()

    def describe(self) -> str:
        age = self.age_s()
        held = f", held for {age:.0f}s" if age is not None else ""
        return f"{self.Operation} by {self.Who} since {self.Created}{held} (lock ID {self.ID})"


def _local_hint(holder: LockInfo) -> str:
    """A local lock is an flock: the OS drops it when its holder exits, so there is nothing to
    unlock, only a process to wait for. Say which, and whether it still runs."""
    pid = holder.Info.removeprefix("pid ")
    if not pid.isdigit():
        return "wait for the other command on this stack to finish"
    try:
        os.kill(int(pid), 0)
        state = "still running"
    except ProcessLookupError:
        state = "exited; try again"
    except PermissionError:
        state = "still running (another user)"
    return f"held by pid {pid} on this machine ({state}); the lock goes with that process"


class LocalLock:
    """An exclusive ``flock`` on ``<workdir>/.lock``; non-blocking: a held lock is an error at once."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / LOCK
        self._fd: int | None = None

    def acquire(self, operation: str) -> LockInfo:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = self.holder() or LockInfo.unknown("another process")
            raise LockHeld(holder, hint=_local_hint(holder)) from None
        info = LockInfo.new(operation, str(self.path))
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.to_json().encode(), 0)
        self._fd = fd
        return info

    def fds(self) -> tuple[int, ...]:
        """The open lock file, for a child that must hold the lock as long as it runs."""
        return (self._fd,) if self._fd is not None else ()

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> LockInfo | None:
        """Who holds the lock now, or None when it is free."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None  # nobody holds it
            except BlockingIOError:
                text = os.pread(fd, 65536, 0).decode("utf-8", "replace")
                try:
                    return LockInfo.from_json(text)
                except (ValueError, TypeError):
                    return LockInfo.unknown("another process")
        finally:
            os.close(fd)

    def force_release(self, lock_id: str) -> None:
        raise MlinfraError("a local lock is released by the OS when its holder exits; nothing to unlock")


class GcsLock:
    """Terraform's own GCS lock object, taken for the whole operation."""

    def __init__(self, state, prefix: str, project: str = ""):
        from mlinfra.state import gcs

        self.state, self.project = state, project
        self.name = gcs.lock_object(prefix)
        self.url = f"gs://{state.bucket}/{self.name}"
        self._generation: int | None = None

    def fds(self) -> tuple[int, ...]:
        return ()  # an object in the bucket: nothing to hand on

    def _blob(self):
        from mlinfra.state import gcs

        return gcs.client(self.state, self.project).bucket(self.state.bucket).blob(self.name)

    def acquire(self, operation: str) -> LockInfo:
        from google.api_core.exceptions import PreconditionFailed

        from mlinfra.state import gcs

        info = LockInfo.new(operation, self.url)
        blob = self._blob()
        with gcs.errors(self.state, "taking the state lock"):
            try:
                blob.upload_from_string(
                    info.to_json(),
                    content_type="application/json",
                    if_generation_match=0,
                    retry=gcs.retry(),
                    timeout=gcs.DEADLINE_S,
                )
            except PreconditionFailed:
                raise LockHeld(self.holder() or LockInfo.unknown()) from None
        self._generation = blob.generation
        return LockInfo(**{**info.__dict__, "ID": str(blob.generation)})

    def release(self) -> None:
        if self._generation is None:
            return
        from mlinfra.state import gcs

        with gcs.errors(self.state, "releasing the state lock"):
            self._blob().delete(if_generation_match=self._generation, retry=gcs.retry(), timeout=gcs.DEADLINE_S)
        self._generation = None

    def holder(self) -> LockInfo | None:
        from google.api_core.exceptions import NotFound

        from mlinfra.state import gcs

        with gcs.errors(self.state, "reading the state lock"):
            bucket = gcs.client(self.state, self.project).bucket(self.state.bucket)
            try:
                blob = bucket.get_blob(self.name, retry=gcs.retry(), timeout=gcs.DEADLINE_S)
                if blob is None:
                    return None
                text = blob.download_as_text(retry=gcs.retry(), timeout=gcs.DEADLINE_S)
            except NotFound:
                return None
        try:
            info = LockInfo.from_json(text)
        except (ValueError, TypeError):
            info = LockInfo.unknown()
        # Like Terraform: the object's generation is the lock's ID.
        return LockInfo(**{**info.__dict__, "ID": str(blob.generation)})

    def force_release(self, lock_id: str) -> None:
        """Delete the lock object, only if it is still the lock the user saw (same generation)."""
        from google.api_core.exceptions import NotFound, PreconditionFailed

        from mlinfra.state import gcs

        with gcs.errors(self.state, "removing the state lock"):
            try:
                self._blob().delete(if_generation_match=int(lock_id), retry=gcs.retry(), timeout=gcs.DEADLINE_S)
            except (PreconditionFailed, NotFound):
                raise MlinfraError(f"the lock changed since it was shown (ID {lock_id} is gone); look again") from None
