"""mlinfra's node-side checks, run on each GCP node (stdlib only; any python3 >= 3.8).

The verification gate needs no ingress for its gpu and health checks: each node checks itself
and publishes what it measured as a Compute Engine guest attribute, which the operator reads
with the Compute API (instances.getGuestAttributes) and their own credentials.

    python3 guest_report.py watch /etc/mlinfra/node.json   # under systemd (mlinfra-report.service)
    python3 guest_report.py once /etc/mlinfra/node.json    # one run, for a person on the node

One run: wait for the server's health path on localhost, run the gpu query (the command the
operator sent: the same nvidia-smi query its parser reads) and publish both at once as one JSON
value, ``mlinfra/report`` — heal and verify's health wait for nothing else. Then a sequential
latency sample on localhost (server time, without the network; at most SAMPLE_LIMIT_S), published
as ``mlinfra/latency`` with the same ``run``; with ``verify.protocol = "openai"`` the sample is
streamed completions (the bodies the operator built), measured per token like its own streams. The operator's mlinfra judges the raw figures with
the same parser, diagnosis and latency budget as every other check.

Re-runs on request: ``mlinfra verify --fresh`` changes the metadata value
``mlinfra-check-request`` (Compute API setMetadata, that key only); ``watch`` waits for that change with the metadata server's
``?wait_for_change=true`` and publishes a fresh report whose ``run`` is the new value. A value
ending in `` checks=health,gpu`` (what heal asks) names the checks: no latency sample then, and the
report says ``"latency": null, "latency_pending": false``; the operator then judges the latest
``mlinfra/latency`` of any run, with its age.

Guest attributes (Google's "Setting and querying guest attributes",
https://cloud.google.com/compute/docs/metadata/manage-guest-attributes): enabled by the
``enable-guest-attributes = TRUE`` metadata key; written from the VM with
``PUT http://metadata.google.internal/computeMetadata/v1/instance/guest-attributes/NAMESPACE/KEY``
and the header ``Metadata-Flavor: Google``; meant for small, infrequent values (at most 10
queries a minute per VM, bursts of 3 a second) — so a run is at most two PUTs.
"""

import json
import os
import socket
import subprocess
import sys
import time
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from launch import METADATA_HOST, load  # noqa: E402 (launch.py lies beside this file on the node)

NAMESPACE, KEY = "mlinfra", "report"
LATENCY_KEY = "latency"  # the sample, written after the report: health and gpu never wait for it
REQUEST_KEY = "mlinfra-check-request"  # the operator's re-run request (a metadata value)
CHECK_KEY = "mlinfra-check"  # the check settings the operator sent (JSON)
OUTPUT_CHARS = 2000  # of nvidia-smi's stdout and stderr each: the value stays small
SAMPLES_MAX = 200  # node-side latency requests at most (one integer each in the report)
BOOT_GRACE_S = 900  # at boot the Deep Learning VM installs its driver before the server starts
SAMPLE_LIMIT_S = 120  # a sample stops here (a slow server), so the next request is not kept waiting
WATCH_TIMEOUT_S = 3600  # one wait_for_change request lasts at most this long, then is renewed


def metadata_url(path):
    return "http://%s/computeMetadata/v1/instance/%s" % (METADATA_HOST, path)


def read_metadata(path, etag=None, timeout_s=10):
    """(value, etag) of an instance metadata path; with ``etag``, wait until it changes."""
    url = metadata_url(path)
    if etag is not None:
        url += "?wait_for_change=true&timeout_sec=%d&last_etag=%s" % (WATCH_TIMEOUT_S, etag)
        timeout_s = WATCH_TIMEOUT_S + 30
    with urlopen(Request(url, headers={"Metadata-Flavor": "Google"}), timeout=timeout_s) as response:
        return response.read().decode("utf-8"), response.headers.get("ETag", "")


def wanted_checks(run):
    """The checks a re-run request names ("RUN checks=health,gpu"); None: all of them."""
    names = run.partition(" checks=")[2]
    return set(names.split(",")) if names else None


def publish(value, key=KEY):
    """One PUT of one JSON value to the guest attribute mlinfra/KEY."""
    body = json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")
    url = metadata_url("guest-attributes/%s/%s" % (NAMESPACE, key))
    request = Request(url, data=body, method="PUT", headers={"Metadata-Flavor": "Google"})
    with urlopen(request, timeout=10) as response:
        response.read()


def check_health(url, deadline_s):
    """Poll ``url`` every 2 s until it answers 2xx or the deadline passes."""
    started = time.monotonic()
    status, error, attempts = None, "", 0
    while True:
        attempts += 1
        try:
            with urlopen(url, timeout=5) as response:
                status, error = response.status, ""
        except HTTPError as exc:
            status, error = exc.code, "HTTP %d" % exc.code
        except (URLError, OSError) as exc:
            status, error = None, str(getattr(exc, "reason", exc))
        ok = status is not None and 200 <= status < 300
        waited = time.monotonic() - started
        if ok or waited >= deadline_s:
            return {"ok": ok, "url": url, "status": status, "error": error, "attempts": attempts,
                    "waited_s": round(waited, 3)}
        time.sleep(min(2.0, max(0.0, deadline_s - waited)))


def check_gpu(command, timeout_s=20):
    """nvidia-smi's exit status and output, verbatim (None: it hung and was killed)."""
    started = time.monotonic()
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout_s, universal_newlines=True, errors="replace")
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    except FileNotFoundError:  # what a shell says, so the operator's diagnosis reads it the same way
        returncode, stdout, stderr = 127, "", "%s: command not found\n" % command[0]
    except subprocess.TimeoutExpired:
        returncode, stdout, stderr = None, "", ""
    return {"command": list(command), "returncode": returncode, "stdout": stdout[-OUTPUT_CHARS:],
            "stderr": stderr[-OUTPUT_CHARS:], "timeout_s": timeout_s,
            "elapsed_s": round(time.monotonic() - started, 3)}


def sample_until(limit_s, superseded=None, every_s=5.0):
    """A ``stop()`` for a sample: true after ``limit_s``, or once ``superseded()`` (asked at most
    every ``every_s``: a metadata read) says a newer request waits — heal's must not queue behind it."""
    started = time.monotonic()
    asked = [started]

    def stop():
        now_s = time.monotonic()
        if now_s - started >= limit_s:
            return True
        if superseded is not None and now_s - asked[0] >= every_s:
            asked[0] = now_s
            try:
                return bool(superseded())
            except (URLError, OSError, ValueError):  # the metadata server: ask again next time
                return False
        return False

    return stop


def check_latency(url, payload, requests, warmup, stop=None):
    """Sequential POSTs to the server on localhost: microseconds per successful request; the
    sample stops when ``stop()`` says so (``cut_short``: how many requests it did not send)."""
    stop = stop or sample_until(SAMPLE_LIMIT_S)
    body = json.dumps(payload).encode("utf-8")
    samples, errors = [], {}
    started = time.monotonic()
    cut_short = 0
    for i in range(warmup + requests):
        if stop():
            cut_short = warmup + requests - i
            break
        if i == warmup:  # the measured phase starts after the warm-up
            started = time.monotonic()
        sent = time.monotonic()
        kind = None
        try:
            request = Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
            with urlopen(request, timeout=10) as response:
                response.read()
        except HTTPError as exc:
            kind = "http_%d" % exc.code
        except (URLError, OSError) as exc:
            kind = "timeout" if "timed out" in str(exc) else "connect"
        if i < warmup:
            continue
        if kind is None:
            samples.append(int((time.monotonic() - sent) * 1e6))
        else:
            errors[kind] = errors.get(kind, 0) + 1
    return {"url": url, "requests": requests, "warmup": warmup, "samples_us": samples, "errors": errors,
            "duration_s": round(time.monotonic() - started, 3), "cut_short": cut_short}


class StreamFailed(Exception):
    """One streamed request that went wrong; ``kind`` is what the operator's report counts."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind


def stream_once(url, body, timeout_s):
    """One streamed completion (verify.protocol = "openai"): seconds from send to each event with
    text, to [DONE], and usage.completion_tokens (0: not reported). The same reading as the
    operator's verify/sse.py: an event ends at a blank line, its data lines joined by LF."""
    sent = time.monotonic()
    request = Request(url, data=body, method="POST",
                      headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
    tokens, usage, data = [], 0, []
    try:
        response = urlopen(request, timeout=timeout_s)
    except HTTPError as exc:
        raise StreamFailed("http_%d" % exc.code, "HTTP %d" % exc.code)
    except (URLError, OSError) as exc:
        kind = "timeout" if "timed out" in str(exc) else "connect"
        raise StreamFailed(kind, str(getattr(exc, "reason", exc)))
    with response:
        if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
            raise StreamFailed("not_streaming", "Content-Type %r, not text/event-stream"
                               % response.headers.get("Content-Type"))
        while True:
            try:
                line = response.readline()
            except (socket.timeout, OSError) as exc:
                kind = "stalled" if tokens else "timeout"
                raise StreamFailed(kind, "no byte for %g s (%s)" % (timeout_s, exc))
            if not line:
                raise StreamFailed("closed_early", "the stream ended after %d tokens without [DONE]" % len(tokens))
            at = time.monotonic() - sent
            line = line.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
                continue
            if line or not data:
                continue
            text, data = "\n".join(data), []
            if text.strip() == "[DONE]":
                return tokens, at, usage
            try:
                event = json.loads(text)
            except ValueError:
                raise StreamFailed("malformed_event", "an event is not JSON: %r" % text[:120])
            if not isinstance(event, dict) or not isinstance(event.get("choices", []), list):
                raise StreamFailed("malformed_event", "an event is not a completion chunk: %r" % text[:120])
            if "error" in event:
                raise StreamFailed("server_error", "the server sent an error event: %r" % text[:200])
            for choice in event.get("choices") or []:
                delta = choice.get("delta") if isinstance(choice, dict) else None
                piece = choice.get("text") if isinstance(choice, dict) and "text" in choice else (
                    delta.get("content") if isinstance(delta, dict) else None)
                if isinstance(piece, str) and piece:
                    tokens.append(at)
            if isinstance(event.get("usage"), dict) and isinstance(event["usage"].get("completion_tokens"), int):
                usage = event["usage"]["completion_tokens"]


def three_digits(us):
    """``us`` rounded to three significant digits: inter-token gaps are counted per such value,
    so the report stays small (a few hundred values, not one per token)."""
    step = 10 ** max(0, len(str(us)) - 3)
    return (us + step // 2) // step * step


def check_stream(url, bodies, requests, warmup, timeout_s, stop=None):
    """Sequential streamed completions on localhost: per successful request its latency, time to
    first token and tokens/s, and the inter-token gaps of all (the operator judges them with the
    same token budgets as its own streams). Stops when ``stop()`` says so, like check_latency."""
    stop = stop or sample_until(SAMPLE_LIMIT_S)
    figures = {"url": url, "protocol": "openai", "requests": requests, "warmup": warmup, "latency_us": [],
               "ttft_us": [], "rates_milli": [], "itl_us": {}, "output_tokens": 0, "errors": {}, "first_error": "",
               "cut_short": 0}
    started = time.monotonic()
    for i in range(warmup + requests):
        if stop():
            figures["cut_short"] = warmup + requests - i
            break
        if i == warmup:
            started = time.monotonic()
        try:
            tokens, done, usage = stream_once(url, bodies[i % len(bodies)].encode("utf-8"), timeout_s)
            if not tokens:
                raise StreamFailed("no_tokens", "a stream ended with [DONE] but carried no text")
        except StreamFailed as exc:
            if i >= warmup:
                figures["errors"][exc.kind] = figures["errors"].get(exc.kind, 0) + 1
                figures["first_error"] = figures["first_error"] or "%s: %s" % (exc.kind, exc)
            continue
        if i < warmup:
            continue
        count = usage or len(tokens)
        figures["latency_us"].append(int(done * 1e6))
        figures["ttft_us"].append(int(tokens[0] * 1e6))
        figures["output_tokens"] += count
        if tokens[-1] > 0:
            figures["rates_milli"].append(int(count / tokens[-1] * 1000))
        for before, after in zip(tokens, tokens[1:]):
            gap = str(three_digits(int((after - before) * 1e6)))
            figures["itl_us"][gap] = figures["itl_us"].get(gap, 0) + 1
    figures["duration_s"] = round(time.monotonic() - started, 3)
    return figures


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_checks(node, check, run, boot, send=publish, superseded=None):
    """One run: health, then gpu, published at once; then latency (only on a healthy server, and
    when the request did not name checks without it), published as a second value."""
    base = "http://127.0.0.1:%d" % node["port"]
    deadline = float(check.get("health_timeout_s", 600)) + (float(check.get("boot_grace_s", BOOT_GRACE_S))
                                                            if boot and node.get("gpus") else 0.0)
    report = {"v": 1, "node": node["node"], "run": run, "boot": boot, "measured": "on the node"}
    report["health"] = check_health(base + node["health_path"], deadline)
    report["gpu"] = check_gpu(check["gpu_command"]) if node.get("gpus") else None
    latency = check.get("latency") or {}
    wanted = wanted_checks(run)
    sample = bool(report["health"]["ok"] and latency and (wanted is None or "latency" in wanted))
    # The sample follows as mlinfra/latency. "latency" keeps its type (null, or the sample's dict as
    # an earlier mlinfra wrote it): an operator of another version reads it without tripping.
    report["latency"], report["latency_pending"] = None, sample
    report["at"] = now()
    send(report)
    if sample:
        requests = min(int(latency.get("requests", 50)), SAMPLES_MAX)
        stop = sample_until(float(latency.get("limit_s", SAMPLE_LIMIT_S)), superseded)
        if latency.get("protocol") == "openai":  # streamed completions: per token, as the operator measures
            measured = check_stream(base + latency["path"], latency["bodies"], requests, int(latency.get("warmup", 0)),
                                    float(latency.get("token_timeout_s", 10)), stop)
        else:
            measured = check_latency(base + latency["path"], latency.get("payload"), requests,
                                     int(latency.get("warmup", 0)), stop)
        measured.update(run=run, at=now())
        send(measured, LATENCY_KEY)
        report = dict(report, latency=measured)  # what `once` prints
    return report


def once(node, run, boot, superseded=None):
    check = json.loads(read_metadata("attributes/" + CHECK_KEY)[0])
    return run_checks(node, check, run, boot, superseded=superseded)


def watch(node):
    """Report once at start (boot), then again each time the operator changes the request value."""
    value, etag = read_metadata("attributes/" + REQUEST_KEY)
    boot = True
    while True:
        try:
            # A request that arrives during the sample ends it: health and gpu of the new run come first.
            once(node, value, boot, lambda: read_metadata("attributes/" + REQUEST_KEY)[0] != value)
        except (URLError, OSError, ValueError, KeyError) as exc:  # logged; the next request tries again
            print("mlinfra-report: could not check or publish: %s" % exc, file=sys.stderr)
        boot = False
        while True:
            try:
                new, new_etag = read_metadata("attributes/" + REQUEST_KEY, etag=etag)
            except (URLError, OSError) as exc:
                print("mlinfra-report: waiting for a request: %s" % exc, file=sys.stderr)
                time.sleep(10)
                continue
            etag = new_etag
            if new != value:
                value = new
                break


def main(argv):
    if len(argv) != 3 or argv[1] not in ("watch", "once"):
        print("usage: guest_report.py watch|once NODE_JSON", file=sys.stderr)
        return 2
    node = load(argv[2])
    if argv[1] == "once":
        print(json.dumps(once(node, read_metadata("attributes/" + REQUEST_KEY)[0], False), indent=2))
        return 0
    watch(node)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
