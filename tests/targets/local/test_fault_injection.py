"""Fault injection: interrupt `up` and `down` of a 3-node local stack with kill -9 and SIGINT at
many moments, recover with the documented steps, and require every time: the documented exit
codes, no process of the stack left after `down`, and an `up` that converges to 3 ready nodes.

Recovery, as the README says: run `mlinfra down --yes` (retried while the interrupted
operation's Terraform is still finishing and holds the lock), then `mlinfra up --yes`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

from helpers import HTTP_SERVER, write_stack

from mlinfra.targets.local import process

MLINFRA = [sys.executable, "-m", "mlinfra"]
DELAYS = 7  # moments per operation and signal, spread over the operation; plus "first node record"


def run(cwd, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(MLINFRA + list(args), cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def until_unlocked(cwd, *args) -> subprocess.CompletedProcess:
    """Run a command, again while the state is locked (the interrupted Terraform still stopping)."""
    deadline = time.monotonic() + 60
    while True:
        done = run(cwd, *args)
        if done.returncode != 1 or "state is locked" not in done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def timed(cwd, *args) -> float:
    started = time.monotonic()
    done = run(cwd, *args)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started


def interrupt(cwd, operation: str, sig: int, moment, run_dir) -> int:
    flags = ["--yes", "--no-verify"] if operation == "up" else ["--yes"]
    proc = subprocess.Popen(MLINFRA + [operation, *flags], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if moment == "first record":  # just after a node process exists, before state can be saved
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            records = len(list(run_dir.glob("*-0.json")))
            if (operation == "up" and records) or (operation == "down" and records < 3):
                break
            time.sleep(0.001)
    else:
        time.sleep(moment)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 1 and err.startswith("Fatal Python error: init_"):
        # The signal landed while the interpreter itself was starting, before any of mlinfra ran
        # (Python's own exit 1): nothing was touched either. The faster `up` and `down` get, the
        # likelier the earliest moment lands there.
        return -sig
    return proc.returncode


def test_interrupted_up_and_down_leave_no_orphan_and_recover(tmp_path):
    # A name of its own per run: ports are derived from the name, and two checkouts running this
    # test at once would otherwise fight over the same ports.
    name = f"fault-{os.getpid()}"
    write_stack(tmp_path, f"""
        name = "{name}"
        [local]
        regions = ["a", "b", "c"]
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
    """)
    run_dir = tmp_path / ".mlinfra" / name / "nodes"
    durations = {"up": timed(tmp_path, "up", "--yes", "--no-verify")}
    durations["down"] = timed(tmp_path, "down", "--yes")
    outcomes: Counter = Counter()
    points = 0
    try:
        for operation in ("up", "down"):
            moments = [durations[operation] * (i + 0.5) / DELAYS for i in range(DELAYS)] + ["first record"]
            for sig in (signal.SIGKILL, signal.SIGINT):
                for moment in moments:
                    if operation == "down":
                        assert until_unlocked(tmp_path, "up", "--yes", "--no-verify").returncode == 0
                    code = interrupt(tmp_path, operation, sig, moment, run_dir)
                    points += 1
                    # kill -9: killed (-9), unless it had finished (0); SIGINT: 130, or 0 if done first.
                    # A SIGINT that lands while the interpreter shuts down ends it by the signal itself
                    # (-2 here; 130 to a shell, like the handled case).
                    allowed = {0, -signal.SIGKILL} if sig == signal.SIGKILL else {0, 130, -signal.SIGINT}
                    assert code in allowed, (operation, sig, moment, code)
                    outcomes[(operation, signal.Signals(sig).name, "finished" if code == 0 else "interrupted")] += 1
                    down = until_unlocked(tmp_path, "down", "--yes")
                    assert down.returncode == 0, (operation, sig, moment, down.stderr)
                    left = process.stack_processes(run_dir)
                    assert left == {}, (operation, sig, moment, "orphans after down", left)
                    up = until_unlocked(tmp_path, "up", "--yes", "--no-verify")
                    assert up.returncode == 0, (operation, sig, moment, up.stderr)
                    check = run(tmp_path, "status", "--check")
                    assert check.returncode == 0, (operation, sig, moment, check.stdout)  # 3 nodes, all ready
                    assert len(process.stack_processes(run_dir)) == 6  # 3 servers + their supervisors: one copy
                    if operation == "up":
                        assert until_unlocked(tmp_path, "down", "--yes").returncode == 0
    finally:
        run(tmp_path, "down", "--yes")
        for pid in process.stack_processes(run_dir):
            os.kill(pid, signal.SIGKILL)
    print(f"\nfault injection: {points} points, outcomes {dict(sorted(outcomes.items()))}, 0 orphans, 0 false greens")
    assert points == 2 * 2 * (DELAYS + 1)
