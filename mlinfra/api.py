"""The Python API: a ``Stack`` you can render, plan, bring up, inspect and tear down.

Every method returns a result object and never prints. Long operations report
progress through an optional ``on_event`` callback (``tfevents.Progress``), and
ask before changing anything through an optional ``confirm`` callback that
receives the plan summary; without one, they proceed (the caller decided).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from mlinfra import nodes as node_probe
from mlinfra.errors import EngineError, MlinfraError, UsageError
from mlinfra.lock import LockInfo
from mlinfra.render import RenderResult, render
from mlinfra.spec import StackSpec
from mlinfra.tfevents import PlanSummary, Progress

if TYPE_CHECKING:  # only for annotations: verify loads when a command verifies
    from mlinfra.verify import VerifyReport
    from mlinfra.verify.result import CheckResult

Confirm = Callable[[PlanSummary], bool]
Migrate = Callable[[str, str], bool]  # (old backend, new backend) -> copy the state across?
OnEvent = Callable[[Progress], None]
OnResult = Callable[["CheckResult"], None]


class Aborted(MlinfraError):
    """The user declined the plan; nothing was changed."""


@dataclass
class PlanResult:
    stack: str
    workdir: Path
    summary: PlanSummary
    notes: list[str] = field(default_factory=list)  # choices made for the user, warnings
    cost: object | None = None  # catalog.Cost for GCP stacks


@dataclass
class UpResult:
    stack: str
    summary: PlanSummary
    applied: bool
    nodes: list[node_probe.Node] = field(default_factory=list)
    elapsed_s: float = 0.0
    verify: VerifyReport | None = None  # the verification gate's report (health only with verify=False)
    moves: list = field(default_factory=list)  # GCP zone fallback: nodes moved after a stockout

    @property
    def passed(self) -> bool:
        return self.verify is None or self.verify.passed


@dataclass
class DownResult:
    stack: str
    summary: PlanSummary
    destroyed: bool
    elapsed_s: float = 0.0


@dataclass
class StatusResult:
    stack: str
    target: str
    deployed: bool
    workdir: Path
    nodes: list[node_probe.Node] = field(default_factory=list)
    lock: LockInfo | None = None  # who holds the stack's lock right now, if anyone


class Stack(StackSpec):
    """A validated stack plus the operations on it. See ``StackSpec`` for the fields."""

    def render(self, out: str | Path | None = None) -> RenderResult:
        """Write the Terraform root module (default: the stack's work dir)."""
        return render(self, Path(out) if out else None)

    def plan(self, *, on_event: OnEvent | None = None, migrate: Migrate | None = None) -> PlanResult:
        """What ``up`` would change, without changing anything."""
        with self._operation("plan", on_event, migrate) as engine:
            summary = engine.plan()
        return PlanResult(self.name, self.workdir, summary, self.notes(),
                          self.cost() if self.target == "gcp" else None)

    def up(self, *, confirm: Confirm | None = None, on_event: OnEvent | None = None,
           verify: bool = True, wait_ready: bool = True, on_result: OnResult | None = None,
           migrate: Migrate | None = None, zone_fallback: bool = True) -> UpResult:
        """Create or update the stack's nodes so they match the stack file, then verify them.

        With nothing to change, applies nothing. ``verify`` runs every check as a gate (the
        result's ``passed``); without it, ``wait_ready`` still waits for the health check.
        """
        started = time.monotonic()
        with self._operation("apply", on_event, migrate) as engine:  # plan, confirm, apply: nobody in between
            summary = engine.plan()
            if summary.has_changes:
                if confirm is not None and not confirm(summary):
                    raise Aborted("aborted: nothing was changed")
                outputs, moves = self._apply_with_fallback(engine, zone_fallback, on_event)
            else:
                outputs, moves = engine.outputs(), []
        found = node_probe.from_outputs(outputs, self.workdir)
        report = None
        if verify or wait_ready:
            from mlinfra import verify as verification

            report = verification.run(self, found, checks=None if verify else ["health"], on_result=on_result)
            found = [node_probe.probe(node) for node in found]
        return UpResult(self.name, summary, summary.has_changes, found, time.monotonic() - started, report, moves)

    def _apply_with_fallback(self, engine, zone_fallback: bool, on_event: OnEvent | None):
        """Apply; on GCP, a stockout moves the failed nodes to the next zone that offers their GPU
        and machine type (within the stack's regions) and applies again. A quota error, or a
        stockout with nowhere left to go, fails with one line that names the cause."""
        moves: list = []
        tried: dict[str, list[str]] = {}
        while True:
            try:
                return engine.apply().outputs, moves
            except EngineError as exc:
                if self.target != "gcp":
                    raise
                from mlinfra import gcp, stockout

                failures = []
                for diag in exc.diagnostics:
                    capacity = stockout.classify(f"{diag.summary}: {diag.detail}")
                    key = stockout.node_key_from_address(diag.address)
                    if capacity is not None and key is not None:
                        failures.append((key, capacity))
                if not failures:
                    raise
                zones = {node.key: node.zone for node in gcp.placement(self, self.workdir)}
                for key, capacity in failures:
                    tried.setdefault(key, []).append(zones.get(key, capacity.zone or ""))
                found = stockout.plan_moves(self, [(k, zones.get(k, c.zone or ""), c) for k, c in failures], tried)
                if not zone_fallback or len(found) < len(failures):
                    hint = None if zone_fallback else "zone fallback is off (--no-zone-fallback)"
                    raise EngineError("; ".join(f"node {k}: {c.describe()}" for k, c in failures),
                                      diagnostics=exc.diagnostics, hint=hint) from None
                for move in found:
                    gcp.record_zone_move(self.workdir, move.node, move.from_zone, move.to_zone, move.reason)
                    moves.append(move)
                    if on_event:
                        on_event(Progress(self.node_address(move.node), "move", "output",
                                          message=f"{move.reason}; moving to {move.to_zone}"))
                engine = self._engine(on_event, migrate=None)  # re-render with the moves recorded
                engine.plan()

    def run_verify(self, *, checks: list[str] | None = None, rate: float | None = None,
                   on_result: OnResult | None = None) -> VerifyReport:
        """Run the gpu, health and latency checks (or ``checks``) on every deployed node.

        (Not ``verify()``: ``stack.verify`` is the stack file's ``[verify]`` settings.)
        """
        from mlinfra import verify as verification

        checks = verification.parse_checks(checks)  # bad names are bad input, before anything runs
        deployed = self.status()
        if not deployed.nodes:
            raise MlinfraError(f"stack {self.name!r} is not deployed: run `mlinfra up` first")
        return verification.run(self, deployed.nodes, checks=checks, rate=rate, on_result=on_result)

    def down(self, *, confirm: Confirm | None = None, on_event: OnEvent | None = None,
             force: bool = False) -> DownResult:
        """Destroy everything the stack created, and nothing else."""
        self.refuse_if_protected("destroy", force)
        started = time.monotonic()
        if not self._has_state():
            return DownResult(self.name, PlanSummary(), False)
        with self._operation("destroy", on_event) as engine:
            summary = engine.plan(destroy=True)
            if not summary.has_changes:
                return DownResult(self.name, summary, False, time.monotonic() - started)
            if confirm is not None and not confirm(summary):
                raise Aborted("aborted: nothing was destroyed")
            engine.apply()
        self._forget_host_keys(None)  # the VMs are gone; new ones may reuse the addresses
        return DownResult(self.name, summary, True, time.monotonic() - started)

    def status(self) -> StatusResult:
        """The nodes in state, each with its endpoint and whether it is alive and ready."""
        if not self._has_state():
            return StatusResult(self.name, self.target, False, self.workdir)
        holder = self.lock().holder()
        outputs = self._reader().outputs()
        found = [node_probe.probe(node) for node in node_probe.from_outputs(outputs, self.workdir)]
        return StatusResult(self.name, self.target, bool(found), self.workdir, found, holder)

    def refuse_if_protected(self, action: str, force: bool) -> None:
        """A stack marked ``protected = true`` is not destroyed (down, rebuild) without --force."""
        if self.protected and not force:
            raise UsageError(f"stack {self.name!r} is protected (protected = true); pass --force to {action} it")

    # -- internals ------------------------------------------------------------------------

    def lock(self):
        """The stack's lock: a file lock for local state, Terraform's lock object for GCS."""
        from mlinfra.lock import GcsLock, LocalLock

        if self.state.backend == "gcs":
            from mlinfra.render import backend_config

            return GcsLock(self.state, backend_config(self)["prefix"], self.gcp.project)
        return LocalLock(self.workdir)

    @contextmanager
    def _locked(self, operation: str):
        lock = self.lock()
        lock.acquire(operation)
        try:
            yield
        finally:
            lock.release()

    @contextmanager
    def _operation(self, name: str, on_event: OnEvent | None = None, migrate: Migrate | None = None):
        """The stack lock, then a rendered and initialised engine: for anything that may change state.

        The lock comes first, so a command that loses the race renders nothing (it could otherwise
        rewrite ports under the winner's apply). One exception: the first contact with a remote
        backend, where Terraform writes an empty state under its own lock — that init runs first.
        """
        if self.state.backend == "gcs" and self._backend_initialized() != "gcs":
            self._engine(on_event, migrate)
        with self._locked(name):
            yield self._engine(on_event, migrate)

    def _initialized(self) -> bool:
        return (self.workdir / ".terraform").is_dir()

    def _backend_initialized(self) -> str | None:
        """The backend this work dir was last initialised for (None: never)."""
        from mlinfra.engine import initialized_backend

        return initialized_backend(self.workdir) if self._initialized() else None

    def _reader(self):
        """An engine for read-only commands (outputs): no render when the work dir is ready."""
        return self._terraform(None) if self._initialized() else self._engine(None, migrate=None)

    def _terraform(self, on_event: OnEvent | None):
        """Terraform in the work dir, with what the backend needs; the caller holds the stack's lock
        (or only reads), hence -lock=false."""
        from mlinfra import gcs
        from mlinfra.engine import Terraform  # lazy: engine pulls in subprocess machinery

        if self.state.backend != "gcs":
            return Terraform(self.workdir, on_event, lock=False)
        gcs.check_reachable(self.state)  # seconds, not Terraform's minutes of retries
        return Terraform(self.workdir, on_event, lock=False, extra_env=gcs.terraform_env(self.state))

    def _engine(self, on_event: OnEvent | None, migrate: Migrate | None):
        """Render, then init (when needed): the engine for commands run under the stack's lock."""
        from mlinfra.lock import workdir_mutex

        engine = self._terraform(on_event)
        with workdir_mutex(self.workdir):  # two commands at once: one renders and inits, then the other
            self.render()
            backend = self.workdir / "backend.tfbackend.json"
            self._init(engine, backend if self.state.backend == "gcs" else None, migrate)
        return engine

    def _init(self, engine, backend: Path | None, migrate: Migrate | None) -> None:
        from mlinfra.engine import StateLocked
        from mlinfra.lock import LockHeld

        try:
            engine.init(backend, migrate=migrate)
        except StateLocked:
            raise LockHeld(self.lock().holder() or LockInfo("?", "unknown operation", "unknown", "", "")) from None
        except EngineError as exc:
            if self.target == "gcp":
                from mlinfra import gcp

                explained = gcp.explain_init_failure(exc.diagnostics)
                if explained:
                    raise EngineError(explained, diagnostics=exc.diagnostics) from None
            raise

    def notes(self) -> list[str]:
        """What mlinfra chose or wants the user to know before a plan: machine types and zones
        it picked, and a warning when the stack is open to the internet."""
        if self.target != "gcp":
            return []
        from mlinfra import gcp

        warning = gcp.public_warning(self)
        return list(gcp.choices(self)) + ([f"warning: {warning}"] if warning else [])

    def cost(self):
        """Estimated $/hour and $/month (spot vs on-demand); see ``catalog.estimate_cost``."""
        from mlinfra import catalog

        return catalog.estimate_cost(self)

    def _has_state(self) -> bool:
        """Whether there may be something deployed: local state here, or any remote state."""
        if self.state.backend == "gcs":
            return True  # another machine may have applied it: ask the bucket
        return (self.workdir / "terraform.tfstate").is_file()

    def replace_nodes(self, keys: list[str], *, on_event: OnEvent | None = None) -> list[node_probe.Node]:
        """Destroy and recreate exactly these nodes (``-replace`` + ``-target``); all nodes after."""
        addresses = [self.node_address(key) for key in keys]
        old_hosts = [n.ssh_host for n in self.status().nodes if n.key in keys]
        with self._operation("replace", on_event) as engine:
            engine.plan(replace=addresses, targets=addresses)
            engine.apply()
            outputs = engine.outputs()  # a targeted apply may report only some outputs
        self._forget_host_keys(old_hosts)
        return node_probe.from_outputs(outputs, self.workdir)

    def _forget_host_keys(self, hosts: list[str] | None) -> None:
        if self.target == "gcp":
            from mlinfra.verify.ssh import forget_hosts

            forget_hosts(self.workdir / "known_hosts", hosts)

    def node_address(self, key: str) -> str:
        """The Terraform address of a node's resource."""
        import json

        resource = "google_compute_instance.node" if self.target == "gcp" else "terraform_data.node"
        return f"{resource}[{json.dumps(key)}]"

    def heal(self, **options):
        """Replace the nodes that fail their gpu or health checks; see ``mlinfra.heal.heal``."""
        from mlinfra.heal import heal

        return heal(self, **options)

    def rebuild(self, **options):
        """Destroy, bring up and verify, each phase timed; see ``mlinfra.rebuild.rebuild``."""
        from mlinfra.rebuild import rebuild

        return rebuild(self, **options)

    # -- state ---------------------------------------------------------------------------

    def state_bootstrap(self):
        """Create (or check) the GCS state bucket; see ``mlinfra.state.bootstrap``."""
        from mlinfra import state

        return state.bootstrap(self)

    def state_pull(self) -> dict:
        """The current state document (what ``terraform state pull`` prints)."""
        import json

        with self._operation("state pull") as engine:
            result = engine.run(["state", "pull"], json_events=False)
        if result.returncode != 0:
            raise MlinfraError(f"terraform state pull failed: {result.stderr.strip()[-300:]}")
        return json.loads(result.stdout) if result.stdout.strip() else {}

    def state_history(self):
        """The stored versions of the state object, newest first (GCS with versioning)."""
        from mlinfra import state

        return state.history(self)

    def state_restore(self, generation: int, *, confirm: Callable | None = None):
        """Make an old state generation current again, after ``confirm(RestorePlan)``."""
        import json

        from mlinfra import state

        with self._operation("state restore") as engine:
            pulled = engine.run(["state", "pull"], json_events=False)
            current = json.loads(pulled.stdout) if pulled.stdout.strip() else {}
            plan = state.plan_restore(self, generation, current)
            if confirm is not None and not confirm(plan):
                raise Aborted("aborted: the state was not changed")
            restored = self.workdir / f"restore-{generation}.tfstate"
            restored.write_text(json.dumps(state.restored_state(self, generation, current)))
            try:
                pushed = engine.run(["state", "push", "-lock=false", restored.name], json_events=False)
            finally:
                restored.unlink(missing_ok=True)
            if pushed.returncode != 0:
                raise MlinfraError(f"terraform state push failed: {pushed.stderr.strip()[-300:]}")
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
