"""The reference inference server every default stack runs (``mlinfra serve``).

A small but real model: ridge regression for hourly demand, fitted at startup
on a seeded synthetic dataset. It exists so that deployments, health checks and
latency budgets can be verified end to end against something that behaves like
a production model server:

* ``/health`` (also ``/healthz``, ``/ping``, ``/v2/health/ready``): 503 while
  the model loads, 200 once it is ready. Loading starts only after the socket
  is listening, so a health checker can tell "up but not ready" from "down".
* ``POST /predict``: ``{"instances": [{...}, ...]}`` -> ``{"predictions": [...]}``.
* ``/metrics``: Prometheus text exposition, written by hand (no dependency).

Only aiohttp and numpy are imported, so the server is ready in a fraction of a
second. ``--load-seconds`` and ``--delay-ms`` make a late or slow server on
purpose, for testing readiness timeouts and latency budgets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
from aiohttp import web

MODEL_NAME = "demand-ridge"
MODEL_VERSION = "1"
MAX_INSTANCES = 1000
DEFAULT_SEED = 20240601

# Defaults for features a request leaves out: a mild Wednesday noon at list price,
# no promotion. day_of_week: 0 = Monday ... 6 = Sunday; temperature in Celsius.
FEATURE_DEFAULTS = {"hour": 12, "day_of_week": 2, "price": 10.0, "promo": 0, "temperature": 15.0}
FEATURE_NAMES = (
    ["hour_sin", "hour_cos", "hour_sin2", "hour_cos2"]
    + [f"dow_{d}" for d in range(1, 7)]  # Monday is the baseline level
    + ["price", "promo", "temperature", "temperature_sq"]
)
HEALTH_PATHS = ("/health", "/healthz", "/ping", "/v2/health/ready")
# Prometheus client default buckets, so dashboards built for other servers fit.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


# --------------------------------------------------------------------------- model


def build_features(hour, day_of_week, price, promo, temperature) -> np.ndarray:
    """Design matrix (n, len(FEATURE_NAMES)) from raw feature arrays.

    Hour is encoded with two harmonics of sin/cos so that 23:00 sits next to
    00:00 and a daily profile with two peaks (lunch, evening) can be represented.
    Temperature gets a squared term around 15 C: demand is best on mild days.
    """
    hour = np.asarray(hour, dtype=float)
    angle = 2.0 * np.pi * hour / 24.0
    dow = np.asarray(day_of_week, dtype=int)
    dow_onehot = (dow[:, None] == np.arange(1, 7)[None, :]).astype(float)
    temperature = np.asarray(temperature, dtype=float)
    return np.column_stack([
        np.sin(angle), np.cos(angle), np.sin(2 * angle), np.cos(2 * angle),
        dow_onehot,
        np.asarray(price, dtype=float), np.asarray(promo, dtype=float),
        temperature, (temperature - 15.0) ** 2,
    ])


def generate_demand_data(n_samples: int, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic hourly demand: returns (design matrix, target units sold).

    Demand peaks in the evening and around lunch, is higher on Friday and the
    weekend, falls with price, rises by ~25 units on promotion and is best at
    mild temperatures. Gaussian noise (sd 6) keeps the fit honest.
    """
    rng = np.random.default_rng(seed)
    hour = rng.integers(0, 24, n_samples)
    dow = rng.integers(0, 7, n_samples)
    price = rng.uniform(5.0, 15.0, n_samples)
    promo = (rng.random(n_samples) < 0.2).astype(float)
    temperature = rng.normal(15.0, 8.0, n_samples)
    daily = 25.0 * np.cos(2 * np.pi * (hour - 18) / 24) + 10.0 * np.cos(4 * np.pi * (hour - 12) / 24)
    weekly = np.select([dow == 4, dow >= 5], [8.0, 15.0], 0.0)
    demand = (
        100.0 + daily + weekly
        - 4.0 * (price - 10.0)
        + 25.0 * promo
        + 1.2 * (temperature - 15.0) - 0.04 * (temperature - 15.0) ** 2
        + rng.normal(0.0, 6.0, n_samples)
    )
    return build_features(hour, dow, price, promo, temperature), demand


@dataclass(frozen=True)
class DemandModel:
    coef: np.ndarray  # one weight per FEATURE_NAMES entry, in raw feature units
    intercept: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        # Demand cannot be negative, whatever a far extrapolation says.
        return np.maximum(features @ self.coef + self.intercept, 0.0)


def fit_ridge(features: np.ndarray, target: np.ndarray, alpha: float = 1.0) -> DemandModel:
    """Closed-form ridge regression on standardized features.

    Standardizing makes one alpha mean the same for every feature; the
    intercept is not penalized. Weights are mapped back to raw units so that
    prediction is a single matrix-vector product.
    """
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    z = (features - mean) / scale
    y_mean = float(target.mean())
    gram = z.T @ z + alpha * np.eye(z.shape[1])
    weights = np.linalg.solve(gram, z.T @ (target - y_mean))
    coef = weights / scale
    return DemandModel(coef=coef, intercept=y_mean - float(mean @ coef))


def fit_demand_model(seed: int = DEFAULT_SEED, n_samples: int = 20_000, alpha: float = 1.0) -> DemandModel:
    features, target = generate_demand_data(n_samples, seed)
    return fit_ridge(features, target, alpha)


# field -> (lowest, highest, highest is excluded, must be whole). Hour may be
# fractional (14.5) but must stay below 24, since 24:00 is 0:00 of the next day.
_FEATURE_RANGES = {
    "hour": (0, 24, True, False),
    "day_of_week": (0, 6, False, True),
    "price": (0, 1e6, False, False),
    "promo": (0, 1, False, True),
    "temperature": (-60, 60, False, False),
}


class InputError(ValueError):
    """A request the client must fix (HTTP 400); the message names the field."""


def _check_value(value, where: str, low: float, high: float, exclusive: bool, whole: bool) -> None:
    """Raise an InputError that says what is wrong with one value (the slow path)."""
    # bool is an int subclass in Python; "price": true is a client bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} must be a number, got {json.dumps(value)}")
    if not math.isfinite(value):
        raise InputError(f"{where} must be a finite number, got {value}")
    if not low <= value <= high or (exclusive and value == high):
        raise InputError(f"{where} must be in [{low:g}, {high:g}{')' if exclusive else ']'}, got {value}")
    if whole and value != int(value):
        raise InputError(f"{where} must be a whole number, got {value}")


def parse_instances(body) -> np.ndarray:
    """Validate a /predict body and return its design matrix."""
    if not isinstance(body, dict) or "instances" not in body:
        raise InputError('body must be a JSON object with an "instances" list')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InputError('"instances" must be a non-empty list')
    if len(instances) > MAX_INSTANCES:
        raise InputError(f'"instances" has {len(instances)} items; at most {MAX_INSTANCES} are allowed')
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise InputError(f"instances[{i}] must be a JSON object")
        if not instance.keys() <= FEATURE_DEFAULTS.keys():
            # A typo like "temprature" must not silently become the default.
            unknown = sorted(instance.keys() - FEATURE_DEFAULTS.keys())[0]
            raise InputError(f"instances[{i}].{unknown} is not a known field (known: {', '.join(FEATURE_DEFAULTS)})")
    columns = {}
    for name, (low, high, exclusive, whole) in _FEATURE_RANGES.items():
        values = [instance.get(name, FEATURE_DEFAULTS[name]) for instance in instances]
        # JSON true/false is a natural way to say promo; for anything else a bool is a bug.
        allowed = (int, float, bool) if name == "promo" else (int, float)
        column = None
        if all(type(v) in allowed for v in values):
            column = np.asarray(values, dtype=float)
            # Vectorised range check; the per-value loop below only runs to word an error.
            bad = ~np.isfinite(column) | (column < low) | ((column >= high) if exclusive else (column > high))
            if whole:
                bad |= column != np.round(column)
        if column is None or bad.any():
            for i, value in enumerate(values):
                value = int(value) if name == "promo" and isinstance(value, bool) else value
                _check_value(value, f"instances[{i}].{name}", low, high, exclusive, whole)
        columns[name] = column
    return build_features(**columns)


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Just enough of a Prometheus registry for this server's four metrics."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.bucket_counts = [0] * len(DURATION_BUCKETS)  # non-cumulative, summed on render
        self.duration_sum = 0.0
        self.duration_count = 0
        self.in_flight = 0
        self.model_loaded = 0

    def observe(self, path: str, code: int, seconds: float) -> None:
        key = (path, str(code))
        self.requests[key] = self.requests.get(key, 0) + 1
        for i, bound in enumerate(DURATION_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1
                break
        self.duration_sum += seconds
        self.duration_count += 1

    def render(self) -> str:
        def esc(value: str) -> str:
            return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        lines = ["# HELP mlinfra_requests_total HTTP requests handled, by route and status code.",
                 "# TYPE mlinfra_requests_total counter"]
        for (path, code), count in sorted(self.requests.items()):
            lines.append(f'mlinfra_requests_total{{path="{esc(path)}",code="{code}"}} {count}')
        lines += ["# HELP mlinfra_request_duration_seconds Time to handle an HTTP request.",
                  "# TYPE mlinfra_request_duration_seconds histogram"]
        cumulative = 0
        for bound, count in zip(DURATION_BUCKETS, self.bucket_counts):
            cumulative += count
            lines.append(f'mlinfra_request_duration_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines += [f'mlinfra_request_duration_seconds_bucket{{le="+Inf"}} {self.duration_count}',
                  f"mlinfra_request_duration_seconds_sum {self.duration_sum!r}",
                  f"mlinfra_request_duration_seconds_count {self.duration_count}",
                  "# HELP mlinfra_requests_in_flight HTTP requests being handled right now.",
                  "# TYPE mlinfra_requests_in_flight gauge",
                  f"mlinfra_requests_in_flight {self.in_flight}",
                  "# HELP mlinfra_model_loaded 1 once the model is loaded and serving, else 0.",
                  "# TYPE mlinfra_model_loaded gauge",
                  f"mlinfra_model_loaded {self.model_loaded}"]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTTP


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} mlinfra serve: {message}", file=sys.stderr, flush=True)


class InferenceServer:
    def __init__(self, delay_ms: float = 0.0) -> None:
        self.delay_s = max(delay_ms, 0.0) / 1000.0
        self.model: DemandModel | None = None
        self.metrics = Metrics()

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._measure])
        for path in HEALTH_PATHS:
            app.router.add_get(path, self.health)
        app.router.add_post("/predict", self.predict)
        app.router.add_get("/metrics", self.metrics_handler)
        return app

    async def load(self, load_seconds: float = 0.0) -> None:
        if load_seconds > 0:
            await asyncio.sleep(load_seconds)  # simulate a big checkpoint download
        # Fitting takes milliseconds, but a thread keeps health checks answered meanwhile.
        self.model = await asyncio.get_running_loop().run_in_executor(None, fit_demand_model)
        self.metrics.model_loaded = 1

    @web.middleware
    async def _measure(self, request: web.Request, handler):
        # Label by route template, never the raw URL, so scanners can't blow up cardinality.
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else "unmatched"
        self.metrics.in_flight += 1
        start = time.perf_counter()
        code = 500
        try:
            response = await handler(request)
            code = response.status
            return response
        except web.HTTPException as exc:
            code = exc.status
            raise
        finally:
            self.metrics.in_flight -= 1
            self.metrics.observe(path, code, time.perf_counter() - start)

    async def health(self, request: web.Request) -> web.Response:
        if self.model is None:
            return web.json_response({"status": "loading"}, status=503)
        return web.json_response({"status": "ok", "model": MODEL_NAME, "version": MODEL_VERSION})

    async def predict(self, request: web.Request) -> web.Response:
        model = self.model
        if model is None:
            return web.json_response({"error": "model is still loading"}, status=503)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "body must be valid JSON"}, status=400)
        try:
            features = parse_instances(body)
        except InputError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        predictions = model.predict(features)
        return web.json_response({"predictions": predictions.tolist(), "model": MODEL_NAME,
                                  "version": MODEL_VERSION})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        # Set the header directly: aiohttp's content_type= argument rejects parameters.
        return web.Response(text=self.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _serve(host: str, port: int, load_seconds: float, delay_ms: float) -> None:
    server = InferenceServer(delay_ms)
    runner = web.AppRunner(server.make_app(), access_log=None, shutdown_timeout=5.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before listening: a SIGTERM that races startup must still mean a clean exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def load_then_announce() -> None:
        started = time.perf_counter()
        try:
            await server.load(load_seconds)
        except Exception as exc:  # stay up and unhealthy (503) so the failure is visible
            _log(f"model load failed: {exc!r}")
            return
        _log(f"ready: model {MODEL_NAME} v{MODEL_VERSION} loaded in {time.perf_counter() - started:.3f}s")

    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        _log(f"listening on http://{host}:{port} (model loading)")
        loading = asyncio.create_task(load_then_announce())
        await stop.wait()
        _log("shutting down")
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
    finally:
        await runner.cleanup()
    _log("stopped")


def run(host: str = "127.0.0.1", port: int = 8000, load_seconds: float = 0.0, delay_ms: float = 0.0) -> None:
    """Serve until SIGTERM or SIGINT. Raises OSError if the port can't be bound."""
    asyncio.run(_serve(host, port, load_seconds, delay_ms))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlinfra serve", description="Run the reference inference server.")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"),
                        help="interface to bind (env HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to bind (env PORT, default 8000)")
    parser.add_argument("--load-seconds", type=float, default=0.0,
                        help="extra simulated model load time: a server that becomes ready late")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="latency added to every /predict: a slow server")
    args = parser.parse_args(argv)
    port = args.port
    if port is None:
        try:
            port = int(os.environ.get("PORT", "8000"))
        except ValueError:
            parser.error(f"PORT must be an integer, got {os.environ['PORT']!r}")
    if args.load_seconds < 0 or args.delay_ms < 0:
        parser.error("--load-seconds and --delay-ms must not be negative")
    try:
        run(args.host, port, args.load_seconds, args.delay_ms)
    except OSError as exc:
        _log(f"cannot listen on {args.host}:{port}: {exc.strerror or exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
