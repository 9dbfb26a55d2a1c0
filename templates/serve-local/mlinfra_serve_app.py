"""The Serve application of an autoscaled stack, and the two commands that talk to its cluster.

`deploy` (run by head.py once the Ray head is up) starts Serve's proxy on the stack's port and
runs the app; `status` prints the app's replicas, its queue depth and the cluster's nodes as JSON
(for `mlinfra status`; on GCP it runs on the head VM over SSH). Both read the head's values from
``MLINFRA_HEAD``.

``Replica`` is the only code of mlinfra in the request path: each replica starts the user's
``serve.command`` unchanged on a free ``PORT``, waits for ``serve.health_path``, forwards every
request to it and tells Serve its health (a replica whose process died is replaced by Serve).
Every scaling decision is Ray Serve's. Replicas also report ``latency_ms`` (p90 over the last
few seconds, from an ``X-Token-Latency-Ms`` response header when the server sends one, else
the request's own duration) for custom policies; an empty window reports 0.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque

APP = "mlinfra"
METRIC_WINDOW_S = 5.0  # a custom metric must decay: a window in time, not the last N requests
METRIC_HEADER = "x-token-latency-ms"
# Queue depth, from Ray Serve's built-in metrics as the head's metrics agent exports them in
# Prometheus text (docs.ray.io serve/monitoring "Built-in Ray Serve metrics"; both are gauges of
# the router in front of the deployment, i.e. the proxy's): requests waiting for a replica, and
# requests sent to a replica and not answered yet. Their sum is what Serve's autoscaler divides
# by target_ongoing_requests. The agent exports every RAY_metrics_report_interval_ms.
QUEUE_METRICS = {"ray_serve_deployment_queued_queries": "queued",
                 "ray_serve_num_ongoing_requests_at_replicas": "ongoing"}
HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


# A shell that ends the server's process group when the replica process is gone, however it
# went (Serve kills a replica's worker without running Python's cleanup).
_WATCHDOG = 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill -TERM -- "-$2" 2>/dev/null'


class Replica:
    def __init__(self, head: dict):
        self.port = _free_port()
        env = dict(os.environ) | dict(head["env"]) | {"PORT": str(self.port)}
        self.process = subprocess.Popen(["/bin/sh", "-c", head["command"]], cwd=head["cwd"] or None, env=env,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        subprocess.Popen(["/bin/sh", "-c", _WATCHDOG, "watchdog", str(os.getpid()), str(self.process.pid)],
                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + float(head["autoscale"]["ready_timeout_s"])
        while not _healthy(self.base + head["health_path"]):
            if self.process.poll() is not None:
                raise RuntimeError(f"serve.command exited with status {self.process.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve.command was not ready on {head['health_path']} in time")
            time.sleep(0.1)
        self.session = None
        self.samples: deque = deque()  # (monotonic time, latency ms)

    async def __call__(self, request):
        import aiohttp
        from starlette.responses import Response, StreamingResponse

        if self.session is None:  # created on the replica's event loop
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        url = self.base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        started = time.monotonic()
        reply = await self.session.request(request.method, url, data=await request.body(), headers=headers)
        kept = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}
        if reply.content_length is not None:  # a whole body (not chunked): one answer, its length kept
            try:
                body = await reply.read()
            finally:
                reply.release()
            self._sample(reply, started)
            return Response(content=body, status_code=reply.status, headers=kept)
        # A chunked body (server-sent tokens, say) is passed on chunk by chunk as it arrives:
        # buffering it would make a client's first token arrive with its last. Serve's proxy
        # streams a StreamingResponse of an ingress deployment (docs.ray.io serve/http-guide,
        # "Streaming responses").
        return StreamingResponse(self._relay(reply, started), status_code=reply.status, headers=kept)

    async def _relay(self, reply, started: float):
        try:
            async for chunk in reply.content.iter_any():
                yield chunk
        finally:  # the whole body, or a client that hung up: either way the upstream is let go
            reply.release()
            self._sample(reply, started)

    def _sample(self, reply, started: float) -> None:
        metric = reply.headers.get(METRIC_HEADER)
        self.samples.append((time.monotonic(), float(metric) if metric else (time.monotonic() - started) * 1000))

    def check_health(self):
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"serve.command exited with status {code}")

    def record_autoscaling_stats(self) -> dict:
        cutoff = time.monotonic() - METRIC_WINDOW_S
        while self.samples and self.samples[0][0] < cutoff:
            self.samples.popleft()
        values = sorted(v for _, v in self.samples)
        return {"latency_ms": values[int(0.9 * (len(values) - 1))] if values else 0.0}

    def __del__(self):
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, 15)
            except OSError:
                pass


def deployment_options(head: dict) -> dict:
    scale = head["autoscale"]
    config = {
        "min_replicas": int(scale["min_replicas"]),
        "max_replicas": int(scale["max_replicas"]),
        "target_ongoing_requests": float(scale["target_ongoing_requests"]),
        "upscale_delay_s": float(scale["upscale_delay_s"]),
        "downscale_delay_s": float(scale["downscale_delay_s"]),
        "downscale_to_zero_delay_s": float(scale["downscale_delay_s"]),
        # Serve averages the queue over this window; its 30 s default lags short bursts.
        "look_back_period_s": 2.0,
    }
    if scale["policy"]:
        config["policy"] = {"policy_function": scale["policy"]}
    return {
        "name": "serve",
        "autoscaling_config": config,
        # A replica takes twice its target before requests queue at the proxy (bounded below).
        "max_ongoing_requests": max(1, round(2 * float(scale["target_ongoing_requests"]))),
        "max_queued_requests": int(scale["max_queued_requests"]),
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 10.0,
        "graceful_shutdown_timeout_s": 5.0,
        # Locally max_replicas bounds replicas, not Ray's CPU count; on GCP a replica asks for
        # the node's GPUs (head["actor"]), which is what makes Ray's autoscaler add a worker.
        "ray_actor_options": {"num_cpus": 0, **head.get("actor", {})},
    }


def _connect(head: dict):
    import ray

    if head.get("connect") == "auto":  # a GCP head: the one cluster `ray start` recorded on this VM
        ray.init(address="auto", log_to_driver=False, logging_level="ERROR")
        return
    ray.init(address=f"127.0.0.1:{head['gcs_port']}", _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level="ERROR")


def deploy(head: dict) -> int:
    from ray import serve

    _connect(head)
    # Locally the proxy listens on loopback only; a GCP head serves its VPC (and the firewall).
    serve.start(http_options={"host": head.get("serve_host", "127.0.0.1"), "port": int(head["serve_port"])})
    app = serve.deployment(Replica).options(**deployment_options(head)).bind(head)
    serve.run(app, name=APP, route_prefix="/", blocking=False)
    return 0


def parse_queue(text: str) -> dict:
    """The deployment's queue from a Prometheus text scrape: each gauge summed over its series
    (one per router) of this app's deployment; a gauge not exported yet (no request so far) is 0."""
    totals = dict.fromkeys(QUEUE_METRICS.values(), 0.0)
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        labels, _, value = rest.partition("}")
        if name in QUEUE_METRICS and f'application="{APP}"' in labels and 'deployment="serve"' in labels:
            totals[QUEUE_METRICS[name]] += float(value.split()[0])
    queued, ongoing = round(totals["queued"]), round(totals["ongoing"])
    return {"queue_depth": queued + ongoing, "queued": queued}


def queue(head: dict) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{int(head['metrics_port'])}/metrics", timeout=5) as reply:
            return parse_queue(reply.read().decode("utf-8", "replace"))
    except (OSError, ValueError, KeyError) as exc:
        return {"queue_depth": None, "queue_error": f"Ray's metrics agent did not answer: {exc}"}


def status(head: dict) -> int:
    import ray
    from ray import serve

    _connect(head)
    found = serve.status().applications.get(APP)
    deployment = found.deployments.get("serve") if found else None
    # Keys are ReplicaState members (a str enum): their value is the state's name.
    states = {getattr(k, "value", str(k)): int(v) for k, v in (deployment.replica_states if deployment else {}).items()}
    print(json.dumps({"app": getattr(found.status, "value", str(found.status)) if found else "missing",
                      "replicas": int(states.get("RUNNING", 0)),
                      "starting": sum(int(n) for s, n in states.items() if s != "RUNNING"),
                      "states": states,
                      # Ray's nodes, the head included (on GCP: the head and the MIG's workers that joined).
                      "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
                      **queue(head)}))
    return 0


def main() -> int:
    head = json.loads(os.environ["MLINFRA_HEAD"])
    commands = {"deploy": deploy, "status": status}
    return commands[sys.argv[1]](head)
