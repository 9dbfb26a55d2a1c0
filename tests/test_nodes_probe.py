"""Probing a stack's nodes: all at once, so one that does not answer costs its timeout once."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from mlinfra.nodes import Node, probe_all

COUNT = 4


def test_nodes_are_probed_at_the_same_time():
    """Each health request is held until all four are in flight (a barrier): probed one after
    another, the first would wait out the barrier and every node would read as not ready."""
    arrived = threading.Barrier(COUNT, timeout=1.5)

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                arrived.wait()
                code = 200
            except threading.BrokenBarrierError:
                code = 503
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        nodes = [Node(f"r{i}-0", f"n{i}", f"r{i}", 0, url, f"{url}/health") for i in range(COUNT)]
        asked = []
        probed = probe_all(nodes, lambda node: asked.append(node.key) or (lambda: None))
    finally:
        server.shutdown()
        server.server_close()
    assert [n.key for n in probed] == [n.key for n in nodes]  # in the stack's order
    assert sorted(asked) == sorted(n.key for n in nodes)
    assert [(n.ready, n.alive, n.health_status) for n in probed] == [(True, True, 200)] * COUNT


def test_one_node_is_probed_without_a_pool():
    probed = probe_all([Node("a-0", "n", "a", 0, "http://127.0.0.1:9", "http://127.0.0.1:9/health")], lambda n: None)
    assert [(n.ready, n.alive) for n in probed] == [(False, None)]
