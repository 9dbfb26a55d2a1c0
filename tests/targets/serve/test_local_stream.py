"""Streamed tokens through Ray Serve: the replica passes the server's chunks on as they come.

`mlinfra serve` paces its tokens (``--token-ms``); an openai verify through the Serve endpoint
must see the first token long before the last and the real gap between tokens. A replica that
buffered the body would report TTFT equal to the whole request and ITL near 0.
"""

from __future__ import annotations

import sys

TOKEN_MS = 40
MAX_TOKENS = 10
COMMAND = f"exec {sys.executable} -m mlinfra.serve --token-ms {TOKEN_MS}"
STACK = f"""
    name = "ray-stream"
    [serve]
    command = "{{command}}"
    [autoscale]
    min_replicas = 1
    max_replicas = 1
    [verify]
    protocol = "openai"
    prompts = ["In the beginning"]
    max_tokens = {MAX_TOKENS}
    requests = 4
    concurrency = 1
    warmup = 1
    p95_ms = 60000
"""


def test_an_openai_verify_through_serve_sees_tokens_as_they_are_generated(ray_stack):
    report = ray_stack.verify(checks=["latency"])
    [row] = report.results
    details = row.details
    assert row.passed and details["errors"] == {} and details["output_tokens"] == 4 * MAX_TOKENS, details
    # The first token arrives after about one token's time, the last after ten: a buffered body
    # would bring them together (TTFT = the whole request, every gap ~0).
    assert details["ttft"]["p50_ms"] < details["p50_ms"] / 2, details
    assert details["itl"]["p50_ms"] >= 0.9 * TOKEN_MS, details
