"""verify.protocol = "openai" at the gate: the request-latency budget a stream gets by default,
--rate refused before anything runs, and every request the gate sends for an openai stack
(cold start, autoscale load) built by the stream module's request builder."""

from __future__ import annotations

import json

import pytest
from helpers import write_stack

from mlinfra import Stack
from mlinfra.errors import UsageError
from mlinfra.verify.budget import check_stream
from mlinfra.verify.stream import StreamResult

OPENAI = """
    name = "v-gate"
    [local]
    regions = ["a"]
    [serve]
    command = "true"
    [verify]
    protocol = "openai"
    """


def slow_streams(total_ms: int) -> StreamResult:
    """Ten streams of ``total_ms`` each, 64 tokens 20 ms apart: a healthy LLM, far over 250 ms."""
    result = StreamResult("http://127.0.0.1:1/v1/completions", 10, 1, 0, 64, duration_s=10 * total_ms / 1000)
    for _ in range(10):
        result.ok += 1
        result.latency.record(total_ms * 1000)
        result.ttft.record(80_000)
        for _ in range(63):
            result.itl.record(20_000)
        result.rates.record(50_000)
        result.output_tokens += 64
    return result


def test_openai_has_no_request_p95_budget_unless_the_file_sets_one(tmp_path):
    stack = Stack.load(write_stack(tmp_path, OPENAI))
    assert stack.spec.verify.p95_ms == 0.0
    check = check_stream("n-0", slow_streams(1_400), stack.spec.verify)
    assert check.passed, check.message
    assert check.details["budget"]["p95_ms"] == 0.0

    written = Stack.load(write_stack(tmp_path, OPENAI + "p95_ms = 1000\n", name="written.toml"))
    assert written.spec.verify.p95_ms == 1000.0
    check = check_stream("n-0", slow_streams(1_400), written.spec.verify)
    assert not check.passed and "p95 1400.0 ms > budget 1000 ms" in check.message


def test_the_http_default_stays_250_ms(tmp_path):
    stack = Stack.load(write_stack(tmp_path, OPENAI.replace('protocol = "openai"', "")))
    assert stack.spec.verify.p95_ms == 250.0
    assert Stack(name="v-dict", verify={"protocol": "openai"}).spec.verify.p95_ms == 0.0
    assert Stack(name="v-dict", verify={"protocol": "openai", "p95_ms": 300}).spec.verify.p95_ms == 300.0


def test_rate_with_openai_is_refused_before_the_stack_is_even_read(tmp_path, monkeypatch):
    stack = Stack.load(write_stack(tmp_path, OPENAI))
    ran = []
    monkeypatch.setattr(type(stack), "status", lambda self: ran.append("status"))
    with pytest.raises(UsageError, match="--rate: verify.protocol 'openai' runs a closed loop"):
        stack.verify(rate=50)
    assert ran == []  # on a GCS stack, status renders and runs terraform init: nothing of that
    assert not (tmp_path / ".mlinfra").exists()


def test_requests_for_an_openai_stack_are_streamed_completions(tmp_path):
    from mlinfra.verify import request_body

    body, headers = request_body(Stack.load(write_stack(tmp_path, OPENAI)).spec.verify)
    sent = json.loads(body)
    assert sent["stream"] is True and sent["prompt"] == "In the beginning" and "instances" not in sent
    assert headers["Accept"] == "text/event-stream"
    http = Stack.load(write_stack(tmp_path, OPENAI.replace('protocol = "openai"', ""), name="http.toml"))
    assert "instances" in json.loads(request_body(http.spec.verify)[0])


def test_the_cold_start_request_of_an_openai_stack_is_answered_by_the_reference_server(tmp_path):
    """`mlinfra serve`'s chat path answers the /predict body with 400: the first request at zero
    replicas must be the streamed completion the benchmark sends."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from types import SimpleNamespace

    from mlinfra.verify import request_body
    from mlinfra.verify.autoscale import cold_start

    spec = Stack.load(write_stack(tmp_path, OPENAI + 'path = "/v1/chat/completions"\nmax_tokens = 4\n')).spec
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlinfra.serve", "--port", str(port)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        # Serve's status at rest (targets/serve): the region has no replica, so this request is the cold start.
        at_rest = SimpleNamespace(autoscale={"regions": {"a": {"replicas": 0, "starting": 0}}})
        stack = SimpleNamespace(spec=spec, status=lambda: at_rest)
        node = SimpleNamespace(name="v-gate-a-0", region="a", endpoint=f"http://127.0.0.1:{port}")
        result = cold_start(stack, node, *request_body(spec.verify))
        from mlinfra.verify.latency import default_payload

        old = cold_start(stack, node, json.dumps(default_payload()).encode(), {"Content-Type": "application/json"})
    finally:
        server.terminate()
        server.wait(10)
    assert result is not None and result.passed, result and result.message
    assert result.details["status"] == 200
    assert old is not None and old.details["status"] == 400  # what the /predict body got before
