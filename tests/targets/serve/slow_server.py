"""A stand-in model server for the Ray Serve tests: stdlib only, ready in ~50 ms.

``/health`` answers at once; ``/predict`` sleeps ``SLOW_MS`` (default 200) so that requests
queue and Serve has a reason to scale, and reports its own "token latency" in an
``X-Token-Latency-Ms`` header: ``TOKEN_MS`` when set (what a custom policy scales on), else the
time it slept. Threaded, so one replica serves its requests concurrently.
"""

import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, body: bytes, latency_ms: float | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if latency_ms is not None:
            self.send_header("X-Token-Latency-Ms", f"{latency_ms:.1f}")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/health":
            self._reply(b'{"status": "ok"}')
        elif self.path == "/pid":
            self._reply(str(os.getpid()).encode())
        else:
            self.send_error(404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        slow = float(os.environ.get("SLOW_MS", "200"))
        time.sleep(slow / 1000)
        self._reply(b'{"predictions": [1.0]}', float(os.environ.get("TOKEN_MS", slow)))


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
