"""The latency check's verdict: a load run's figures against the stack's ``[verify]`` budget."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlinfra.verify.result import CheckResult

if TYPE_CHECKING:
    from mlinfra.verify.latency import LoadResult
    from mlinfra.verify.stream import StreamResult


def check_latency(node: str, result: LoadResult, verify) -> CheckResult:
    """Judge ``result`` against the stack's ``[verify]`` budget (p95_ms, p99_ms, max_error_rate,
    min_rps; 0 means no budget for p99 and rps). Messages carry figure and budget."""
    figures = result.percentiles_ms()
    problems = _request_problems(result, figures, verify, "response")
    if result.ok:
        problems += _error_rate_problem(result, verify)
    if result.ok and verify.min_rps and result.rps < verify.min_rps:
        problems.append(f"throughput {result.rps:.1f} req/s < min {verify.min_rps:g} req/s")
    if result.ok:
        summary = (
            f"p50 {figures['p50_ms']:.1f} ms, p95 {figures['p95_ms']:.1f} ms, "
            f"p99 {figures['p99_ms']:.1f} ms, {result.rps:.0f} req/s, errors {result.error_rate:.1%}"
        )
    else:
        summary = "no successful response"
    if result.mode == "open":
        summary += f", open loop {result.rate:g} req/s, {result.late_sends} late"
    if result.saturated:
        note = "load generator saturated (" + "; ".join(result.saturation) + "): figures may be the generator's"
        summary += " [generator saturated]"
        if problems:
            problems.append(note)
    details = result.to_dict()
    details["budget"] = {
        "p95_ms": verify.p95_ms,
        "p99_ms": verify.p99_ms,
        "max_error_rate": verify.max_error_rate,
        "min_rps": verify.min_rps,
    }
    return CheckResult(
        node, "latency", not problems, summary, message="; ".join(problems), elapsed_s=result.elapsed_s, details=details
    )


def _request_problems(result: LoadResult | StreamResult, figures: dict, verify, noun: str) -> list[str]:
    """What both protocols judge alike: a run that could not take place, no successful request,
    and request latency against p95_ms and p99_ms (0: no budget; p95_ms is 0 only with openai)."""
    if result.aborted:
        return [result.aborted]
    if not result.ok:
        return [f"no successful {noun} in {result.requests} requests ({_describe(result.errors)})"]
    problems = []
    if verify.p95_ms and figures["p95_ms"] > verify.p95_ms:
        problems.append(f"p95 {figures['p95_ms']:.1f} ms > budget {verify.p95_ms:g} ms")
    if verify.p99_ms and figures["p99_ms"] > verify.p99_ms:
        problems.append(f"p99 {figures['p99_ms']:.1f} ms > budget {verify.p99_ms:g} ms")
    return problems


def _error_rate_problem(result: LoadResult | StreamResult, verify) -> list[str]:
    if result.error_rate <= verify.max_error_rate:
        return []
    return [f"error rate {result.error_rate:.1%} > max {verify.max_error_rate:.1%} ({_describe(result.errors)})"]


def _describe(errors: dict[str, int]) -> str:
    """'12 x http_500, 3 x timeout', most frequent first."""
    return ", ".join(f"{count} x {kind}" for kind, count in sorted(errors.items(), key=lambda kv: -kv[1]))


def check_stream(node: str, result: StreamResult, verify) -> CheckResult:
    """Judge a token-level run (``verify.protocol = "openai"``) against request latency, error
    rate and the token budgets: ttft_p95_ms, itl_p95_ms, min_tokens_per_s (0: none), the last
    against the per-request rate that 95 % of requests reached (its 5th percentile)."""
    latency, ttft, itl = result.percentiles_ms("latency"), result.percentiles_ms("ttft"), result.percentiles_ms("itl")
    slowest = result.rate_percentile(5)
    problems = _request_problems(result, latency, verify, "stream")
    if result.ok and not result.aborted:
        if verify.ttft_p95_ms and ttft["p95_ms"] > verify.ttft_p95_ms:
            problems.append(f"TTFT p95 {ttft['p95_ms']:.1f} ms > budget {verify.ttft_p95_ms:g} ms")
        if verify.itl_p95_ms and itl["p95_ms"] > verify.itl_p95_ms:
            problems.append(f"ITL p95 {itl['p95_ms']:.1f} ms > budget {verify.itl_p95_ms:g} ms")
        if verify.min_tokens_per_s and slowest < verify.min_tokens_per_s:
            problems.append(f"tokens/s p5 {slowest:.1f} < min {verify.min_tokens_per_s:g}")
        problems += _error_rate_problem(result, verify)
    if result.first_error and problems:
        problems.append(f"first error: {result.first_error}")
    if result.ok:
        summary = (
            f"TTFT p50 {ttft['p50_ms']:.1f} ms, p95 {ttft['p95_ms']:.1f} ms; ITL p50 {itl['p50_ms']:.2f} ms, "
            f"p95 {itl['p95_ms']:.2f} ms; tokens/s p50 {result.rate_percentile(50):.0f}, p5 {slowest:.0f}; "
            f"request p95 {latency['p95_ms']:.1f} ms, errors {result.error_rate:.1%}"
        )
    else:
        summary = "no successful stream"
    details = result.to_dict()
    details["budget"] = {
        name: getattr(verify, name)
        for name in ("p95_ms", "p99_ms", "max_error_rate", "ttft_p95_ms", "itl_p95_ms", "min_tokens_per_s")
    }
    return CheckResult(
        node, "latency", not problems, summary, message="; ".join(problems), elapsed_s=result.elapsed_s, details=details
    )
