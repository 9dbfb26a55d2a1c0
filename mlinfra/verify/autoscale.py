"""The opt-in ``autoscale`` check: from rest, load the endpoint until Serve adds replicas, then
(for a short ``downscale_delay_s``) let it go idle and watch it return to ``min_replicas``.

It takes tens of seconds, so `verify` runs it only when asked (``--check autoscale``). Every
figure comes from the stack's own status (Serve's replica counts) and from real requests.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from mlinfra.verify.result import CheckResult

GRACE_S = 60.0  # on top of Serve's own delays: replica start-up (a model load) and status polling
IDLE_WAIT_MAX_S = 120.0  # a longer downscale_delay_s is reported, not waited for
POLL_S = 1.0


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
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


def check_autoscale(stack, node, payload: dict) -> CheckResult:
    scale = stack.spec.autoscale
    if scale is None:
        return CheckResult(
            node.name, "autoscale", True, "no [autoscale]", message="skipped: fixed replicas", skipped=True
        )

    def replicas() -> int:
        return int((stack.status().autoscale or {}).get("replicas", 0))

    url, body = node.endpoint + stack.spec.verify.path, json.dumps(payload).encode()
    started = time.monotonic()
    at_rest = replicas()
    first = time.monotonic()
    cold_status = _post(url, body)
    cold_s = time.monotonic() - first
    statuses: list[int] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            statuses.append(_post(url, body))

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
    if scale.downscale_delay_s <= IDLE_WAIT_MAX_S:
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
    figures = [f"first request {cold_s:.1f}s" + (" (cold start)" if at_rest == 0 else "")]
    figures.append(f"up to {peak} in {up_s:.1f}s" if up_s is not None else f"not above 1 in {bound:.0f}s")
    if scale.downscale_delay_s > IDLE_WAIT_MAX_S:
        figures.append(f"scale-down not waited for (downscale_delay_s {scale.downscale_delay_s:.0f}s)")
    else:
        figures.append(f"back to {scale.min_replicas} in {down_s:.1f}s" if down_s is not None else "did not scale down")
    figures.append(f"{errors} error(s) in {len(statuses) + 1} requests")
    failed = up_s is None or errors > 0 or (scale.downscale_delay_s <= IDLE_WAIT_MAX_S and down_s is None)
    message = "" if not failed else "replicas did not follow the load (or requests failed): " + ", ".join(figures)
    return CheckResult(
        node.name,
        "autoscale",
        not failed,
        ", ".join(figures),
        message,
        elapsed_s=time.monotonic() - started,
        details=details,
    )
