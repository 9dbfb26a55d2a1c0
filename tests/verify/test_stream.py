"""The token-level check (verify.protocol = "openai", issue 11): streamed completions from the
reference server's real model, and three broken streaming servers that must fail clearly."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET

import pytest
from helpers import ROOT, write_stack
from typer.testing import CliRunner

from mlinfra import Stack
from mlinfra.cli import app
from mlinfra.spec import Verify
from mlinfra.verify.budget import check_stream
from mlinfra.verify.report import markdown
from mlinfra.verify.sse import Events, Sample, StreamError, take_event
from mlinfra.verify.stream import run_stream

runner = CliRunner()
SERVE = f"exec {sys.executable} -m mlinfra.serve"
PROMPTS = ["In the beginning", "And Joseph dreamed a dream,"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def reference_server():
    """`mlinfra serve` in a process of its own; yields a function that starts one (token_ms)."""
    started = []

    def start(token_ms: float = 0.0) -> str:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "mlinfra.serve", "--port", str(port), "--token-ms", str(token_ms)],
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as response:
                    if response.status == 200:
                        return url
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the reference server did not become ready")

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


@pytest.fixture
def broken_server():
    started = []

    def start(mode: str) -> str:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "standins" / "broken_sse.py"), mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return f"http://127.0.0.1:{int(process.stdout.readline())}/v1/completions"

    yield start
    for process in started:
        process.kill()
        process.wait(10)


@pytest.mark.parametrize("path,chat", [("/v1/completions", False), ("/v1/chat/completions", True)])
def test_reference_server_streams_every_token_and_passes(reference_server, path, chat):
    url = reference_server(token_ms=1)
    result = run_stream(url + path, PROMPTS, max_tokens=12, requests=10, concurrency=3, warmup=2, chat=chat)
    assert (result.ok, result.errors) == (10, {})
    assert result.output_tokens == 10 * 12  # usage.completion_tokens, and as many text events
    assert result.ttft.total == 10 and result.itl.total == 10 * 11
    assert 0 < result.ttft.min <= result.ttft.max <= result.latency.max
    assert result.itl.max >= 1000 * 0.9  # the server sleeps 1 ms per token
    check = check_stream("n-0", result, Verify(protocol="openai", ttft_p95_ms=60_000, min_tokens_per_s=0.1))
    assert check.passed, check.message
    assert check.summary.startswith("TTFT p50 ") and "ITL p50 " in check.summary and "tokens/s p50 " in check.summary
    details = check.details
    assert details["ttft"]["p50_ms"] <= details["ttft"]["p95_ms"] <= details["ttft"]["max_ms"]
    assert details["budget"]["ttft_p95_ms"] == 60_000 and details["output_tokens"] == 120


def test_token_budgets_fail_with_figure_and_budget(reference_server):
    url = reference_server(token_ms=20)
    result = run_stream(url + "/v1/completions", PROMPTS, max_tokens=5, requests=4, concurrency=2, warmup=1)
    verify = Verify(protocol="openai", itl_p95_ms=5, min_tokens_per_s=1000)
    check = check_stream("n-0", result, verify)
    assert not check.passed
    itl, slowest = check.details["itl"]["p95_ms"], check.details["tokens_per_s"]["p5"]
    assert itl >= 20 and slowest < 50  # 20 ms a token: at most 50 tokens/s
    assert f"ITL p95 {itl:.1f} ms > budget 5 ms" in check.message
    assert f"tokens/s p5 {slowest:.1f} < min 1000" in check.message


def test_reference_server_answers_openai_errors(reference_server):
    url = reference_server()
    request = urllib.request.Request(url + "/v1/completions", data=b'{"model": "gpt-4", "prompt": "x"}')
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 404
    assert json.loads(raised.value.read())["error"]["code"] == "model_not_found"
    request = urllib.request.Request(url + "/v1/completions", data=b'{"prompt": "In the", "max_tokens": 7, "seed": 3}')
    with urllib.request.urlopen(request, timeout=10) as response:
        whole = json.loads(response.read())
    assert whole["usage"]["completion_tokens"] == 7 and whole["choices"][0]["text"].strip()
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["choices"] == whole["choices"]  # a seed makes it repeatable
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == [whole["model"]] == ["genesis-trigram"]
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'mlinfra_requests_total{path="/v1/completions",code="200"} 2' in metrics
    assert 'mlinfra_requests_total{path="/v1/completions",code="404"} 1' in metrics


@pytest.mark.parametrize(
    "mode,kind,words",
    [
        ("stall", "stalled", "no byte for 0.5 s"),
        ("malformed", "malformed_event", "an event is not JSON"),
        ("close-early", "closed_early", "without [DONE]"),
        ("error-event", "server_error", "CUDA out of memory"),
    ],
)
def test_broken_stream_is_a_clear_failure_not_a_hang(broken_server, mode, kind, words):
    url = broken_server(mode)
    result = run_stream(url, PROMPTS, max_tokens=8, requests=3, concurrency=3, warmup=0, token_timeout_s=0.5)
    assert (result.ok, result.errors) == (0, {kind: 3})
    check = check_stream("n-0", result, Verify(protocol="openai"))
    assert not check.passed
    assert check.message.startswith(f"no successful stream in 3 requests (3 x {kind})")
    assert words in check.message  # the first error's own message


def test_unreachable_server_aborts_with_one_message():
    port = free_port()
    result = run_stream(
        f"http://127.0.0.1:{port}/v1/completions", PROMPTS, max_tokens=4, requests=5, concurrency=2, warmup=1
    )
    check = check_stream("n-0", result, Verify(protocol="openai"))
    assert not check.passed and check.message.startswith(f"cannot connect to 127.0.0.1:{port}")


def test_events_split_anywhere_parse_the_same():
    stream = (
        'data: {"a": "é"}\r\n\r\n: a comment\r\nevent: x\r\ndata: {"b":\r\ndata: 2}\r\n\r\n'
        'data: [DONE]\r\n\r\ndata: {"after": 1}\n\n'
    ).encode()
    for size in (1, 2, 3, 7, len(stream)):
        events = Events()
        got = [e for i in range(0, len(stream), size) for e in events.feed(stream[i : i + size])]
        assert got == ['{"a": "é"}', '{"b":\n2}'] and events.done, size


def test_openai_stack_on_the_local_target_reports_a_token_row_per_node(tmp_path, monkeypatch, deployed):
    monkeypatch.chdir(tmp_path)
    stack = Stack.load(
        write_stack(
            tmp_path,
            f"""
        name = "v-tok"
        [local]
        regions = ["a", "b"]
        [serve]
        command = "{SERVE} --token-ms 1"
        [verify]
        protocol = "openai"
        path = "/v1/chat/completions"
        prompts = ["In the beginning"]
        max_tokens = 8
        requests = 10
        concurrency = 2
        warmup = 2
        ttft_p95_ms = 60000
        itl_p95_ms = 60000
    """,
        )
    )
    assert stack.spec.verify.chat
    deployed(stack)
    stack.up(verify=False)
    result = runner.invoke(app, ["verify", "--json", "--check", "health,latency", "--junit", "report.xml"])
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.stdout)["results"] if r["check"] == "latency"]
    assert [r["node"] for r in rows] == ["v-tok-a-0", "v-tok-b-0"]
    for row in rows:
        assert row["passed"] and row["details"]["protocol"] == "openai"
        assert row["details"]["output_tokens"] == 80 and row["details"]["url"].endswith("/v1/chat/completions")
    suite = ET.parse(tmp_path / "report.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0" and len(list(suite.iter("testcase"))) == 4
    report = stack.verify(checks=["latency"])
    assert "| v-tok-a-0 | latency | ✅ pass | TTFT p50 " in markdown("v-tok", report.results)
    result = runner.invoke(app, ["verify", "--rate", "50"])
    assert (result.exit_code, result.stderr) == (
        2, "error: --rate: verify.protocol 'openai' runs a closed loop at verify.concurrency\n")


@pytest.mark.parametrize("data,kind", [
    ('{"choices": [{"index": 0, "delta": "x"}]}', "malformed_event"),
    ('{"choices": "x"}', "malformed_event"),
    ('[1, 2]', "malformed_event"),
    ('{"error": {"message": "overloaded"}}', "server_error"),
])
def test_a_wrong_chunk_is_a_stream_error_of_its_kind(data, kind):
    with pytest.raises(StreamError) as raised:
        take_event(data, Sample(0.0), 1.0)
    assert raised.value.kind == kind


def test_chunks_count_tokens_with_text_and_take_the_reported_usage():
    sample = Sample(0.0)
    for i, data in enumerate(['{"choices": [{"delta": {"role": "assistant", "content": ""}}]}',
                              '{"choices": [{"delta": {"content": " In"}}]}', '{"choices": [{"text": " the"}]}',
                              '{"choices": [], "usage": {"completion_tokens": 5}}']):
        take_event(data, sample, float(i))
    assert sample.tokens == [1.0, 2.0] and sample.output_tokens == 5


def test_a_client_that_hangs_up_mid_stream_stops_its_generation_cleanly(reference_server):
    url = reference_server(token_ms=5)
    port = int(url.rsplit(":", 1)[1])
    body = b'{"prompt": "In the", "max_tokens": 4000, "stream": true}'
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert b"data: " in sock.recv(65536) + sock.recv(65536)
    metrics = ""
    for _ in range(100):  # the server notices at its next write, 5 ms later
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            metrics = response.read().decode()
        if 'path="/v1/completions"' in metrics:
            break
        time.sleep(0.05)
    assert 'mlinfra_requests_total{path="/v1/completions",code="200"} 1' in metrics  # not a 500
    result = run_stream(url + "/v1/completions", PROMPTS, max_tokens=3, requests=2, concurrency=1, warmup=0)
    assert result.ok == 2
