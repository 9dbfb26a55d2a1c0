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
as ``mlinfra/latency`` with the same ``run``. The operator's mlinfra judges the raw figures with
the same parser, diagnosis and latency budget as every other check.

Re-runs on request: ``mlinfra verify --fresh`` changes the metadata value
``mlinfra-check-request`` (Compute API setMetadata, that key only); ``watch`` waits for that change with the metadata server's
``?wait_for_change=true`` and publishes a fresh report whose ``run`` is the new value. A value
ending in `` checks=health,gpu`` (what heal asks) names the checks: no latency sample then.

Guest attributes (Google's "Setting and querying guest attributes",
https://cloud.google.com/compute/docs/metadata/manage-guest-attributes): enabled by the
``enable-guest-attributes = TRUE`` metadata key; written from the VM with
``PUT http://metadata.google.internal/computeMetadata/v1/instance/guest-attributes/NAMESPACE/KEY``
and the header ``Metadata-Flavor: Google``; meant for small, infrequent values (at most 10
queries a minute per VM, bursts of 3 a second) — so a run is at most two PUTs.
"""

import json
import os
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


def check_latency(url, payload, requests, warmup, limit_s=SAMPLE_LIMIT_S):
    """Sequential POSTs to the server on localhost: microseconds per successful request; the
    sample stops after ``limit_s`` (``cut_short``: how many requests it did not send)."""
    body = json.dumps(payload).encode("utf-8")
    samples, errors = [], {}
    started = first = time.monotonic()
    cut_short = 0
    for i in range(warmup + requests):
        if time.monotonic() - first >= limit_s:
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


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_checks(node, check, run, boot, send=publish):
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
    report["latency"] = "pending" if sample else None  # pending: it follows as mlinfra/latency
    report["at"] = now()
    send(report)
    if sample:
        measured = check_latency(base + latency["path"], latency.get("payload"),
                                 min(int(latency.get("requests", 50)), SAMPLES_MAX),
                                 int(latency.get("warmup", 0)), float(latency.get("limit_s", SAMPLE_LIMIT_S)))
        measured.update(run=run, at=now())
        send(measured, LATENCY_KEY)
        report = dict(report, latency=measured)  # what `once` prints
    return report


def once(node, run, boot):
    check = json.loads(read_metadata("attributes/" + CHECK_KEY)[0])
    return run_checks(node, check, run, boot)


def watch(node):
    """Report once at start (boot), then again each time the operator changes the request value."""
    value, etag = read_metadata("attributes/" + REQUEST_KEY)
    boot = True
    while True:
        try:
            once(node, value, boot)
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
