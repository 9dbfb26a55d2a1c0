"""The GCP gate's node-side path: each node's own report (templates/gcp/guest_report.py), read
from its guest attributes with the Compute API, judged here as every other check is.

- gpu: nvidia-smi's exit status and output as the node recorded them, replayed through the same
  ``verify.gpu.check_gpu`` (parser, diagnosis, expected model and count) — no SSH needed;
- health: the node polled its own server on localhost;
- latency: from this machine when its port answers here; otherwise the node's sequential sample
  on localhost against the same ``[verify]`` budget — server time, without the network.

Every result says where it was measured (``details["measured"]``, and the summary for the
node's own figures). SSH stays an option: with ``serve.ssh_cidrs`` set, a node that published
no report still gets its gpu check over SSH.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

from mlinfra.clouds.gcp import guest_attributes
from mlinfra.errors import CommandTimedOut, MlinfraError
from mlinfra.timeutil import parse_epoch, utc_now
from mlinfra.verify.result import CheckResult
from mlinfra.verify.runners import RunResult

NAMESPACE, KEY = "mlinfra", "report"  # what guest_report.py writes: health and gpu, as soon as known
LATENCY_KEY = "latency"  # then its latency sample, with the same run (a second write)
WORKLOAD_KEY = "workload"  # what workload_gcp.py writes at boot: setup, model, image, or why they failed
REQUEST_KEY = "mlinfra-check-request"  # the metadata value guest_report.py watches
CHECKS_MARK = " checks="  # a request naming its checks ends so ("RUN checks=health,gpu": heal's)
ON_NODE, FROM_HERE = "on the node", "from this machine"
SAMPLES_MAX = 200  # node-side latency requests at most: the report stays small
BOOT_GRACE_S = 900.0  # the Deep Learning VM installs its driver before the server starts (launch.py)
POLL_S = 5.0  # between two reads of a node's guest attributes while it has not reported
# A run takes the node a while even when all is well (booting; the nvidia-smi query: up to 20 s):
# heal's 10 s detection must not read that as a failure. The latency sample is published apart,
# after the report, and heal's requests name only health and gpu: it never waits for a sample.
RUN_MARGIN_S = 60.0
SAMPLE_LIMIT_S = 120.0  # the node stops its latency sample here (guest_report.py)


def settings(spec) -> str:
    """The ``mlinfra-check`` metadata value: what each node checks, as JSON."""
    from mlinfra.verify import gpu, latency

    verify = spec.verify
    sample: dict[str, Any] = {
        "path": verify.path,
        "requests": min(verify.requests, SAMPLES_MAX),
        "warmup": min(verify.warmup, 20),
        "limit_s": SAMPLE_LIMIT_S,
    }
    if verify.protocol == "openai":  # streamed completions, built as the operator's own streams are
        from mlinfra.verify.stream import request_body

        bodies = [request_body(p, verify.max_tokens, verify.chat, verify.model_name).decode() for p in verify.prompts]
        sample.update(protocol="openai", bodies=bodies, token_timeout_s=verify.token_timeout_s)
    else:
        sample["payload"] = verify.payload if verify.payload is not None else latency.default_payload()
    return json.dumps(
        {
            "gpu_command": list(gpu.COMMAND),  # the query verify.gpu parses: one source for both sides
            "health_timeout_s": verify.health_timeout_s,
            "boot_grace_s": BOOT_GRACE_S,
            "latency": sample,
        },
        sort_keys=True,
    )


def sampled(run: str) -> bool:
    """Whether the node's run ``run`` included a latency sample (a request naming checks without it did not)."""
    named = run.partition(CHECKS_MARK)[2]
    return not named or "latency" in named.split(",")


def age(at: str) -> str:
    """How long ago the node's ``at`` (``2026-12-03T10:21:07Z``) was: "12 min ago"."""
    try:
        seconds = parse_epoch(utc_now()) - parse_epoch(at)
    except ValueError:
        return f"an unknown time ago ({at!r})"
    minutes = max(0, int(seconds // 60))
    if minutes < 1:
        return "less than a minute ago"
    return f"{minutes} min ago" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min ago"


class ReportRunner:
    """A ``verify.gpu`` runner that replays what nvidia-smi did on the node."""

    def __init__(self, gpu: dict[str, Any]):
        self.gpu = gpu

    def run(self, argv: list[str], timeout_s: float) -> RunResult:
        if self.gpu.get("returncode") is None:
            limit = float(self.gpu.get("timeout_s") or timeout_s)
            raise CommandTimedOut(f"nvidia-smi on the node did not finish within {limit:g} s", timeout_s=limit)
        return RunResult(int(self.gpu["returncode"]), self.gpu.get("stdout", ""), self.gpu.get("stderr", ""))


class NodeReports:
    """The nodes' reports for one verification (``fresh``: ask every node for a new run first, of
    ``checks``: a request without latency names the others, and the node runs no sample)."""

    def __init__(self, stack, fresh: bool = False, checks: tuple[str, ...] = ()):
        self.stack, self.spec = stack, stack.spec
        self.run_id = f"{utc_now()}-{uuid.uuid4().hex[:8]}" if fresh else None
        named = [check for check in ("health", "gpu") if check in checks]
        if self.run_id and checks and "latency" not in checks and named:
            self.run_id += CHECKS_MARK + ",".join(named)  # guest_report.wanted_checks reads it
        self.reports: dict[str, dict | None] = {}
        self.values: dict[str, dict[str, str]] = {}  # node name → its guest attributes, as last read
        self.problems: dict[str, str] = {}
        self.workloads: dict[str, dict] = {}  # node name → its mlinfra/workload attribute (issue 11)
        self._token: str | None = None
        self._lock = threading.Lock()
        self._requested: set[str] = set()

    # -- reading ---------------------------------------------------------------------------

    def token(self) -> str:
        with self._lock:
            if self._token is None:
                self._token = guest_attributes.access_token()
            return self._token

    def fetch(self, node) -> dict | None:
        """The node's report, or None when it has not published one (for this run, with ``fresh``)."""
        project = self.spec.gcp.project
        if self.run_id and node.name not in self._requested:
            guest_attributes.request_run(project, node.zone, node.name, REQUEST_KEY, self.run_id, self.token())
            self._requested.add(node.name)
        values = guest_attributes.read(project, node.zone, node.name, NAMESPACE, self.token())
        self.values[node.name] = values
        if WORKLOAD_KEY in values:
            try:
                self.workloads[node.name] = json.loads(values[WORKLOAD_KEY])
            except ValueError:
                self.workloads[node.name] = {"error": "its workload status is not JSON"}
        try:
            report = json.loads(values[KEY]) if KEY in values else None
        except ValueError:
            self.problems[node.name] = "its report is not JSON"
            return None
        if report is not None and self.run_id and report.get("run") != self.run_id:
            return None  # the previous run's report: wait for the one asked for
        return report

    def wait(self, node, deadline_s: float) -> dict | None:
        if node.name in self.reports:
            return self.reports[node.name]
        end = time.monotonic() + deadline_s
        report = None
        while True:
            try:
                report = self.fetch(node)
            except MlinfraError as exc:  # credentials or the API: say it, do not wait it out
                self.problems[node.name] = exc.message
                break
            if report is not None or self.workload_failure(node) or time.monotonic() >= end:
                break  # a node whose model or setup failed never starts its server: no report will come
            time.sleep(max(0.0, min(POLL_S, end - time.monotonic())))
        self.reports[node.name] = report
        return report

    def wait_sample(self, node, run: str) -> dict | None:
        """The node's latency sample of ``run`` (the node stops at SAMPLE_LIMIT_S), or None."""
        end = time.monotonic() + SAMPLE_LIMIT_S + RUN_MARGIN_S
        while True:
            try:
                sample = json.loads(self.values.get(node.name, {}).get(LATENCY_KEY) or "null")
            except ValueError:
                sample = None
            if isinstance(sample, dict) and sample.get("run") == run:
                return sample
            if time.monotonic() >= end:
                return None
            time.sleep(max(0.0, min(POLL_S, end - time.monotonic())))
            try:
                self.fetch(node)
            except MlinfraError as exc:
                self.problems[node.name] = exc.message
                return None

    def workload_failure(self, node) -> str:
        """Why the node never started its server (a model download, checksum or setup step), or ""."""
        error = (self.workloads.get(node.name) or {}).get("error")
        return f"the node did not start its server: {error}" if error else ""

    def _missing(self, node, check: str, waited_s: float) -> CheckResult:
        why = (
            self.problems.get(node.name)
            or self.workload_failure(node)
            or (
                f"no report from the node (guest attribute {NAMESPACE}/{KEY}) within {waited_s:g} s: it is still "
                "starting, or its checks could not run"
            )
        )
        fix = (
            f"look at `journalctl -u mlinfra-report -u mlinfra-serve` on the node, or "
            f"`gcloud compute instances get-serial-port-output {node.name} --zone {node.zone}`"
        )
        return CheckResult(
            node.name, check, False, "no report", message=f"{why}. Fix: {fix}", details={"measured": ON_NODE}
        )

    # -- the checks --------------------------------------------------------------------------

    def health(self, node, deadline_s: float) -> CheckResult:
        # The node's own deadline starts after its boot (and, with a GPU, its driver install): ours, now.
        grace = RUN_MARGIN_S + (BOOT_GRACE_S if self.spec.compute.gpu_count and not self.run_id else 0.0)
        report = self.wait(node, deadline_s + grace)
        if report is None:
            return self._missing(node, "health", deadline_s + grace)
        seen = report.get("health") or {}
        details = {"measured": ON_NODE, "report_at": report.get("at"), "run": report.get("run"), **seen}
        waited = float(seen.get("waited_s") or 0.0)
        if seen.get("ok"):
            summary = f"HTTP {seen.get('status')} after {waited:.1f} s ({ON_NODE}, {report.get('at')})"
            return CheckResult(node.name, "health", True, summary, elapsed_s=waited, details=details)
        answer = f"answered HTTP {seen['status']}" if seen.get("status") else f"did not answer ({seen.get('error')})"
        why = self.workload_failure(node)  # the reporter runs from before prepare: a failed prepare is why
        message = (
            f"{ON_NODE}, {seen.get('url')} {answer} for {waited:.0f} s{f' ({why})' if why else ''}. Fix: look at the "
            "server's log on the node (`journalctl -u mlinfra-serve`)"
        )
        return CheckResult(
            node.name, "health", False, "not healthy", message=message, elapsed_s=waited, details=details
        )

    def gpu(self, node) -> CheckResult | None:
        """The gpu check from the report; None: run it over SSH (no report, SSH allowed)."""
        from mlinfra.verify import gpu

        expected = self.spec.compute.accelerator  # the catalog's Gpu, or None for gpu = "none"
        if expected is None:
            return None  # the usual skip
        report = self.wait(node, self.spec.verify.health_timeout_s)  # at once when health read it already
        if report is None or not report.get("gpu"):
            if self.spec.serve.ssh_cidrs:
                return None
            return self._missing(node, "gpu", self.spec.verify.health_timeout_s)
        result = gpu.check_gpu(node.name, expected, self.spec.compute.gpu_count, ReportRunner(report["gpu"]))
        result.details.update(measured=ON_NODE, report_at=report.get("at"))
        result.summary += f" ({ON_NODE})"
        result.elapsed_s = float(report["gpu"].get("elapsed_s") or 0.0)
        return result

    def latency(self, node) -> CheckResult | None:
        """None: this machine reaches the port, measure from here; else the node's own sample."""
        from mlinfra.targets.gcp import reach
        from mlinfra.verify.health import port_answers

        found = reach.assess(self.spec)
        if found.state == reach.ALLOWED or (found.state == reach.UNKNOWN and port_answers(node.endpoint)):
            return None
        report = self.wait(node, self.spec.verify.health_timeout_s) or {}  # at once when health read it already
        sample, run = report.get("latency"), str(report.get("run"))
        # "pending" in the report itself: a node of the previous mlinfra (latency_pending since).
        if report.get("latency_pending") or sample == "pending":  # published apart, once the node has sent its requests
            sample = self.wait_sample(node, run)
        elif sample is None and report and not sampled(run):
            return self._latest_sample(node, run, found.reason, report)
        if not isinstance(sample, dict):  # a dict in the report itself: a node of an earlier mlinfra
            return CheckResult(
                node.name,
                "latency",
                False,
                "not run",
                message=f"not run: the node published no latency sample ({found.reason})",
                details={"measured": ON_NODE},
            )
        return self._judged(node, sample, found.reason, report)

    def _latest_sample(self, node, run: str, why: str, report: dict) -> CheckResult:
        """The node's last run checked health and gpu only (heal's request): its latest sample,
        whatever run it came from, with its age — a heal round must not fail a later plain verify."""
        try:
            sample = json.loads(self.values.get(node.name, {}).get(LATENCY_KEY) or "null")
        except ValueError:
            sample = None
        if not isinstance(sample, dict):
            message = (
                f"skipped: the node's last run ({run}) checked health and gpu only and it has published no latency "
                "sample yet; `mlinfra verify --fresh` asks it for one"
            )
            return CheckResult(
                node.name, "latency", True, "no sample", message=message, skipped=True, details={"measured": ON_NODE}
            )
        result = self._judged(node, sample, why, report)
        result.summary += f", sample from {age(str(sample.get('at') or ''))} (run {sample.get('run')})"
        result.details.update(sample_at=sample.get("at"), sample_run=sample.get("run"))
        return result

    def _judged(self, node, sample: dict, why: str, report: dict) -> CheckResult:
        result = self._judge_stream(node, sample) if sample.get("protocol") == "openai" else self._judge(node, sample)
        result.summary += f" ({ON_NODE}: server time, without the network)"
        if sample.get("cut_short"):  # a slow server, or a newer request (heal's) was waiting
            result.summary += f", {sample['cut_short']} requests not sent (the node stops at {SAMPLE_LIMIT_S:g} s, or for a newer run)"
        result.details.update(measured=ON_NODE, why=why, report_at=report.get("at"))
        return result

    def _judge(self, node, sample: dict) -> CheckResult:
        from mlinfra.verify.budget import check_latency
        from mlinfra.verify.histogram import Histogram
        from mlinfra.verify.latency import LoadResult

        load = LoadResult(
            sample.get("url", ""), "closed", int(sample.get("requests", 0)), 1, int(sample.get("warmup", 0)), 0.0
        )
        load.duration_s = load.elapsed_s = float(sample.get("duration_s") or 0.0)
        load.errors = dict(sample.get("errors") or {})
        load.latency = Histogram()
        for us in sample.get("samples_us") or []:
            load.latency.record(int(us))
        load.ok = load.latency.total
        return check_latency(node.name, load, self.spec.verify)

    def _judge_stream(self, node, sample: dict) -> CheckResult:
        """The node's streamed sample against the same token budgets as a stream measured here."""
        from mlinfra.verify.budget import check_stream
        from mlinfra.verify.stream import StreamResult

        verify = self.spec.verify
        result = StreamResult(
            sample.get("url", ""), int(sample.get("requests", 0)), 1, int(sample.get("warmup", 0)), verify.max_tokens
        )
        result.duration_s = result.elapsed_s = float(sample.get("duration_s") or 0.0)
        result.errors = dict(sample.get("errors") or {})
        result.first_error = str(sample.get("first_error") or "")
        for latency_us, ttft_us in zip(sample.get("latency_us") or [], sample.get("ttft_us") or [], strict=False):
            result.ok += 1
            result.latency.record(int(latency_us))
            result.ttft.record(int(ttft_us))
        for rate in sample.get("rates_milli") or []:
            result.rates.record(int(rate))
        for gap_us, count in (sample.get("itl_us") or {}).items():  # gaps rounded to 3 digits, counted
            for _ in range(int(count)):
                result.itl.record(int(gap_us))
        result.output_tokens = int(sample.get("output_tokens") or 0)
        return check_stream(node.name, result, verify)
