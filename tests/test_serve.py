"""Tests for the reference inference server (mlinfra/serve.py).

Most tests run the real thing: ``python -m mlinfra.serve`` as a subprocess on a
free port, spoken to over HTTP with urllib. The model fitting and input parsing
are also tested directly.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from mlinfra import serve

from helpers import ROOT  # noqa: E402

INSTANCE = {"hour": 14, "day_of_week": 2, "price": 9.99, "promo": 1, "temperature": 21.5}


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body=None, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def poll(condition, timeout: float, interval: float = 0.02):
    """Call condition() until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class Server:
    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **(env or {})}
        self.log = ""
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlinfra.serve", "--port", str(self.port), *args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def health_status(self) -> int | None:
        """HTTP status of /health, or None while nothing is listening yet."""
        assert self.proc.poll() is None, f"server exited early:\n{self.proc.stderr.read()}"
        try:
            return http("GET", self.url + "/health", timeout=1.0)[0]
        except (urllib.error.URLError, ConnectionError):
            return None

    def wait_listening(self, timeout: float = 10.0) -> int:
        return poll(self.health_status, timeout)

    def wait_ready(self, timeout: float = 10.0) -> None:
        poll(lambda: self.health_status() == 200, timeout)

    def stop(self) -> str:
        """Stop the server (SIGTERM, then SIGKILL) and return its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.proc.stderr.closed:
            self.log = self.proc.stderr.read()
            self.proc.stderr.close()
        return self.log


@pytest.fixture
def start_server():
    """Factory: start_server(*args) -> a ready-to-use Server; all are stopped at teardown."""
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(*args, env=env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server():
    """One default server, ready, shared by the tests that don't need special options."""
    srv = Server()
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def predict(server: Server, body) -> tuple[int, dict]:
    status, _, raw = http("POST", server.url + "/predict", body)
    return status, json.loads(raw)


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """Strict-enough parser for the text format: every sample follows its TYPE line."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            assert name not in types, f"duplicate TYPE for {name}"
            types[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"bad sample line: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample {name} before its TYPE line"
        label_set = frozenset(LABEL.findall(labels or ""))
        samples[(name, label_set)] = float(value)
    return samples


def metrics(server: Server) -> dict[tuple[str, frozenset], float]:
    status, headers, raw = http("GET", server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_prometheus(raw.decode())


def requests_total(samples, path: str, code: str) -> float:
    return samples.get(("mlinfra_requests_total", frozenset({("path", path), ("code", code)})), 0.0)


# --------------------------------------------------------------------------- model, in process


def test_fit_is_deterministic():
    first, second = serve.fit_demand_model(seed=7), serve.fit_demand_model(seed=7)
    np.testing.assert_array_equal(first.coef, second.coef)
    assert first.intercept == second.intercept
    assert first.coef.shape == (len(serve.FEATURE_NAMES),)
    assert not np.array_equal(first.coef, serve.fit_demand_model(seed=8).coef)


def test_fit_generalises_to_held_out_data():
    model = serve.fit_demand_model(seed=1)
    features, target = serve.generate_demand_data(5000, seed=2)  # different seed: unseen data
    residual = target - model.predict(features)
    r2 = 1.0 - residual.var() / target.var()
    assert r2 > 0.8, r2
    # The fitted effects have the signs the synthetic world was built with.
    coef = dict(zip(serve.FEATURE_NAMES, model.coef, strict=True))
    assert coef["promo"] > 15 and coef["price"] < 0


def test_parse_instances_defaults_and_errors():
    defaults = serve.parse_instances({"instances": [{}]})
    explicit = serve.parse_instances({"instances": [dict(serve.FEATURE_DEFAULTS)]})
    np.testing.assert_array_equal(defaults, explicit)
    assert serve.parse_instances({"instances": [INSTANCE] * 3}).shape == (3, len(serve.FEATURE_NAMES))
    bad = [
        ({"instances": []}, "instances"),
        ({"instances": [{}] * (serve.MAX_INSTANCES + 1)}, "instances"),
        ({"rows": [{}]}, "instances"),
        ({"instances": [{}, {"price": "cheap"}]}, "instances[1].price"),
        ({"instances": [{"day_of_week": 7}]}, "instances[0].day_of_week"),
        ({"instances": [{"day_of_week": 1.5}]}, "instances[0].day_of_week"),
        ({"instances": [{"hour": 24}]}, "instances[0].hour"),
        ({"instances": [{"temperature": float("nan")}]}, "instances[0].temperature"),
        ({"instances": [{"promo": 2}]}, "instances[0].promo"),
        ({"instances": [{"price": True}]}, "instances[0].price"),
        ({"instances": [{"temprature": 20}]}, "instances[0].temprature"),
    ]
    for body, field in bad:
        with pytest.raises(serve.InputError, match=re.escape(field)):
            serve.parse_instances(body)


# --------------------------------------------------------------------------- real server


def test_health_is_503_while_loading_then_200(start_server):
    srv = start_server("--load-seconds", "1")
    assert srv.wait_listening() == 503
    status, _, raw = http("GET", srv.url + "/health")
    assert (status, json.loads(raw)) == (503, {"status": "loading"})
    assert predict(srv, {"instances": [INSTANCE]})[0] == 503
    assert metrics(srv)[("mlinfra_model_loaded", frozenset())] == 0
    srv.wait_ready()
    assert time.monotonic() - srv.started >= 1.0
    for path in serve.HEALTH_PATHS:
        status, _, raw = http("GET", srv.url + path)
        assert status == 200, path
        assert json.loads(raw) == {"status": "ok", "model": "demand-ridge", "version": "1"}
    assert metrics(srv)[("mlinfra_model_loaded", frozenset())] == 1


def test_ready_quickly_by_default(server):
    # The shared server is already ready; time a fresh one to bound startup cost.
    srv = Server()
    try:
        srv.wait_ready(timeout=5.0)
    finally:
        srv.stop()


def test_predict_batch(server):
    batch = [INSTANCE, {**INSTANCE, "promo": 0}, {}]
    status, body = predict(server, {"instances": batch})
    assert status == 200
    assert body["model"] == "demand-ridge" and body["version"] == "1"
    predictions = body["predictions"]
    assert len(predictions) == 3
    assert all(isinstance(p, float) and math.isfinite(p) and p >= 0 for p in predictions)
    assert predictions[0] > predictions[1] + 10  # a promotion lifts demand
    cheap, dear = predict(server, {"instances": [{"price": 6}, {"price": 14}]})[1]["predictions"]
    assert cheap > dear
    # Same input, same answer: the model is fixed once loaded.
    assert predict(server, {"instances": batch})[1]["predictions"] == predictions


def test_predict_is_fast(server):
    body = {"instances": [INSTANCE] * serve.MAX_INSTANCES}
    predict(server, body)  # warm up
    started = time.perf_counter()
    status, result = predict(server, body)
    assert status == 200 and len(result["predictions"]) == serve.MAX_INSTANCES
    assert time.perf_counter() - started < 0.5  # generous for CI; ~10 ms on a laptop


@pytest.mark.parametrize("body, field", [
    ({"instances": [{"hour": "noon"}]}, "instances[0].hour"),
    ({"instances": [INSTANCE, {"day_of_week": 9}]}, "instances[1].day_of_week"),
    ({"instances": "all"}, "instances"),
    (b"{not json", "JSON"),
])
def test_predict_bad_input_is_400_naming_the_field(server, body, field):
    status, result = predict(server, body)
    assert status == 400
    assert field in result["error"]


def test_metrics_are_valid_and_count_requests(server):
    before = metrics(server)
    predict(server, {"instances": [INSTANCE]})
    predict(server, {"instances": [INSTANCE]})
    predict(server, {"instances": []})
    after = metrics(server)
    assert requests_total(after, "/predict", "200") == requests_total(before, "/predict", "200") + 2
    assert requests_total(after, "/predict", "400") == requests_total(before, "/predict", "400") + 1
    assert requests_total(after, "/metrics", "200") == requests_total(before, "/metrics", "200") + 1

    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in after.items() if name == "mlinfra_request_duration_seconds_bucket")
    assert buckets[-1][0] == math.inf and len(buckets) > 5
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    total = after[("mlinfra_request_duration_seconds_count", frozenset())]
    assert counts[-1] == total == sum(
        value for (name, _), value in after.items() if name == "mlinfra_requests_total")
    assert after[("mlinfra_request_duration_seconds_sum", frozenset())] > 0
    assert after[("mlinfra_requests_in_flight", frozenset())] == 1  # this scrape itself
    assert after[("mlinfra_model_loaded", frozenset())] == 1


def test_delay_ms_slows_predict(start_server):
    srv = start_server("--delay-ms", "200")
    srv.wait_ready()
    started = time.perf_counter()
    status, _ = predict(srv, {"instances": [INSTANCE]})
    assert status == 200
    assert time.perf_counter() - started >= 0.2
    started = time.perf_counter()
    assert http("GET", srv.url + "/health")[0] == 200
    assert time.perf_counter() - started < 0.2  # only /predict is slowed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly(start_server, sig):
    srv = start_server()
    srv.wait_ready()
    srv.proc.send_signal(sig)
    assert srv.proc.wait(timeout=5) == 0
    log = srv.stop()
    assert "listening on" in log and "ready" in log and "stopped" in log
    assert "Traceback" not in log
    assert len(log.strip().splitlines()) == 4  # startup, ready, shutting down, stopped


def test_port_in_use_exits_1(server):
    result = subprocess.run(
        [sys.executable, "-m", "mlinfra.serve", "--port", str(server.port)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=10)
    assert result.returncode == 1
    assert "cannot listen" in result.stderr


# --------------------------------------------------------------------------- fast paths


def random_instances(n: int, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"hour": float(rng.uniform(0, 24)), "day_of_week": int(rng.integers(0, 7)),
             "price": float(rng.uniform(0, 50)), "promo": int(rng.integers(0, 2)),
             "temperature": float(rng.uniform(-60, 60))} for _ in range(n)]


def test_python_predictions_match_numpys():
    weights = serve.load_weights()
    model = serve.fit_demand_model()
    np.testing.assert_allclose(weights.coef, model.coef, rtol=0, atol=0)  # the cache holds the fit itself
    for n in (1, serve.NUMPY_MIN_BATCH - 1, serve.NUMPY_MIN_BATCH, serve.MAX_INSTANCES):
        body = {"instances": random_instances(n, seed=n)}
        expected = model.predict(serve.parse_instances(body))
        got = weights.predict(*serve._columns(body))
        assert len(got) == n and all(type(p) is float for p in got)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-9)
    assert weights.predict([0], [0], [1e6], [0], [60]) == [0.0]  # clipped at zero, like numpy's path


def test_fast_validation_takes_only_what_the_rules_take():
    accepted = [{"day_of_week": 2.0}, {"promo": True}, {"promo": False}, {"promo": 1.0}, {"hour": 23.999},
                {"price": 0}, {"temperature": -60}, {"temperature": 60}, {"hour": 0, "price": 1e6}]
    for instance in accepted:
        columns = serve._columns({"instances": [instance]})
        assert columns[1] == [int(instance.get("day_of_week", 2))]  # always an int: it indexes weights
        np.testing.assert_array_equal(serve.parse_instances({"instances": [instance]}),
                                      serve.build_features(*columns))
    bad = [
        ({"instances": [{"price": 10**400}]}, "instances[0].price must be in"),  # not an OverflowError
        ({"instances": [{"hour": float("inf")}]}, "instances[0].hour must be a finite number"),
        ({"instances": [{"promo": 0.5}]}, "instances[0].promo must be a whole number"),
        ({"instances": [{"day_of_week": True}]}, "instances[0].day_of_week must be a number"),
        ({"instances": [{"hour": None}]}, "instances[0].hour must be a number, got null"),
        ({"instances": [{}, 3]}, "instances[1] must be a JSON object"),
        ({"instances": None}, '"instances" must be a non-empty list'),
        ([{}], 'body must be a JSON object'),
        # Every instance's fields are checked before any value, as before the fast path.
        ({"instances": [{"price": "cheap"}, {"temprature": 1}]}, "instances[1].temprature is not a known field"),
    ]
    for body, message in bad:
        with pytest.raises(serve.InputError, match=re.escape(message)):
            serve._columns(body)


def test_json_fast_path_is_json_loads():
    for raw in [b'{"instances": [{}]}', b' {"a": 1}', b'{"a": 1} ', b'{"a": NaN}', "\ufeff{}".encode(),
                '{"k": "\u00e9"}'.encode(), b"[1, 2.5e300, -0.0]", b'"x"']:
        assert repr(serve._loads(raw)) == repr(json.loads(raw)), raw
    for raw in [b"{}x", b"{} {}", b"", b"{", b"\xff\xfe", b"[1,]"]:
        with pytest.raises(ValueError):
            serve._loads(raw)


def test_weights_are_cached_and_a_damaged_cache_is_refitted(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert serve.cached_weights() is None
    fitted = serve.load_weights()
    (path,) = (tmp_path / "mlinfra").glob("demand-ridge-v1-*.json")
    cached = serve.cached_weights()
    assert cached is not None and (cached.coef, cached.intercept) == (fitted.coef, fitted.intercept)
    assert serve.cached_weights(seed=7) is None  # another fit, another key
    for damage in ("{not json", '{"coef": [1, 2], "intercept": 0}', '{"coef": null}'):
        path.write_text(damage)
        assert serve.cached_weights() is None
        assert serve.load_weights().coef == fitted.coef
        assert serve.cached_weights().coef == fitted.coef  # rewritten whole


def test_a_cache_hit_needs_no_numpy_and_a_server_process_no_aiohttp_client(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", "from mlinfra import serve; serve.load_weights()"], env=env, check=True)
    code = ("import sys; from mlinfra import serve; web = serve._import_web(bare=True); "
            "w = serve.cached_weights(); cols = serve._columns({'instances': [{}]}); "
            "print(w.predict(*cols)[0] > 0, sorted(m for m in sys.modules if m.split('.')[0] == 'numpy' or "
            "m in ('aiohttp.client', 'aiohttp.connector')), web.Response.__module__)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "[]", "aiohttp.web_response"]


def test_second_server_starts_from_the_cache_with_the_same_model(start_server, tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    first = start_server(env=env)
    first.wait_ready()
    assert list((tmp_path / "mlinfra").glob("*.json"))
    second = start_server(env=env)
    second.wait_ready()
    body = {"instances": random_instances(5) + random_instances(serve.NUMPY_MIN_BATCH)}
    assert predict(first, body) == predict(second, body)
    assert predict(first, body)[0] == 200


def test_unknown_routes_and_methods_are_counted_as_unmatched(server):
    before = metrics(server)
    status, headers, raw = http("GET", server.url + "/nope?x=1")
    assert (status, raw) == (404, b"404: Not Found")
    status, headers, raw = http("POST", server.url + "/health", {})
    assert (status, headers["Allow"]) == (405, "GET,HEAD")
    assert http("GET", server.url + "/predict")[0] == 405
    assert http("HEAD", server.url + "/health") == (200, http("HEAD", server.url + "/health")[1], b"")
    status, headers, raw = http("GET", server.url + "/health?verbose=1")
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
    after = metrics(server)
    assert requests_total(after, "unmatched", "404") == requests_total(before, "unmatched", "404") + 1
    assert requests_total(after, "unmatched", "405") == requests_total(before, "unmatched", "405") + 2
    assert requests_total(after, "/health", "200") == requests_total(before, "/health", "200") + 3


def test_expect_100_continue_is_answered_before_the_body(server):
    payload = json.dumps({"instances": [INSTANCE] * 50}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(payload))
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(payload)
        response = b""
        while b"demand-ridge" not in response:
            response += sock.recv(65536)
    assert response.startswith(b"HTTP/1.1 200 OK")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: magic\r\nContent-Length: 2\r\n\r\n{}")
        assert sock.recv(64).startswith(b"HTTP/1.1 417")
