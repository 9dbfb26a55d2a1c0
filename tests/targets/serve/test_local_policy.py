"""A custom policy and a bounded queue, on one real Ray stack.

The server answers in 300 ms but reports a token latency of 900 ms: one client at a time never
makes the queue-depth policy add a replica (target 4 in flight), so a second replica can only
come from the custom policy reading the metric. Then a burst far beyond what the replicas and
the queue hold gets fast 503s, not a hang.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from targets.serve.rayhelpers import load, post, replicas, wait_for

ENV = {"SLOW_MS": "300", "TOKEN_MS": "900"}
FILES = {"token_policy.py": Path(__file__).with_name("token_policy.py").read_text()}
STACK = """
    name = "ray-policy"
    [serve]
    command = "{command}"
    [autoscale]
    min_replicas = 1
    max_replicas = 2
    target_ongoing_requests = 4
    max_queued_requests = 2
    upscale_delay_s = 1
    downscale_delay_s = 600
    policy = "token_policy:scale_on_token_latency"
"""


def test_the_policy_is_reported_and_one_replica_runs_from_the_start(ray_stack):
    scaling = ray_stack.status().autoscale
    assert scaling["policy"] == "token_policy:scale_on_token_latency"
    assert replicas(ray_stack) == 1, ray_stack.status().autoscale


def test_the_custom_policy_scales_on_its_metric(ray_stack):
    with load(ray_stack.status().endpoint, clients=1) as statuses:
        wait_for(lambda: replicas(ray_stack) == 2, timeout_s=40)
    assert statuses and set(statuses) == {200}


def test_beyond_the_queue_requests_get_503_at_once(ray_stack):
    endpoint = ray_stack.status().endpoint
    # 2 replicas x 8 in flight (twice the target) + 2 queued = 18 held; the rest must be refused.
    with ThreadPoolExecutor(max_workers=40) as pool:
        started = time.monotonic()
        results = list(pool.map(lambda _: post(endpoint, timeout=30), range(40)))
        elapsed = time.monotonic() - started
    codes = [code for code, _ in results]
    assert set(codes) <= {200, 503}, codes
    # A few more than 18 get in: a 300 ms request that ends while the burst is still being sent
    # frees its slot for a later one.
    assert codes.count(503) >= 40 - 18 - 8
    assert codes.count(200) >= 2
    assert max(seconds for code, seconds in results if code == 503) < 3.0  # refused, not queued
    assert elapsed < 20
