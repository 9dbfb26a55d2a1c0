"""The health check: wait until a node's health path says ready, and say why when it does not.

One overall deadline (model loads take minutes), a short timeout per attempt,
capped exponential backoff with full jitter, and N consecutive successes
before "ready". Each attempt is classified (after the conventions collected in
verification-anchors.md §B), so a failure reports what the node was doing:

  not listening  connection refused/reset — still starting          → retry
  timeout        no answer within the attempt timeout               → retry
  not ready      503, or 4xx/500 on a readiness path (Triton, OIP)  → retry
  ready          2xx/3xx (the Kubernetes probe rule)                → count
  misconfigured  404 on a plain health path, 401/403, TLS errors    → fail fast
"""

from __future__ import annotations

import http.client
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from mlinfra.verify.result import CheckResult

NOT_LISTENING, TIMEOUT, NOT_READY, READY, MISCONFIGURED = (
    "not listening",
    "timeout",
    "not ready",
    "ready",
    "misconfigured",
)
# Readiness endpoints that answer 4xx while loading (Triton 400, Open Inference Protocol 4xx).
_READINESS_PATHS = ("/v2/health/ready", "/readyz", "/v2/health/live")


@dataclass(frozen=True)
class Attempt:
    outcome: str
    status: int | None = None
    body: str = ""
    error: str = ""


def probe(url: str, timeout_s: float) -> Attempt:
    """One GET, classified. Never raises for network trouble: that is an outcome."""
    parts = urlsplit(url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.hostname or "", parts.port, timeout=timeout_s)
    path = parts.path or "/"
    try:
        conn.request("GET", path + (f"?{parts.query}" if parts.query else ""))
        response = conn.getresponse()
        body = response.read(2048).decode("utf-8", "replace")
        return Attempt(classify_status(path, response.status), response.status, body)
    except ssl.SSLError as exc:
        return Attempt(MISCONFIGURED, error=f"TLS error: {exc}")
    except TimeoutError:
        return Attempt(TIMEOUT, error=f"no answer within {timeout_s:g}s")
    except (ConnectionError, OSError) as exc:
        return Attempt(NOT_LISTENING, error=str(exc) or type(exc).__name__)
    except http.client.HTTPException as exc:
        return Attempt(NOT_READY, error=f"bad HTTP response: {type(exc).__name__}")
    finally:
        conn.close()


def classify_status(path: str, status: int) -> str:
    if 200 <= status < 400:
        return READY
    if status in (401, 403):
        return MISCONFIGURED
    if status == 404 and not path.startswith(_READINESS_PATHS):
        return MISCONFIGURED  # the server is up, but not at this path: waiting will not help
    return NOT_READY  # 503 while loading, 4xx on readiness paths, 500 (BentoML /readyz)


def check_health(
    node: str,
    url: str,
    *,
    deadline_s: float = 600.0,
    attempt_timeout_s: float = 3.0,
    successes: int = 2,
    base_s: float = 0.005,  # from milliseconds: a local node is often ready within a few
    cap_s: float = 1.0,  # polling once a second costs nothing; a longer cap only delays "ready"
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    exited: Callable[[], str | None] | None = None,
) -> CheckResult:
    """Poll ``url`` until ``successes`` consecutive ready answers, or the deadline.

    ``exited``, when given, says why the node is not what answers (None: it is): its process is
    gone, or its port is held by some other process. It is asked after each attempt that did not
    succeed — a dead process will never answer, so waiting out the deadline would only hide the
    reason — and once more before "ready".
    """
    started = clock()
    deadline = started + deadline_s
    attempts, streak, last = 0, 0, Attempt(NOT_LISTENING)
    while True:
        attempts += 1
        last = probe(url, min(attempt_timeout_s, max(0.1, deadline - clock())))
        elapsed = clock() - started
        figures = {"attempts": attempts, "last_outcome": last.outcome, "last_status": last.status, "url": url}
        if last.outcome == READY:
            streak += 1
            if streak >= successes:
                # An answer proves the port is served, not that the node serves it: a squatter, or
                # the server's orphan after the node's process died, must not pass as the node.
                reason = exited() if exited else None
                if reason is not None:
                    return CheckResult(
                        node,
                        "health",
                        False,
                        "not the node",
                        message=f"something answers at {url}, but not the node: {reason}",
                        elapsed_s=elapsed,
                        details=figures | {"last_outcome": "not the node", "exit_reason": reason},
                    )
                return CheckResult(
                    node,
                    "health",
                    True,
                    f"ready after {elapsed:.1f}s ({attempts} attempts)",
                    elapsed_s=elapsed,
                    details=figures,
                )
            continue  # confirm at once: a second success right away is the cheapest proof
        streak = 0
        if last.outcome == MISCONFIGURED:
            return _failed(node, url, last, elapsed, figures, "misconfigured, not retried")
        reason = exited() if exited else None
        if reason is not None:
            return CheckResult(
                node,
                "health",
                False,
                "exited",
                message=f"the node's process exited: {reason}",
                elapsed_s=clock() - started,
                details=figures | {"last_outcome": "exited", "probe_outcome": last.outcome, "exit_reason": reason},
            )
        if clock() >= deadline:
            return _failed(node, url, last, elapsed, figures, f"not ready after {deadline_s:g}s")
        # Full jitter: sleep a random time up to the capped exponential step.
        step = min(cap_s, base_s * 2 ** min(attempts, 16))
        sleep(min(random.uniform(0, step), max(0.0, deadline - clock())))


def _failed(node: str, url: str, last: Attempt, elapsed: float, figures: dict, why: str) -> CheckResult:
    status = f" (HTTP {last.status})" if last.status else ""
    said = f": {last.error}" if last.error else (f": {' '.join(last.body.split())[:120]!r}" if last.body else "")
    message = f"{why}: {last.outcome}{status} at {url}{said}"
    return CheckResult(
        node,
        "health",
        False,
        f"{last.outcome}{status}",
        message=message,
        elapsed_s=elapsed,
        details=figures | {"body": last.body[:500]},
    )


def port_answers(endpoint: str, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the endpoint opens from here (a firewall in between let it through)."""
    import socket

    parts = urlsplit(endpoint)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=timeout_s):
            return True
    except OSError:
        return False
