"""The streaming row of bench/loadgen.py: mlinfra's token figures against a plain client's.

Against ``python -m mlinfra.serve --token-ms T`` (the reference server's real trigram model,
one token per T ms), both at the same concurrency, each in its own process pinned to the
generator CPU, taking turns per round:

* **mlinfra**: ``verify.stream.run_stream`` (asyncio streams, SSE parsed as it arrives);
* **plain**: one blocking socket per connection in a thread, which only appends
  ``(time.monotonic(), bytes)`` for every ``recv``; afterwards the chunked framing is undone,
  the events split at blank lines, and each token event is given the time of the ``recv`` that
  completed it. TTFT, ITL and tokens/s are then computed from those raw timestamps with
  numpy's exact percentiles (``inverted_cdf``, the rule mlinfra's histogram follows to 0.78 %).

Above concurrency 1 the two do not offer the same load: mlinfra's connections start together and,
every stream being as long, stay in step, so requests reach the server in bursts and wait for
each other's first token; the plain client's threads drift apart. Holding the plain client's
sends to a barrier raised its TTFT p50 from 2.9-3.5 ms to 4.4 ms (token-ms 2, concurrency 4):
that, not the measurement, is most of the TTFT difference that row shows on a busy machine
(mlinfra/plain TTFT p50 from 1.04 to 1.45 across runs here; at concurrency 1, 1.00-1.01).

    .venv/bin/python bench/loadgen.py --only-streaming [--token-ms 2] [--max-tokens 64]
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mlinfra.verify.section import DEFAULT_PROMPTS  # noqa: E402
from mlinfra.verify.stream import request_body, run_stream  # noqa: E402


def plain_client(port: int, max_tokens: int, requests: int, concurrency: int) -> list[dict]:
    """Per request: sent, token event times, done (monotonic seconds), from raw recv timestamps."""
    bodies = [request_body(p, max_tokens, chat=False) for p in DEFAULT_PROMPTS]
    samples: list[dict] = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def worker() -> None:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body = bodies[i % len(bodies)]
            head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            reads: list[tuple[float, bytes]] = []
            sent = time.monotonic()
            sock.sendall(head + body)
            while True:
                data = sock.recv(65536)
                reads.append((time.monotonic(), data))
                if not data or data.endswith(b"0\r\n\r\n"):  # the last chunk of a chunked body
                    break
            samples.append(_timestamps(sent, reads))
        sock.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples


def _timestamps(sent: float, reads: list[tuple[float, bytes]]) -> dict:
    raw = b"".join(data for _, data in reads)
    ends, total = [], 0
    for when, data in reads:
        total += len(data)
        ends.append((total, when))

    def arrival(offset: int) -> float:  # the time of the recv that brought raw[offset]
        return next(when for end, when in ends if end > offset)

    pos = raw.index(b"\r\n\r\n") + 4
    payload, where = bytearray(), []  # decoded body bytes, and the raw offset of each
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol], 16)
        if size == 0:
            break
        payload += raw[eol + 2 : eol + 2 + size]
        where += range(eol + 2, eol + 2 + size)
        pos = eol + 2 + size + 2
    tokens, start = [], 0
    while (end := payload.find(b"\n\n", start)) >= 0:
        data = bytes(payload[start:end]).removeprefix(b"data: ")
        if data != b"[DONE]":
            event = json.loads(data)
            if any(choice.get("text") for choice in event.get("choices", [])):
                tokens.append(arrival(where[end + 1]))
        start = end + 2
    return {"sent": sent, "tokens": tokens, "done": arrival(len(raw) - 1)}


def figures_from_samples(samples: list[dict]) -> dict:
    import numpy as np

    def pct(values, p):
        return float(np.percentile(np.asarray(values), p, method="inverted_cdf")) if values else 0.0

    ttft = [(s["tokens"][0] - s["sent"]) * 1000 for s in samples]
    itl = [(b - a) * 1000 for s in samples for a, b in zip(s["tokens"], s["tokens"][1:], strict=False)]
    rates = [len(s["tokens"]) / (s["tokens"][-1] - s["sent"]) for s in samples]
    return {"requests": len(samples), "ttft_p50_ms": pct(ttft, 50), "ttft_p95_ms": pct(ttft, 95),
            "itl_p50_ms": pct(itl, 50), "itl_p95_ms": pct(itl, 95), "tokens_per_s_p50": pct(rates, 50),
            "tokens": sum(len(s["tokens"]) for s in samples)}


def inner(tool: str, port: int, max_tokens: int, requests: int, concurrency: int) -> None:
    """One run in this process; prints its figures as JSON."""
    if tool == "plain":
        print(json.dumps(figures_from_samples(plain_client(port, max_tokens, requests, concurrency))))
        return
    result = run_stream(f"http://127.0.0.1:{port}/v1/completions", DEFAULT_PROMPTS, max_tokens=max_tokens,
                        requests=requests, concurrency=concurrency, warmup=0)
    ttft, itl = result.percentiles_ms("ttft"), result.percentiles_ms("itl")
    print(json.dumps({"requests": result.ok, "ttft_p50_ms": ttft["p50_ms"], "ttft_p95_ms": ttft["p95_ms"],
                      "itl_p50_ms": itl["p50_ms"], "itl_p95_ms": itl["p95_ms"],
                      "tokens_per_s_p50": result.rate_percentile(50), "tokens": result.output_tokens,
                      "errors": result.errors}))


def streaming_row(start_server, pin: list[str], token_ms: float, max_tokens: int, requests: int,
                  concurrency: int, rounds: int) -> None:
    """Start the reference server with ``--token-ms``; at concurrency 1 (where the two clients
    offer the same load, so a difference is the measurement's) and at ``concurrency``, run both
    clients ``rounds`` times interleaved and print the medians side by side."""
    for level in dict.fromkeys((1, concurrency)):
        _row(start_server, pin, token_ms, max_tokens, requests, level, rounds)


def _row(start_server, pin: list[str], token_ms: float, max_tokens: int, requests: int, concurrency: int,
         rounds: int) -> None:
    import statistics

    proc, port = start_server(token_ms)
    runs: dict[str, list[dict]] = {"mlinfra": [], "plain": []}
    try:
        inner_run = [*pin, sys.executable, str(Path(__file__).resolve().parent / "loadgen.py"), "--inner-streaming"]
        subprocess.run([*inner_run, "plain", str(port), str(max_tokens), "8", "2"], capture_output=True, check=True)
        for _ in range(rounds):
            for tool in runs:
                out = subprocess.run([*inner_run, tool, str(port), str(max_tokens), str(requests), str(concurrency)],
                                     capture_output=True, text=True, check=True).stdout
                runs[tool].append(json.loads(out))
    finally:
        proc.terminate()
        proc.wait(10)
    keys = ("ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms", "tokens_per_s_p50")
    print(f"\n== streaming: mlinfra serve --token-ms {token_ms:g}, /v1/completions max_tokens {max_tokens}, "
          f"{requests} requests at concurrency {concurrency}, median of {rounds} rounds ==")
    print(f"  {'client':<9}" + "".join(f"{k:>18}" for k in keys) + "  tokens/run")
    medians = {}
    for tool, rows in runs.items():
        medians[tool] = {k: statistics.median(r[k] for r in rows) for k in keys}
        tokens = statistics.median(r["tokens"] for r in rows)
        print(f"  {tool:<9}" + "".join(f"{medians[tool][k]:>18.3f}" for k in keys) + f"  {tokens:>10.0f}")
    print(f"  {'ratio':<9}" + "".join(f"{medians['mlinfra'][k] / medians['plain'][k]:>18.3f}"
                                       if medians["plain"][k] else f"{'-':>18}" for k in keys)
          + "  (mlinfra / plain)")
