"""The Python API: a ``Stack`` you can render, plan, bring up, verify, inspect and tear down.

A ``Stack`` wraps the validated stack file (``stack.spec``, a ``StackSpec``) and composes
what operating it takes: its target's driver (``targets/<name>``), its work dir
(``Workspace``), its state backend (``state``) and, per command, the Terraform engine.
The stack file's values read through: ``stack.compute`` is ``stack.spec.compute`` (all but
``verify``, which is the verification method; the settings are ``stack.spec.verify``).

Every method returns a result and never prints. Progress goes to an optional ``on_event``
(``engine.events.Progress``); ``confirm(plan summary)`` is asked before a change — without
one, nobody reviews, and one Terraform run plans and applies.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra import nodes as node_probe
from mlinfra import state
from mlinfra.engine.events import PlanSummary, Progress
from mlinfra.errors import Aborted, EngineError, MlinfraError, StateLocked, UsageError
from mlinfra.ops import cost as spending
from mlinfra.ops.recovery import apply_with_recovery
from mlinfra.render import RenderResult, render
from mlinfra.results import DownResult, PlanResult, StatusResult, UpResult
from mlinfra.spec import StackSpec
from mlinfra.state.commands import StateCommands
from mlinfra.workspace import Workspace

if TYPE_CHECKING:  # only for annotations: verify loads when a command verifies
    from mlinfra.engine import Terraform
    from mlinfra.verify import VerifyReport
    from mlinfra.verify.result import CheckResult

__all__ = ["Aborted", "DownResult", "PlanResult", "Stack", "StatusResult", "UpResult"]

Confirm = Callable[[PlanSummary], bool]
Migrate = Callable[[str, str], bool]  # (old backend, new backend) -> copy the state across?
OnEvent = Callable[[Progress], None]
OnResult = Callable[["CheckResult"], None]

_SPEC_NAMES = frozenset({f.name for f in fields(StackSpec)} - {"verify"} | {"regions", "workdir"})  # read through


class Stack(StateCommands):
    """A validated stack plus the operations on it. ``Stack(spec)``, ``Stack(name=..., ...)``
    (the fields of ``StackSpec``) or ``Stack.load(path)``."""

    def __init__(self, spec: StackSpec | None = None, /, **values: Any):
        if spec is None:
            spec = StackSpec(**values)
        elif values:
            raise TypeError("Stack(spec) or Stack(**values), not both")
        self.spec = spec
        self.driver = spec.driver
        self.workspace = Workspace(spec.workdir)
        self.backend = state.backend(spec, self.workspace)

    @classmethod
    def load(cls, path: str | Path, env: str | None = None) -> Stack:
        """Read and validate a stack file (``env``: one of its ``[env.<name>]`` environments)."""
        return cls(StackSpec.load(path, env))

    def __getattr__(self, name: str) -> Any:
        if name in _SPEC_NAMES:
            return getattr(self.__dict__["spec"], name)
        raise AttributeError(f"'Stack' object has no attribute {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stack) and self.spec == other.spec

    __hash__ = None  # type: ignore[assignment]  # like the spec: equal by value, so unhashable

    def __repr__(self) -> str:
        return f"Stack({self.spec!r})"

    @property
    def placement(self) -> Any:
        """Where the nodes go (``targets.base.Placement``), resolved once when the stack was built."""
        return self.spec.placement

    # -- operations ---------------------------------------------------------------------------

    def render(self, out: str | Path | None = None) -> RenderResult:
        """Write the Terraform root module (default: the stack's work dir)."""
        return render(self, Path(out) if out else None)

    def plan(self, *, on_event: OnEvent | None = None, migrate: Migrate | None = None) -> PlanResult:
        """What ``up`` would change, without changing anything."""
        with self._operation("plan", on_event, migrate) as engine:
            summary = engine.plan()
        cost = self.cost()
        return PlanResult(
            self.name, self.workdir, summary, self.notes(), cost if cost is not None and cost.nodes else None
        )

    def up(
        self,
        *,
        confirm: Confirm | None = None,
        on_event: OnEvent | None = None,
        verify: bool = True,
        wait_ready: bool = True,
        on_result: OnResult | None = None,
        migrate: Migrate | None = None,
        zone_fallback: bool = True,
    ) -> UpResult:
        """Create or update the stack's nodes so they match the stack file, then verify them.

        With nothing to change, applies nothing. ``verify`` runs every check as a gate (the
        result's ``passed``); without it, ``wait_ready`` still waits for the health check.
        ``zone_fallback``: let the target recover from a capacity failure (GCP: another zone).
        """
        started = time.monotonic()
        with self._operation("apply", on_event, migrate) as engine:  # plan, confirm, apply: nobody in between
            # A copy of the stack that state lost track of would run beside the one about to start.
            stray = self.driver.orphans(self.workspace)
            swept = self.driver.sweep(self.workspace, stray) if stray else 0
            if swept and on_event:
                stopped = f"stopped {swept} process(es) of this stack that were running outside its state"
                on_event(Progress("", "sweep", "output", message=stopped))
            recovering = functools.partial(
                apply_with_recovery,
                self,
                engine,
                allowed=zone_fallback,
                on_event=on_event,
                reengine=lambda: self._engine(on_event, migrate=None),
            )
            if confirm is None:  # nobody reviews the plan: one Terraform run plans and applies
                summary, outputs, moves = recovering(reviewed=False)
            else:
                summary = engine.plan()
                if summary.has_changes:
                    if not confirm(summary):
                        raise Aborted("aborted: nothing was changed")
                    # What is applied is exactly the saved plan that was shown.
                    _, outputs, moves = recovering(reviewed=True)
                elif self.incomplete():  # resources without outputs: the saved plan writes them
                    outputs, moves = engine.apply().outputs, []
                else:
                    outputs, moves = self._outputs(engine), []
        found = self.driver.discover(outputs, self.workspace)
        report = None
        if verify or wait_ready:
            from mlinfra import verify as verification

            report = verification.run(self, found, checks=None if verify else ["health"], on_result=on_result)
            found = node_probe.probe_all(found, self.exited)
        return UpResult(
            self.name, summary, summary.has_changes, found, time.monotonic() - started, report, moves, swept
        )

    def verify(self, *, checks: list[str] | None = None, **options: Any) -> VerifyReport:
        """Run the gpu, health and latency checks (or ``checks``) on every deployed node; ``options`` are
        ``verify.run``'s: ``rate``, ``on_result``, ``idle`` (autoscale: wait for the scale-down), ``fresh``
        (GCP nodes re-run their own checks first)."""
        from mlinfra import verify as verification

        chosen = verification.parse_checks(checks, self.spec, options.get("rate"))  # bad input: before anything runs
        deployed = self.status()
        if not deployed.nodes:
            raise self.not_deployed()
        return verification.run(self, deployed.nodes, checks=chosen, **options)

    def run_verify(self, **options: Any) -> VerifyReport:
        """Deprecated alias of ``verify()`` (one release), from when ``stack.verify`` was the settings."""
        warnings.warn("Stack.run_verify() is deprecated: use Stack.verify()", DeprecationWarning, stacklevel=2)
        return self.verify(**options)

    def down(
        self, *, confirm: Confirm | None = None, on_event: OnEvent | None = None, force: bool = False
    ) -> DownResult:
        """Destroy everything the stack created, and nothing else."""
        self.refuse_if_protected("destroy", force)
        started = time.monotonic()
        if not self.backend.may_have_state():
            # No state, yet the stack's processes may run (the work dir was deleted): stop them.
            stray = self.driver.orphans(self.workspace)
            swept = 0
            if stray:
                with self._locked("destroy"):
                    swept = self.driver.sweep(self.workspace, stray)
            return DownResult(self.name, PlanSummary(), False, time.monotonic() - started, swept)
        with self._operation("destroy", on_event) as engine:
            if confirm is None:  # nobody reviews: one Terraform run plans and destroys
                summary, _ = engine.apply_now(destroy=True)
            else:
                summary = engine.plan(destroy=True)
                if summary.has_changes:
                    if not confirm(summary):
                        raise Aborted("aborted: nothing was destroyed")
                    engine.apply()
            # Whatever state did not account for (a node whose create was interrupted, so
            # Terraform skips its destroy-time stop) goes too, found by the stack's identity.
            swept = self.driver.sweep(self.workspace)
        if summary.has_changes:
            self.driver.forget(self.workspace, None)  # the nodes are gone; new ones may reuse the addresses
        return DownResult(self.name, summary, summary.has_changes, time.monotonic() - started, swept)

    def status(self) -> StatusResult:
        """The nodes in state, each with its endpoint and whether it is alive and ready."""
        if not self.backend.may_have_state():
            return StatusResult(
                self.name, self.target, False, self.workdir, orphans=self.driver.orphans(self.workspace)
            )
        holder = self.lock().holder()
        outputs = self._outputs(None)
        found = node_probe.probe_all(self.driver.discover(outputs, self.workspace), self.exited)
        orphans = self.driver.orphans(self.workspace)
        result = StatusResult(
            self.name, self.target, bool(found), self.workdir, found, holder, orphans, self.incomplete()
        )
        if found:  # an [autoscale] stack: Serve's replicas, and the one endpoint in front of them
            result.autoscale = self.driver.autoscale_status(self.spec, self.workspace, found)
            result.endpoint = found[0].endpoint if result.autoscale else ""
            result.cost = spending.report(self, found, scaling=result.autoscale)  # so far (ops.cost)
        return result

    def replace_nodes(self, keys: list[str], *, on_event: OnEvent | None = None) -> list[node_probe.Node]:
        """Destroy and recreate exactly these nodes (``-replace`` + ``-target``); all nodes after."""
        addresses = [self.node_address(key) for key in keys]
        old_hosts = [n.ssh_host for n in self.status().nodes if n.key in keys]
        with self._operation("replace", on_event) as engine:
            engine.apply_now(replace=addresses, targets=addresses)
            outputs = self._outputs(engine)  # a targeted apply may report only some outputs
        self.driver.forget(self.workspace, old_hosts)
        return self.driver.discover(outputs, self.workspace)

    def heal(self, **options: Any) -> Any:
        """Replace the nodes that fail their gpu or health checks; see ``mlinfra.ops.heal.heal``
        (``watch=True`` keeps healing every ``interval_s``)."""
        from mlinfra.ops.heal import heal

        return heal(self, **options)

    def rebuild(self, **options: Any) -> Any:
        """Destroy, bring up and verify, each phase timed; see ``mlinfra.ops.rebuild.rebuild``."""
        from mlinfra.ops.rebuild import rebuild

        return rebuild(self, **options)

    # -- what the target says -------------------------------------------------------------------

    def notes(self) -> list[str]:
        """What mlinfra chose or wants the user to know before a plan (GCP: machine types and
        zones it picked, and a warning when the stack is open to the internet)."""
        notes = self.driver.notes(self.spec, self.placement)
        if self.incomplete():
            notes.append(
                "warning: the state holds resources but no outputs (an interrupted operation); `mlinfra up` repairs it"
            )
        return notes

    def cost(self) -> Any:
        """Estimated $/hour and $/month, Spot and on-demand (``prices.Cost``); None where the target has no price."""
        return self.driver.cost(self.spec, self.placement)

    def node_address(self, key: str) -> str:
        """The Terraform address of a node's resource."""
        return self.driver.node_address(key)

    def exited(self, node: node_probe.Node) -> Callable[[], str | None] | None:
        """How health waiting learns that a node's process died (None: the target cannot tell)."""
        return self.driver.exited(node, self.workspace)

    def incomplete(self) -> bool:
        """Resources in (local) state but no node outputs: an operation was interrupted between
        creating nodes and saving outputs. Nothing can be checked then; `up` repairs it."""
        if self.backend.remote:
            return False
        from mlinfra.engine import local_outputs, local_resources

        return local_resources(self.workdir) > 0 and not (local_outputs(self.workdir) or {}).get("nodes")

    def not_deployed(self) -> MlinfraError:
        """The error for an operation that needs deployed nodes and finds none."""
        if self.incomplete():
            return MlinfraError(
                f"stack {self.name!r} has resources in state but no outputs (an operation was interrupted)",
                hint="run `mlinfra up` to repair it",
            )
        return MlinfraError(f"stack {self.name!r} is not deployed: run `mlinfra up` first")

    def refuse_if_protected(self, action: str, force: bool) -> None:
        """A stack marked ``protected = true`` is not destroyed (down, rebuild) without --force."""
        if self.protected and not force:
            raise UsageError(f"stack {self.name!r} is protected (protected = true); pass --force to {action} it")

    # -- internals ----------------------------------------------------------------------------

    def lock(self) -> Any:
        """The stack's lock: a file lock for local state, Terraform's lock object for GCS."""
        return self.backend.lock()

    @contextmanager
    def _operation(
        self, name: str, on_event: OnEvent | None = None, migrate: Migrate | None = None
    ) -> Iterator[Terraform]:
        """The stack lock, then a rendered and initialised engine: for anything that may change state.

        The lock comes first, so a command that loses the race renders nothing (it could otherwise
        rewrite ports under the winner's apply). One exception: the first contact with a remote
        backend, where Terraform writes an empty state under its own lock — that init runs first.
        """
        spending.refuse_over_budget(self, name)  # [cost] max_usd_per_hour: before the lock, the work dir, Terraform
        if self.backend.remote and self.workspace.backend_initialized() != self.backend.kind:
            self._engine(on_event, migrate)
        with self._locked(name):
            try:
                yield self._engine(on_event, migrate)
            finally:  # a saved plan holds every value of the stack: never leave one behind
                from mlinfra.engine import PLAN_FILE

                (self.workdir / PLAN_FILE).unlink(missing_ok=True)

    @contextmanager
    def _locked(self, operation: str) -> Iterator[None]:
        lock = self.lock()
        lock.acquire(operation)
        self._held = lock.fds()  # Terraform inherits a local lock: it outlives a killed mlinfra
        try:
            yield
        finally:
            self._held = ()
            lock.release()

    def _outputs(self, engine: Terraform | None) -> dict:
        """The module's outputs: straight from a local state file (no Terraform process), else
        from Terraform (``engine``, or a read-only one)."""
        if not self.backend.remote:
            from mlinfra.engine import local_outputs

            found = local_outputs(self.workdir)
            if found is not None:
                return found
        return (engine or self._reader()).outputs()

    def _reader(self) -> Terraform:
        """An engine for read-only commands (outputs): no render when the work dir is ready."""
        return self._terraform(None) if self.workspace.initialized() else self._engine(None, migrate=None)

    def _terraform(self, on_event: OnEvent | None) -> Terraform:
        """Terraform in the work dir, with what the backend needs; the caller holds the stack's lock
        (or only reads), hence -lock=false."""
        from mlinfra.engine import Terraform  # lazy: engine pulls in subprocess machinery

        self.backend.check_reachable()
        held = self.__dict__.get("_held", ())
        return Terraform(self.workdir, on_event, lock=False, extra_env=self.backend.terraform_env(), hold=held)

    def _engine(self, on_event: OnEvent | None, migrate: Migrate | None) -> Terraform:
        """Render, then init (when needed): the engine for commands run under the stack's lock."""
        from mlinfra.state.lock import LockHeld, LockInfo

        engine = self._terraform(on_event)
        try:
            read_back = lambda: self.driver.read_back_state(self.spec, self.placement, self.workspace, engine)  # noqa: E731
            return self.workspace.prepare(
                self.render, engine, state.config_path(self.workspace, self.backend), migrate, read_back
            )
        except StateLocked:
            raise LockHeld(self.lock().holder() or LockInfo.unknown()) from None
        except EngineError as exc:
            explained = self.driver.explain_init_failure(exc.diagnostics)
            if explained:
                raise EngineError(explained, diagnostics=exc.diagnostics) from None
            raise
