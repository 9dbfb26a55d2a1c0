"""The reference inference server every default stack runs (``mlinfra serve``).

A small but real model: ridge regression for hourly demand, fitted on a seeded
synthetic dataset. It exists so that deployments, health checks and latency
budgets can be verified end to end against something that behaves like a
production model server:

* ``/health`` (also ``/healthz``, ``/ping``, ``/v2/health/ready``): 503 while
  the model loads, 200 once it is ready. Loading starts only after the socket
  is listening, so a health checker can tell "up but not ready" from "down".
* ``POST /predict``: ``{"instances": [{...}, ...]}`` -> ``{"predictions": [...]}``.
* ``/metrics``: Prometheus text exposition, written by hand (no dependency).

Cheap to start, since the local target starts many at once (bench/serve.py): only
aiohttp's server half is imported (``_import_web``), numpy only to fit the model or
predict a large batch, and the fitted weights are cached on disk, so a server after
the first is ready without numpy. Cheap per request: aiohttp's low-level server and
one dict lookup to route, plain-Python validation and dot product for small batches,
pre-encoded bodies, metrics rendered only when scraped, no access log.

``--load-seconds`` and ``--delay-ms`` make a late or slow server on purpose, for
testing readiness timeouts and latency budgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

MODEL_NAME = "demand-ridge"
MODEL_VERSION = "1"
MAX_INSTANCES = 1000
DEFAULT_SEED = 20240601
# From this many instances numpy predicts (imported on first use); below it a dot product in
# Python is faster than building arrays (about equal at 64 instances on this project's machine).
NUMPY_MIN_BATCH = 64

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
    import numpy as np

    hour = np.asarray(hour, dtype=float)
    angle = 2.0 * np.pi * hour / 24.0
    dow = np.asarray(day_of_week, dtype=int)
    dow_onehot = (dow[:, None] == np.arange(1, 7)[None, :]).astype(float)
    temperature = np.asarray(temperature, dtype=float)
    return np.column_stack(
        [
            np.sin(angle),
            np.cos(angle),
            np.sin(2 * angle),
            np.cos(2 * angle),
            dow_onehot,
            np.asarray(price, dtype=float),
            np.asarray(promo, dtype=float),
            temperature,
            (temperature - 15.0) ** 2,
        ]
    )


def generate_demand_data(n_samples: int, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic hourly demand: returns (design matrix, target units sold).

    Demand peaks in the evening and around lunch, is higher on Friday and the
    weekend, falls with price, rises by ~25 units on promotion and is best at
    mild temperatures. Gaussian noise (sd 6) keeps the fit honest.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    hour = rng.integers(0, 24, n_samples)
    dow = rng.integers(0, 7, n_samples)
    price = rng.uniform(5.0, 15.0, n_samples)
    promo = (rng.random(n_samples) < 0.2).astype(float)
    temperature = rng.normal(15.0, 8.0, n_samples)
    daily = 25.0 * np.cos(2 * np.pi * (hour - 18) / 24) + 10.0 * np.cos(4 * np.pi * (hour - 12) / 24)
    weekly = np.select([dow == 4, dow >= 5], [8.0, 15.0], 0.0)
    demand = (
        100.0
        + daily
        + weekly
        - 4.0 * (price - 10.0)
        + 25.0 * promo
        + 1.2 * (temperature - 15.0)
        - 0.04 * (temperature - 15.0) ** 2
        + rng.normal(0.0, 6.0, n_samples)
    )
    return build_features(hour, dow, price, promo, temperature), demand


@dataclass(frozen=True)
class DemandModel:
    coef: np.ndarray  # one weight per FEATURE_NAMES entry, in raw feature units
    intercept: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        import numpy as np

        # Demand cannot be negative, whatever a far extrapolation says.
        return np.maximum(features @ self.coef + self.intercept, 0.0)


def fit_ridge(features: np.ndarray, target: np.ndarray, alpha: float = 1.0) -> DemandModel:
    """Closed-form ridge regression on standardized features.

    Standardizing makes one alpha mean the same for every feature; the
    intercept is not penalized. Weights are mapped back to raw units so that
    prediction is a single matrix-vector product.
    """
    import numpy as np

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


class FittedWeights:
    """A fitted model as plain floats. ``predict`` takes ``_columns``' lists and returns
    floats: a dot product in Python below ``NUMPY_MIN_BATCH`` instances, ``DemandModel``
    from there on (the same sum, to rounding in the last bits)."""

    def __init__(self, coef, intercept: float) -> None:
        self.coef, self.intercept = tuple(float(c) for c in coef), float(intercept)
        if len(self.coef) != len(FEATURE_NAMES) or not all(map(math.isfinite, self.coef + (self.intercept,))):
            raise ValueError(f"need {len(FEATURE_NAMES)} finite weights and a finite intercept")
        self._model: DemandModel | None = None

    @property
    def model(self) -> DemandModel:
        if self._model is None:
            import numpy as np

            self._model = DemandModel(coef=np.array(self.coef), intercept=self.intercept)
        return self._model

    def predict(self, hours, dows, prices, promos, temps) -> list[float]:
        if len(hours) >= NUMPY_MIN_BATCH:
            return self.model.predict(build_features(hours, dows, prices, promos, temps)).tolist()
        w_sin, w_cos, w_sin2, w_cos2, *w_dow, w_price, w_promo, w_temp, w_temp_sq = self.coef
        dow_w, b, sin, cos, turn = (0.0, *w_dow), self.intercept, math.sin, math.cos, 2.0 * math.pi
        out = []
        for h, d, p, pr, t in zip(hours, dows, prices, promos, temps, strict=True):
            angle, u = turn * h / 24.0, t - 15.0
            y = (
                w_sin * sin(angle)
                + w_cos * cos(angle)
                + w_sin2 * sin(2 * angle)
                + w_cos2 * cos(2 * angle)
                + dow_w[d]
                + w_price * p
                + w_promo * pr
                + w_temp * t
                + w_temp_sq * (u * u)
                + b
            )
            out.append(y if y > 0.0 else 0.0)  # demand cannot be negative
        return out


def load_weights(seed: int = DEFAULT_SEED, n_samples: int = 20_000, alpha: float = 1.0) -> FittedWeights:
    """``fit_demand_model(seed, n_samples, alpha)`` from the cache, else fitted and cached.

    The cache (``$XDG_CACHE_HOME/mlinfra``) is keyed by this file's bytes, numpy's version
    file and the parameters, so it only ever holds what a fit here would return. A missing
    or damaged file means a fit; writes are atomic, so servers that all miss at once each
    write a whole file."""
    path = _cache_path(seed, n_samples, alpha)
    weights = _read_cache(path)
    if weights is None:
        model = fit_demand_model(seed, n_samples, alpha)
        weights = FittedWeights(model.coef.tolist(), model.intercept)
        weights._model = model
        if path is not None:
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(f"{path}.{os.getpid()}.tmp", "w", encoding="utf-8") as f:
                    json.dump({"coef": weights.coef, "intercept": weights.intercept}, f)
                os.replace(f"{path}.{os.getpid()}.tmp", path)
    return weights


def cached_weights(seed: int = DEFAULT_SEED, n_samples: int = 20_000, alpha: float = 1.0) -> FittedWeights | None:
    """``load_weights``' answer if the cache holds it, else None (nothing is fitted)."""
    return _read_cache(_cache_path(seed, n_samples, alpha))


def _read_cache(path: str | None) -> FittedWeights | None:
    try:
        with open(path or "", encoding="utf-8") as f:
            saved = json.load(f)
        return FittedWeights(saved["coef"], saved["intercept"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cache_path(seed: int, n_samples: int, alpha: float) -> str | None:
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("numpy")
    if spec is None or not spec.submodule_search_locations:
        return None
    key = hashlib.sha256(repr((seed, n_samples, alpha)).encode())
    try:
        for name in (__file__, os.path.join(list(spec.submodule_search_locations)[0], "version.py")):
            with open(name, "rb") as f:
                key.update(f.read())
    except OSError:
        return None
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "mlinfra", f"{MODEL_NAME}-v{MODEL_VERSION}-{key.hexdigest()[:20]}.json")


# field -> (lowest, highest, highest is excluded, must be whole). Hour may be
# fractional (14.5) but must stay below 24, since 24:00 is 0:00 of the next day.
_FEATURE_RANGES = {
    "hour": (0, 24, True, False),
    "day_of_week": (0, 6, False, True),
    "price": (0, 1e6, False, False),
    "promo": (0, 1, False, True),
    "temperature": (-60, 60, False, False),
}
_KNOWN = FEATURE_DEFAULTS.keys()


class InputError(ValueError):
    """A request the client must fix (HTTP 400); the message names the field."""


def _check_value(value, where: str, low: float, high: float, exclusive: bool, whole: bool) -> None:
    """Raise an InputError that says what is wrong with one value (the slow path)."""
    # bool is an int subclass in Python; "price": true is a client bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where} must be a number, got {json.dumps(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # an int is finite, however large
        raise InputError(f"{where} must be a finite number, got {value}")
    if not low <= value <= high or (exclusive and value == high):
        raise InputError(f"{where} must be in [{low:g}, {high:g}{')' if exclusive else ']'}, got {value}")
    if whole and value != int(value):
        raise InputError(f"{where} must be a whole number, got {value}")


Columns = tuple[list, list, list, list, list]  # hour, day_of_week, price, promo, temperature


def _columns(body) -> Columns:
    """Validate a /predict body; return its columns (hour, day_of_week, price, promo,
    temperature) as lists of Python numbers, day_of_week as ints.

    The fast path is one pass of exact type and range checks (NaN fails them all).
    Whatever it does not take, valid (a day_of_week of 2.0) or not, goes through every
    rule in turn, which words the first error or accepts the body."""
    instances = body.get("instances") if type(body) is dict else None
    if type(instances) is list and 0 < len(instances) <= MAX_INSTANCES:
        columns: Columns = ([], [], [], [], [])
        hours, dows, prices, promos, temps = columns
        for instance in instances:
            if type(instance) is not dict or not instance.keys() <= _KNOWN:
                break
            get = instance.get
            h, d, p, pr, t = (
                get("hour", 12),
                get("day_of_week", 2),
                get("price", 10.0),
                get("promo", 0),
                get("temperature", 15.0),
            )
            if not (
                (type(h) is int or type(h) is float)
                and 0 <= h < 24
                and type(d) is int
                and 0 <= d <= 6
                and (type(p) is float or type(p) is int)
                and 0 <= p <= 1e6
                and (type(pr) is int or type(pr) is bool)
                and (pr == 0 or pr == 1)
                and (type(t) is float or type(t) is int)
                and -60 <= t <= 60
            ):
                break
            hours.append(h)
            dows.append(d)
            prices.append(p)
            promos.append(pr)
            temps.append(t)
        else:
            return columns
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
        if not instance.keys() <= _KNOWN:
            # A typo like "temprature" must not silently become the default.
            unknown = sorted(instance.keys() - _KNOWN)[0]
            raise InputError(f"instances[{i}].{unknown} is not a known field (known: {', '.join(FEATURE_DEFAULTS)})")
    columns = ([], [], [], [], [])
    for column, (name, (low, high, exclusive, whole)) in zip(columns, _FEATURE_RANGES.items(), strict=True):
        for i, instance in enumerate(instances):
            value = instance.get(name, FEATURE_DEFAULTS[name])
            # JSON true/false is a natural way to say promo; for anything else a bool is a bug.
            value = int(value) if name == "promo" and isinstance(value, bool) else value
            _check_value(value, f"instances[{i}].{name}", low, high, exclusive, whole)
            column.append(int(value) if whole else value)
    return columns


def parse_instances(body) -> np.ndarray:
    """Validate a /predict body and return its design matrix."""
    return build_features(*_columns(body))


# --------------------------------------------------------------------------- metrics


class Metrics:
    """Just enough of a Prometheus registry for this server's four metrics: a few
    additions per request (the bucket found by bisection), text only on a scrape."""

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
        i = bisect_left(DURATION_BUCKETS, seconds)  # the first bound >= seconds
        if i < len(DURATION_BUCKETS):
            self.bucket_counts[i] += 1
        self.duration_sum += seconds
        self.duration_count += 1

    def render(self) -> str:
        def esc(value: str) -> str:
            return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        lines = [
            "# HELP mlinfra_requests_total HTTP requests handled, by route and status code.",
            "# TYPE mlinfra_requests_total counter",
        ]
        for (path, code), count in sorted(self.requests.items()):
            lines.append(f'mlinfra_requests_total{{path="{esc(path)}",code="{code}"}} {count}')
        lines += [
            "# HELP mlinfra_request_duration_seconds Time to handle an HTTP request.",
            "# TYPE mlinfra_request_duration_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip(DURATION_BUCKETS, self.bucket_counts, strict=True):
            cumulative += count
            lines.append(f'mlinfra_request_duration_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines += [
            f'mlinfra_request_duration_seconds_bucket{{le="+Inf"}} {self.duration_count}',
            f"mlinfra_request_duration_seconds_sum {self.duration_sum!r}",
            f"mlinfra_request_duration_seconds_count {self.duration_count}",
            "# HELP mlinfra_requests_in_flight HTTP requests being handled right now.",
            "# TYPE mlinfra_requests_in_flight gauge",
            f"mlinfra_requests_in_flight {self.in_flight}",
            "# HELP mlinfra_model_loaded 1 once the model is loaded and serving, else 0.",
            "# TYPE mlinfra_model_loaded gauge",
            f"mlinfra_model_loaded {self.model_loaded}",
        ]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- HTTP


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} mlinfra serve: {message}", file=sys.stderr, flush=True)


def _import_web(bare: bool = False):
    """``aiohttp.web``, or with ``bare`` the parts of it this server uses, imported without
    the HTTP client that ``aiohttp/__init__`` imports eagerly (60 ms of aiohttp's 170 here).

    The server modules import only siblings, so ``aiohttp`` can be a bare package object.
    Only for a process that is nothing but this server (``main``): a later
    ``aiohttp.ClientSession`` would fail. A release laid out otherwise gets the usual import."""
    import importlib.util
    import types

    if bare and "aiohttp" not in sys.modules:
        try:
            spec = importlib.util.find_spec("aiohttp")
            if spec is None or spec.origin is None:
                raise ImportError("aiohttp is not installed")
            with open(spec.origin, encoding="utf-8") as f:
                version = f.readline().partition("__version__ = ")[2].strip().strip("\"'")  # aiohttp.http wants it
            if not version:
                raise ImportError("no __version__ on the first line of aiohttp/__init__.py")
            package = sys.modules["aiohttp"] = types.ModuleType("aiohttp")
            vars(package).update(
                __path__=spec.submodule_search_locations, __spec__=spec, __file__=spec.origin, __version__=version
            )
            from aiohttp import web_exceptions, web_response, web_runner, web_server

            return types.SimpleNamespace(
                Response=web_response.Response,
                HTTPException=web_exceptions.HTTPException,
                HTTPExpectationFailed=web_exceptions.HTTPExpectationFailed,
                Server=web_server.Server,
                ServerRunner=web_runner.ServerRunner,
                TCPSite=web_runner.TCPSite,
            )
        except Exception:  # noqa: BLE001
            for name in [name for name in sys.modules if name.partition(".")[0] == "aiohttp"]:
                del sys.modules[name]
    from aiohttp import web

    return web


_JSON = {"content_type": "application/json", "charset": "utf-8"}
_HEALTH_OK = json.dumps({"status": "ok", "model": MODEL_NAME, "version": MODEL_VERSION}).encode()
_TAIL = f'], "model": "{MODEL_NAME}", "version": "{MODEL_VERSION}"}}'.encode()
_scan = vars(json.JSONDecoder())["scan_once"]  # json.loads' C scanner, without its Python layers


def _loads(raw: bytes):
    """``json.loads(raw)``, cheaper for the common case: UTF-8, no surrounding whitespace."""
    try:
        text = raw.decode()
        value, end = _scan(text, 0)
        if end == len(text):
            return value
    except (ValueError, StopIteration):  # StopIteration: no value at 0 (or whitespace first)
        pass
    return json.loads(raw)  # the exact rules and error for everything else


_GET: tuple[str, ...] = ("GET", "HEAD")
_POST: tuple[str, ...] = ("POST",)


class InferenceServer:
    """The endpoints, model and metrics. ``handle`` is the whole server: one dict lookup
    routes a request, and every request is counted by route template (404s and 405s as
    ``unmatched``), never by raw URL, so scanners cannot blow up metric cardinality."""

    def __init__(self, delay_ms: float = 0.0, web=None) -> None:
        self.web = web or _import_web()
        self.delay_s = max(delay_ms, 0.0) / 1000.0
        self.model: FittedWeights | None = None
        self.metrics = Metrics()
        self.routes = {path: (path, _GET, self.health) for path in HEALTH_PATHS}
        self.routes.update(
            {"/predict": ("/predict", _POST, self.predict), "/metrics": ("/metrics", _GET, self.metrics_handler)}
        )

    def make_app(self):
        """An ``aiohttp.web.Application`` with these endpoints, to embed elsewhere."""
        app = self.web.Application()
        app.router.add_route("*", "/{path:.*}", self.handle)
        return app

    async def load(self, load_seconds: float = 0.0) -> None:
        if load_seconds > 0:
            await asyncio.sleep(load_seconds)  # simulate a big checkpoint download
        # Cached: a small file read. Otherwise numpy and the fit take a while, in a thread
        # so that health checks are answered meanwhile.
        self.model = cached_weights() or await asyncio.get_running_loop().run_in_executor(None, load_weights)
        self.metrics.model_loaded = 1

    async def handle(self, request):
        metrics, web = self.metrics, self.web
        metrics.in_flight += 1
        start = time.perf_counter()
        label, code = "unmatched", 500
        try:
            route = self.routes.get(request.path)
            if route is None:
                response = web.Response(status=404, text="404: Not Found")
            elif request.method not in route[1]:
                response = web.Response(
                    status=405, text="405: Method Not Allowed", headers={"Allow": ",".join(sorted(route[1]))}
                )
            else:
                label = route[0]
                response = await route[2](request)
            code = response.status
            return response
        except web.HTTPException as exc:  # a body over client_max_size (413), a bad Expect (417)
            code = exc.status
            raise
        finally:
            metrics.in_flight -= 1
            metrics.observe(label, code, time.perf_counter() - start)

    async def health(self, request):
        if self.model is None:
            return self.web.Response(body=b'{"status": "loading"}', status=503, **_JSON)
        return self.web.Response(body=_HEALTH_OK, **_JSON)

    async def predict(self, request):
        model, web = self.model, self.web
        if model is None:
            return web.Response(body=b'{"error": "model is still loading"}', status=503, **_JSON)
        if "Expect" in request.headers and request.version == (1, 1):  # curl, before a large body
            if request.headers["Expect"].lower() != "100-continue":
                raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers['Expect']}")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's router does
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        try:
            body = _loads(await request.read())
        except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return web.Response(body=b'{"error": "body must be valid JSON"}', status=400, **_JSON)
        try:
            columns = _columns(body)
        except InputError as exc:
            return web.Response(body=json.dumps({"error": str(exc)}).encode(), status=400, **_JSON)
        # Finite floats (the inputs are bounded), so their repr is their JSON, as in json.dumps.
        predictions = ", ".join(map(float.__repr__, model.predict(*columns))).encode()
        return web.Response(body=b'{"predictions": [' + predictions + _TAIL, **_JSON)

    async def metrics_handler(self, request):
        # Set the header directly: aiohttp's content_type= argument rejects parameters.
        return self.web.Response(
            text=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )


async def _serve(host: str, port: int, load_seconds: float, delay_ms: float, web=None) -> None:
    server = InferenceServer(delay_ms, web)
    runner = server.web.ServerRunner(server.web.Server(server.handle, access_log=None), shutdown_timeout=5.0)
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
        await server.web.TCPSite(runner, host, port).start()
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


def run(host: str = "127.0.0.1", port: int = 8000, load_seconds: float = 0.0, delay_ms: float = 0.0, web=None) -> None:
    """Serve until SIGTERM or SIGINT. Raises OSError if the port can't be bound."""
    asyncio.run(_serve(host, port, load_seconds, delay_ms, web))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="mlinfra serve", description="Run the reference inference server.")
    parser.add_argument(
        "--host", default=os.environ.get("HOST", "127.0.0.1"), help="interface to bind (env HOST, default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=None, help="port to bind (env PORT, default 8000)")
    parser.add_argument(
        "--load-seconds",
        type=float,
        default=0.0,
        help="extra simulated model load time: a server that becomes ready late",
    )
    parser.add_argument("--delay-ms", type=float, default=0.0, help="latency added to every /predict: a slow server")
    args = parser.parse_args(argv)
    port = args.port
    if port is None:
        try:
            port = int(os.environ.get("PORT", "8000"))
        except ValueError:
            parser.error(f"PORT must be an integer, got {os.environ['PORT']!r}")
    if args.load_seconds < 0 or args.delay_ms < 0:
        parser.error("--load-seconds and --delay-ms must not be negative")
    try:  # this process is nothing but the server: aiohttp's server half is enough
        run(args.host, port, args.load_seconds, args.delay_ms, _import_web(bare=True))
    except OSError as exc:
        _log(f"cannot listen on {args.host}:{port}: {exc.strerror or exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
