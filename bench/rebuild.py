"""How long does a destroy-rebuild-verify cycle take, and how does it grow with the stack? Prints, never asserts.

Measured with the API (``Stack.rebuild``, exactly what ``mlinfra rebuild`` runs) on the local target,
every node running the reference server (``mlinfra serve``):

* the demo stack (examples/demo/mlinfra.toml: 2 regions × 1 replica), ``--rounds`` times: the median
  rebuild and its phases (destroy, apply — Terraform —, ready — waiting for health —, verify);
* stacks of 1, 2, 3 and 10 regions with one replica each, same measurement, so the growth of the cost
  with the stack's size is visible. Target (issue): 10 regions take less than twice as long as 1.
* the CPU the machine spent per rebuild (all processes, from /proc/stat: Terraform, launchers,
  servers, mlinfra), and per node beyond the first: on a machine with few cores the 10-region
  rebuild is bound by it, and ``cpu/node`` divided by the core count is its floor per extra node.

The latency check runs a small load (50 requests per node) so the figures are about orchestration,
not about how long we choose to load each node. The machine is shared and has 2 cores: 10 servers
start at once on them, which is the worst case for the 10-region figure.

    .venv/bin/python bench/rebuild.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("destroy", "apply", "ready", "verify")


def stack_text(name: str, regions: list[str]) -> str:
    return (f'name = "{name}"\n[local]\nregions = {json.dumps(regions)}\n'
            f'[serve]\ncommand = "exec {sys.executable} -m mlinfra.serve"\n'
            "[verify]\nrequests = 50\nconcurrency = 4\nwarmup = 5\nhealth_timeout_s = 120\n")


def machine_cpu_s() -> float:
    """CPU-seconds every process on this machine has used (busy time of all cores), Linux only."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:8]]
    except OSError:
        return float("nan")
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def measure(path: Path, rounds: int) -> dict:
    from mlinfra import Stack

    stack = Stack.load(path)
    try:
        stack.up(verify=False)  # rebuild needs something to destroy
        runs = []
        for _ in range(rounds):
            cpu_before = machine_cpu_s()
            report = stack.rebuild(budget_s=3600)
            cpu = machine_cpu_s() - cpu_before
            if not report.passed:
                raise SystemExit(f"rebuild of {stack.name} failed in {report.failed_phase}: "
                                 f"{[p.detail for p in report.phases if not p.ok]}")
            runs.append({"total": report.elapsed_s, "cpu": cpu, **{p.name: p.elapsed_s for p in report.phases}})
    finally:
        stack.down(force=True)
    return {key: statistics.median(run[key] for run in runs) for key in ("total", "cpu", *PHASES)} | {
        "nodes": len(stack.regions), "samples": [round(run["total"], 3) for run in runs]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rebuilds per stack (default 3)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlinfra-bench-rebuild-"))
    results: dict[str, dict] = {}
    try:
        demo = tmp / "demo" / "mlinfra.toml"
        demo.parent.mkdir()
        shutil.copy(ROOT / "examples" / "demo" / "mlinfra.toml", demo)
        results["demo (2 regions)"] = measure(demo, args.rounds)
        for count in (1, 2, 3, 10):
            path = tmp / f"r{count}" / "mlinfra.toml"
            path.parent.mkdir()
            path.write_text(stack_text(f"bench-r{count}", [f"r{i}" for i in range(count)]))
            results[f"{count} region(s)"] = measure(path, args.rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = results["10 region(s)"]["total"] / results["1 region(s)"]["total"]
    one, ten = results["1 region(s)"], results["10 region(s)"]
    cpu_per_node = (ten["cpu"] - one["cpu"]) / 9
    if args.json:
        print(json.dumps({"median_s": results, "ratio_10_vs_1": round(ratio, 3), "cores": os.cpu_count(),
                          "cpu_s_per_extra_node": round(cpu_per_node, 3)}, indent=2))
        return 0
    print(f"mlinfra rebuild, local target, reference server on every node, median of {args.rounds} rebuild(s)\n")
    print(f"  {'stack':<18} {'total':>7} " + " ".join(f"{p:>8}" for p in PHASES) + f" {'cpu':>7}   samples")
    for name, row in results.items():
        print(f"  {name:<18} {row['total']:6.2f}s " + " ".join(f"{row[p]:7.2f}s" for p in PHASES)
              + f" {row['cpu']:6.2f}s   {row['samples']}")
    print(f"\n  10 regions / 1 region: {ratio:.2f}x  [target < 2x: {'MET' if ratio < 2 else 'MISSED'}]")
    print(f"  2 regions / 1 region:  {results['2 region(s)']['total'] / one['total']:.2f}x")
    cores = os.cpu_count() or 1
    print(f"  CPU per node beyond the first: {cpu_per_node:.3f} s; on {cores} core(s) that is at least "
          f"{9 * cpu_per_node / cores:.2f} s of wall time for 9 more nodes, against {one['total']:.2f} s for one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
