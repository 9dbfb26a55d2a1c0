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
import os
import signal
import sys
import time
from bisect import bisect_left
from typing import TYPE_CHECKING

# The OpenAI-compatible text endpoints, backed by textgen's model.
from mlinfra.completions import Completions

# On a GCP node this file runs from /opt/mlinfra, with the model beside it as mlinfra/demand.py.
from mlinfra.demand import (  # noqa: F401 (re-exported: serve's API)
    DEFAULT_SEED,
    FEATURE_DEFAULTS,
    FEATURE_NAMES,
    MAX_INSTANCES,
    MODEL_NAME,
    MODEL_VERSION,
    NUMPY_MIN_BATCH,
    DemandModel,
    FittedWeights,
    InputError,
    _columns,
    build_features,
    cached_weights,
    fit_demand_model,
    fit_ridge,
    generate_demand_data,
    load_weights,
    parse_instances,
)

if TYPE_CHECKING:
    pass

HEALTH_PATHS = ("/health", "/healthz", "/ping", "/v2/health/ready")
# Prometheus client default buckets, so dashboards built for other servers fit.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


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
                StreamResponse=web_response.StreamResponse,
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

    def __init__(self, delay_ms: float = 0.0, web=None, token_ms: float = 0.0) -> None:
        self.web = web or _import_web()
        self.delay_s = max(delay_ms, 0.0) / 1000.0
        self.model: FittedWeights | None = None
        self.metrics = Metrics()
        self.routes = {path: (path, _GET, self.health) for path in HEALTH_PATHS}
        self.routes.update(
            {"/predict": ("/predict", _POST, self.predict), "/metrics": ("/metrics", _GET, self.metrics_handler)}
        )
        self.routes.update(Completions(self.web, token_ms).routes())

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


async def _serve(host: str, port: int, load_seconds: float, delay_ms: float, web=None, token_ms: float = 0.0) -> None:
    server = InferenceServer(delay_ms, web, token_ms)
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


def run(
    host: str = "127.0.0.1", port: int = 8000, load_seconds: float = 0.0, delay_ms: float = 0.0, web=None, token_ms=0.0
) -> None:
    """Serve until SIGTERM or SIGINT. Raises OSError if the port can't be bound."""
    asyncio.run(_serve(host, port, load_seconds, delay_ms, web, token_ms))


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
    parser.add_argument("--token-ms", type=float, default=0.0, help="time per streamed token of /v1/completions")
    args = parser.parse_args(argv)
    port = args.port
    if port is None:
        try:
            port = int(os.environ.get("PORT", "8000"))
        except ValueError:
            parser.error(f"PORT must be an integer, got {os.environ['PORT']!r}")
    if args.load_seconds < 0 or args.delay_ms < 0 or args.token_ms < 0:
        parser.error("--load-seconds, --delay-ms and --token-ms must not be negative")
    try:  # this process is nothing but the server: aiohttp's server half is enough
        run(args.host, port, args.load_seconds, args.delay_ms, _import_web(bare=True), args.token_ms)
    except OSError as exc:
        _log(f"cannot listen on {args.host}:{port}: {exc.strerror or exc}")
        return 1
    return 0


def main_process(argv: list[str] | None = None) -> None:
    """``main`` as a process of its own (``python -m mlinfra.serve``, ``mlinfra serve``): once the
    server has closed its sockets and said so, leave without the interpreter's teardown, which
    finalizes every module aiohttp and asyncio loaded: ~45 ms of CPU per server, paid by every
    node a destroy or rebuild stops (ten at once on a small machine)."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main_process()
