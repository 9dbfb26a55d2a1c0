"""A custom Ray Serve autoscaling policy on a Python metric: token latency (README's example).

Each replica reports ``latency_ms`` (p90 of the last 5 s of ``X-Token-Latency-Ms`` headers
from its server; 0 when it served nothing in that window). The policy aims at ``TARGET_MS``.
Two rules from the research notes: the metric is a recent window (so it decays when load
stops), and "no data and no requests" means zero replicas, not "hold".
"""

import math

TARGET_MS = 300.0


def scale_on_token_latency(ctx):
    per_replica = ctx.aggregated_metrics.get("latency_ms", {})  # {replica id: value}
    worst = max(per_replica.values(), default=0.0)
    current = max(1, ctx.current_num_replicas)
    if worst <= 0.0:
        desired = 0 if ctx.total_num_requests == 0 else current
    else:
        desired = math.ceil(current * worst / TARGET_MS)
    return desired, {}  # Serve clamps it to [min_replicas, max_replicas] and applies the delays
