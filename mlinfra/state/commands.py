"""`mlinfra state ...` as methods of ``api.Stack``: the state bucket, the state document, its
history, restoring an old version, and removing a dead holder's lock. A mixin, so the API stays
one ``Stack`` while this concern stays in its own module."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlinfra.errors import Aborted

if TYPE_CHECKING:
    from mlinfra.state.lock import LockInfo


class StateCommands:
    """Needs the host's ``_operation`` (lock + rendered engine) and ``lock()``."""

    _operation: Any
    lock: Any

    def state_bootstrap(self) -> Any:
        """Create (or check) the GCS state bucket; see ``mlinfra.state.remote.bootstrap``."""
        from mlinfra.state import remote

        return remote.bootstrap(self)

    def state_pull(self) -> dict:
        """The current state document (what ``terraform state pull`` prints)."""
        with self._operation("state pull") as engine:
            return engine.state_pull()

    def state_history(self) -> Any:
        """The stored versions of the state object, newest first (GCS with versioning)."""
        from mlinfra.state import remote

        return remote.history(self)

    def state_restore(self, generation: int, *, confirm: Callable | None = None) -> Any:
        """Make an old state generation current again, after ``confirm(RestorePlan)``."""
        from mlinfra.state import remote

        with self._operation("state restore") as engine:
            current = engine.state_pull()
            plan = remote.plan_restore(self, generation, current)
            if confirm is not None and not confirm(plan):
                raise Aborted("aborted: the state was not changed")
            engine.state_push(remote.restored_state(self, generation, current), f"restore-{generation}.tfstate")
        return plan

    def state_unlock(self, *, confirm: Callable[[LockInfo], bool] | None = None) -> LockInfo | None:
        """Remove a stale lock (its holder died) after ``confirm(holder)``; None if unlocked."""
        lock = self.lock()
        holder = lock.holder()
        if holder is None:
            return None
        if confirm is not None and not confirm(holder):
            raise Aborted("aborted: the lock was left in place")
        lock.force_release(holder.ID)
        return holder
