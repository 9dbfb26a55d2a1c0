"""Verification: prove a deployment works — GPU present and healthy, health path ready,
inference latency within budget — on every node. The only package that talks to
GPUs and endpoints.

Order per node: health first (it waits for the model to load), then gpu, then
latency (only on a healthy node; one node at a time, so the load generator never
competes with itself for the CPU). Health and gpu run for all nodes at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mlinfra.errors import UsageError
from mlinfra.jsondata import Result
from mlinfra.verify.result import CheckResult

CHECKS = ("health", "gpu", "latency", "autoscale")
DEFAULT_CHECKS = ("health", "gpu", "latency")  # autoscale is opt-in: it takes tens of seconds
# Report order; "cold-start" is not chosen by name: an autoscaled stack at zero replicas gets it
# with latency (its first request is the cold start).
ORDER = ("health", "gpu", "cold-start", "latency", "autoscale")


@dataclass
class VerifyReport(Result):
    _json_extra = ("passed", "verdict")

    stack: str
    results: list[CheckResult] = field(default_factory=list)
    elapsed_s: float = 0.0
    runs: dict[str, dict] = field(default_factory=dict)  # node name → what it runs (issue 11), if more than a command

    @property
    def passed(self) -> bool:
        from mlinfra.verify.report import passed

        return passed(self.results)

    @property
    def verdict(self) -> str:
        from mlinfra.verify.report import verdict

        return verdict(self.results)


def parse_checks(names: Iterable[str] | None, spec=None, rate: float | None = None) -> tuple[str, ...]:
    """The checks to run; with ``spec``, also refuse options the stack cannot take (``rate``
    with protocol openai) — bad input, refused before anything runs."""
    if rate and spec is not None and spec.verify.protocol == "openai":
        raise UsageError("--rate: verify.protocol 'openai' runs a closed loop at verify.concurrency")
    if not names:
        return DEFAULT_CHECKS
    chosen = tuple(dict.fromkeys(n.strip() for name in names for n in name.split(",") if n.strip()))
    unknown = [n for n in chosen if n not in CHECKS]
    if unknown:
        raise UsageError(f"unknown check {unknown[0]!r}: choose from {', '.join(CHECKS)}")
    return chosen


def run(
    stack,
    nodes: list,
    *,
    checks: Iterable[str] | None = None,
    rate: float | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
    health_deadline_s: float | None = None,
    idle: bool = False,
    fresh: bool = False,
) -> VerifyReport:
    """Run the chosen checks on ``nodes`` (from ``stack.status()``); never prints.

    ``health_deadline_s`` overrides ``[verify] health_timeout_s`` (heal detects with a short one).
    ``idle``: the autoscale check also waits for the replicas to return to ``min_replicas``.
    ``fresh``: where nodes report on themselves (GCP), ask each for a new run first.
    """
    checks = parse_checks(checks, stack.spec, rate)
    notify = on_result or (lambda result: None)
    started = time.monotonic()
    results: dict[tuple[str, str], CheckResult] = {}

    # GCP: gpu and health (and latency when the port is closed to us) from each node's own report.
    side = stack.driver.node_side(stack, fresh, checks)  # heal's fresh run: no latency sample

    def record(result: CheckResult) -> CheckResult:
        if side is not None and "measured" not in result.details and not result.skipped:
            result.summary += " (from this machine)"  # beside rows the nodes measured themselves
        result.details.setdefault("measured", "from this machine")
        results[(result.node, result.check)] = result
        notify(result)
        return result

    from concurrent.futures import ThreadPoolExecutor  # here: every stack loads this package (verify.section)

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(nodes)))) as pool:
        if "health" in checks:
            deadline = stack.spec.verify.health_timeout_s if health_deadline_s is None else health_deadline_s
            list(
                pool.map(
                    lambda n: record(
                        side.health(n, deadline)
                        if side
                        else _health(n, deadline, stack.exited(n), stack.driver.health_poll_cap_s)
                    ),
                    nodes,
                )
            )
        if "gpu" in checks:
            list(pool.map(lambda n: record((side and side.gpu(n)) or _gpu(stack, n)), nodes))
    if "latency" in checks:
        for node in nodes:
            health = results.get((node.name, "health"))
            if health is not None and not health.passed:
                record(CheckResult(node.name, "latency", False, "not run", message="not run: the node is not healthy"))
                continue
            if stack.spec.autoscale is not None:  # at zero replicas, the first request is the cold start
                from mlinfra.verify.autoscale import cold_start

                first = cold_start(stack, node, *request_body(stack.spec.verify))
                if first is not None:
                    record(first)
            record((side and side.latency(node)) or _latency(stack, node, rate))
    if "autoscale" in checks:  # after latency: it drives load of its own, one region at a time
        from mlinfra.verify.autoscale import check_autoscale

        for node in nodes:
            record(check_autoscale(stack, node, *request_body(stack.spec.verify), idle=idle))
    order = {check: i for i, check in enumerate(ORDER)}
    ordered = sorted(results.values(), key=lambda r: ([n.name for n in nodes].index(r.node), order[r.check]))
    runs = {node.name: node.workload for node in nodes if node.workload}
    return VerifyReport(stack.name, ordered, time.monotonic() - started, runs)


def _health(node, deadline_s: float, exited, cap_s: float) -> CheckResult:
    from mlinfra.verify.health import check_health

    return check_health(node.name, node.health_url, deadline_s=deadline_s, exited=exited, cap_s=cap_s)


def _gpu(stack, node) -> CheckResult:
    expected = stack.spec.compute.accelerator
    if expected is None:
        return CheckResult(node.name, "gpu", True, "no GPU requested", message='skipped: gpu = "none"', skipped=True)
    not_here = stack.driver.gpu_skip(stack.spec, node)
    if not_here:
        return CheckResult(node.name, "gpu", True, "not checked", message=f"skipped: {not_here}", skipped=True)
    from mlinfra.verify import gpu

    # How the check reaches the node is the target's business (this machine, or SSH).
    return gpu.check_gpu(
        node.name, expected, stack.spec.compute.gpu_count, stack.driver.gpu_runner(node, stack.workspace)
    )


def _latency(stack, node, rate: float | None) -> CheckResult:
    from mlinfra.verify import latency

    verify = stack.spec.verify
    if verify.protocol == "openai":  # streamed tokens: TTFT, inter-token latency, tokens/s
        return _tokens(node, verify)
    body, headers = request_body(verify)
    result = latency.run_load(
        node.endpoint + verify.path,
        method="POST",
        body=body,
        headers=headers,
        requests=verify.requests,
        concurrency=verify.concurrency,
        warmup=verify.warmup,
        rate=verify.rate if rate is None else rate,
    )
    return latency.check_latency(node.name, result, verify)


def _tokens(node, verify) -> CheckResult:
    from mlinfra.verify.budget import check_stream
    from mlinfra.verify.stream import run_stream

    result = run_stream(
        node.endpoint + verify.path,
        verify.prompts,
        max_tokens=verify.max_tokens,
        requests=verify.requests,
        concurrency=verify.concurrency,
        warmup=verify.warmup,
        chat=verify.chat,
        model=verify.model_name,
        token_timeout_s=verify.token_timeout_s,
    )
    return check_stream(node.name, result, verify)


def request_body(verify) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one request the gate sends besides the benchmark (cold start,
    autoscale load): the stack's payload, or with protocol openai a streamed completion."""
    if verify.protocol == "openai":
        from mlinfra.verify.stream import request_body as stream_body

        body = stream_body(verify.prompts[0], verify.max_tokens, verify.chat, verify.model_name)
        return body, {"Content-Type": "application/json", "Accept": "text/event-stream"}
    from mlinfra.verify import latency

    payload = verify.payload if verify.payload is not None else latency.default_payload()
    return json.dumps(payload).encode(), {"Content-Type": "application/json"}
