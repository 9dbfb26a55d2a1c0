"""Helpers of the Ray Serve tests: the stand-in server's command, a load loop, a poll on status."""

from __future__ import annotations

import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mlinfra import Stack

SERVER = Path(__file__).with_name("slow_server.py")


def server_command(**env: str) -> str:
    settings = " ".join(f"{k}={v}" for k, v in env.items())
    return f"{settings} exec {sys.executable} {SERVER}".strip()


def post(url: str, timeout: float = 60.0) -> tuple[int, float]:
    """(HTTP status, seconds) of one /predict."""
    started = time.monotonic()
    request = urllib.request.Request(url + "/predict", data=b"{}", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, time.monotonic() - started


def replicas(stack: Stack) -> int:
    scaling = stack.status().autoscale
    assert scaling is not None
    errors = [r["error"] for r in scaling["regions"].values() if "error" in r]
    assert not errors, errors
    return scaling["replicas"]


def wait_for(what: Callable[[], bool], timeout_s: float, every_s: float = 1.0) -> float:
    """Seconds until ``what()`` held; fails the test at the deadline."""
    started = time.monotonic()
    while not what():
        assert time.monotonic() - started < timeout_s, f"not within {timeout_s:.0f}s"
        time.sleep(every_s)
    return time.monotonic() - started


@contextmanager
def load(url: str, clients: int, pause_s: float = 0.0) -> Iterator[list[int]]:
    """``clients`` closed-loop threads posting to ``url`` until the block ends; yields the statuses."""
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            statuses.append(post(url)[0])
            stop.wait(pause_s)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
