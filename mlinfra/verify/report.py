"""Verification results as CI artefacts: JUnit XML, a markdown summary, a text histogram.

JUnit has no official schema; we write the subset every consumer reads
(verification-anchors.md §D1): one testcase per node × check with a unique
``classname.name``, ``<failure message=...>`` that explains, ``<skipped/>``.
The markdown goes to ``$GITHUB_STEP_SUMMARY`` (GitHub caps a step at 1 MiB;
we stay far below).
"""

from __future__ import annotations

import os
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from mlinfra.verify.result import CheckResult

SUMMARY_LIMIT = 64 * 1024  # bytes; a whole page of nodes fits, and we never near GitHub's 1 MiB


def verdict(results: list[CheckResult]) -> str:
    failed = [r for r in results if r.status == "fail"]
    passed = sum(1 for r in results if r.status == "pass")
    skipped = sum(1 for r in results if r.status == "skip")
    tail = f", {skipped} skipped" if skipped else ""
    if not results:  # a check that checked nothing is no pass
        return "FAILED: no nodes were checked"
    if not passed and not failed:
        return f"FAILED: nothing was checked{tail}"
    head = "FAILED" if failed else "PASSED"
    return f"{head}: {passed} passed, {len(failed)} failed{tail}"


def passed(results: list[CheckResult]) -> bool:
    """No check failed, and at least one really ran: zero checks (no nodes, all skipped) is a failure."""
    return any(r.status == "pass" for r in results) and not any(r.status == "fail" for r in results)


def junit_xml(stack: str, results: list[CheckResult], elapsed_s: float) -> str:
    if not passed(results) and not any(r.status == "fail" for r in results):
        # Nothing ran: a CI reading the file must see a failure, not an empty (green) suite.
        results = [*results, CheckResult(stack, "verify", False, "nothing checked", message=verdict(results))]
    failures = sum(1 for r in results if r.status == "fail")
    skipped = sum(1 for r in results if r.status == "skip")
    suites = ET.Element(
        "testsuites", name="mlinfra verify", tests=str(len(results)), failures=str(failures), time=f"{elapsed_s:.3f}"
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"mlinfra.verify.{stack}",
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        skipped=str(skipped),
        time=f"{elapsed_s:.3f}",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        hostname=socket.gethostname(),
    )
    for result in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"mlinfra.verify.{result.check}",
            name=result.node,
            time=f"{result.elapsed_s:.3f}",
        )
        if result.status == "fail":
            failure = ET.SubElement(case, "failure", message=result.message or result.summary, type=result.check)
            failure.text = f"{result.node} {result.check}: {result.message or result.summary}"
        elif result.status == "skip":
            ET.SubElement(case, "skipped", message=result.message or result.summary)
        out = ET.SubElement(case, "system-out")
        out.text = result.summary
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def histogram_lines(buckets: list, width: int = 24) -> list[str]:
    """Buckets of [upper_ms, count] as text bars; empty leading/trailing buckets dropped."""
    rows = [(float(upper), int(count)) for upper, count in buckets]
    while rows and rows[0][1] == 0:
        rows.pop(0)
    while rows and rows[-1][1] == 0:
        rows.pop()
    peak = max((count for _, count in rows), default=0)
    lines = []
    for upper, count in rows:
        bar = "█" * max(1 if count else 0, round(width * count / peak)) if peak else ""
        lines.append(f"≤{upper:>9.2f} ms │{bar:<{width}} {count}")
    return lines


def markdown(stack: str, results: list[CheckResult]) -> str:
    icon = {"pass": "✅", "fail": "❌", "skip": "⏭️"}
    lines = [
        f"### mlinfra verify `{stack}`: {verdict(results)}",
        "",
        "| node | check | result | figures |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        figures = (r.summary if r.status == "pass" else (r.message or r.summary)).replace("|", "\\|")
        lines.append(f"| {r.node} | {r.check} | {icon[r.status]} {r.status} | {figures} |")
    for r in results:
        if r.check == "latency" and r.details.get("histogram"):
            lines += [
                "",
                f"<details><summary>{r.node} latency histogram</summary>",
                "",
                "```",
                *histogram_lines(r.details["histogram"]),
                "```",
                "</details>",
            ]
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > SUMMARY_LIMIT:
        text = text.encode()[: SUMMARY_LIMIT - 64].decode("utf-8", "ignore") + "\n\n…(truncated)\n"
    return text


def append_step_summary(text: str) -> Path | None:
    """Append markdown to $GITHUB_STEP_SUMMARY when that variable is set (verify, rebuild)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return Path(target)
