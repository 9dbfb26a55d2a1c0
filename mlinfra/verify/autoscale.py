"""The opt-in ``autoscale`` check: from rest, load the endpoint until Serve adds replicas, then
(with ``idle``, `verify --idle`) let it go idle and watch it return to ``min_replicas``.

It takes tens of seconds (the idle phase: ``downscale_delay_s`` more), so `verify` runs it only
when asked (``--check autoscale``). Every figure comes from the stack's own status (Serve's
replica counts) and from real requests. ``cold_start`` is the gate's first request at zero.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from mlinfra.verify.result import CheckResult

GRACE_S = 60.0  # on top of Serve's own delays: replica start-up (a model load) and status polling
POLL_S = 1.0


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0  # no answer at all: counted as an error


def _wait(replicas: Callable[[], int], done: Callable[[int], bool], timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if done(replicas()):
            return time.monotonic() - started
        time.sleep(POLL_S)
    return None


def _region(stack, node) -> dict:
    """The node's region in the stack's status (each region scales on its own)."""
    return dict((stack.status().autoscale or {}).get("regions", {}).get(node.region, {"error": "not in status"}))


def _not_checked(node, check: str, reason: str) -> CheckResult:
    return CheckResult(node.name, check, True, f"not checked ({reason})", message=f"skipped: {reason}", skipped=True)


def cold_start(stack, node, body: bytes, headers: dict[str, str]) -> CheckResult | None:
    """The gate's first request, timed, when the stack rests at zero replicas: that request is
    the cold start (Serve holds it while a replica starts serve.command; ``body``: from
    ``verify.request_body``, so an openai stack gets a streamed completion). None when replicas
    are already running: the first request is then an ordinary one, and no cold start. Skipped,
    with the reason, when the replicas at rest cannot be read (serve-gcp without serve.ssh_cidrs)."""
    region = _region(stack, node)
    if "error" in region:  # the replicas at rest are unknown: the first request cannot be named
        return _not_checked(node, "cold-start", region["error"])
    if region.get("replicas", 0) or region.get("starting", 0):
        return None
    started = time.monotonic()
    status = _post(node.endpoint + stack.spec.verify.path, body, headers)
    seconds = time.monotonic() - started
    summary = f"first request {seconds:.1f}s from 0 replicas (HTTP {status or 'no answer'})"
    ok = 200 <= status < 300
    message = (
        "" if ok else f"the first request, at zero replicas, failed: HTTP {status or 'no answer'} after {seconds:.1f}s"
    )
    details = {"cold_start_s": seconds, "status": status}
    return CheckResult(node.name, "cold-start", ok, summary, message, elapsed_s=seconds, details=details)


def check_autoscale(stack, node, body: bytes, headers: dict[str, str], idle: bool = False) -> CheckResult:
    scale = stack.spec.autoscale
    if scale is None:
        return CheckResult(
            node.name, "autoscale", True, "no [autoscale]", message="skipped: fixed replicas", skipped=True
        )

    def replicas() -> int:
        return int(_region(stack, node).get("replicas", 0))

    started = time.monotonic()
    region = _region(stack, node)
    if region.get("unread"):  # the stack gives this machine no way to read them (serve-gcp without SSH)
        return _not_checked(node, "autoscale", region["error"])

    url = node.endpoint + stack.spec.verify.path
    at_rest = int(region.get("replicas", 0))
    first = time.monotonic()
    cold_status = _post(url, body, headers)
    cold_s = time.monotonic() - first
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            statuses.append(_post(url, body, headers))

    # Enough clients that two replicas' worth of target_ongoing_requests is in flight.
    clients = [
        threading.Thread(target=client, daemon=True) for _ in range(max(4, round(4 * scale.target_ongoing_requests)))
    ]
    for thread in clients:
        thread.start()
    bound = scale.upscale_delay_s + GRACE_S
    try:
        up_s = _wait(replicas, lambda n: n > 1, bound) if scale.max_replicas > 1 else 0.0
        peak = replicas()
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=130)
    down_s: float | None = None
    if idle:  # no request from here on: Serve should return to min_replicas after its delays
        down_s = _wait(replicas, lambda n: n <= scale.min_replicas, scale.downscale_delay_s + GRACE_S)
    errors = sum(1 for s in statuses if not 200 <= s < 300) + (0 if 200 <= cold_status < 300 else 1)
    details = {
        "replicas_at_rest": at_rest,
        "cold_start_s": cold_s if at_rest == 0 else None,
        "first_request_s": cold_s,
        "scale_up_s": up_s,
        "peak_replicas": peak,
        "scale_down_s": down_s,
        "requests": len(statuses) + 1,
        "errors": errors,
    }
    figures = [f"cold start {cold_s:.1f}s" if at_rest == 0 else f"first request {cold_s:.1f}s ({at_rest} at rest)"]
    figures.append(f"up to {peak} in {up_s:.1f}s" if up_s is not None else f"not above 1 in {bound:.0f}s")
    if not idle:
        figures.append("scale-down not checked (--idle)")
    elif down_s is not None:
        figures.append(f"back to {scale.min_replicas} in {down_s:.1f}s")
    else:
        figures.append(f"not back to {scale.min_replicas} in {scale.downscale_delay_s + GRACE_S:.0f}s")
    figures.append(f"{errors} error(s) in {len(statuses) + 1} requests")
    failed = up_s is None or errors > 0 or (idle and down_s is None)
    message = "" if not failed else "replicas did not follow the load (or requests failed): " + ", ".join(figures)
    if failed and "error" in region:  # read again while polling: a head that never answered explains the 0s
        message += f"; the replica counts at rest could not be read: {region['error']}"
    return CheckResult(
        node.name,
        "autoscale",
        not failed,
        ", ".join(figures),
        message,
        elapsed_s=time.monotonic() - started,
        details=details,
    )
