"""Remote state on GCS, against a real fake-gcs-server process and Terraform's real gcs backend.

Known gaps of the emulator (fake-gcs-server, in-memory backend), met below:
- it does not keep `iamConfiguration` (uniform bucket-level access, public access prevention)
  nor bucket labels, so `state bootstrap` reports those as "not as requested" — which is
  exactly the read-back warning users need when a server ignores a setting;
- it serves the XML read path Terraform uses only for its `-public-host`, so the fixture sets
  that to its own address (see `Emulator`);
- it has no IAM policy endpoint (404), so whether an existing bucket is public cannot be read
  there; bootstrap says so rather than assuming it is private.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import HTTP_SERVER, Emulator, stack_processes, write_stack

from mlinfra import Stack

MLINFRA = [sys.executable, "-m", "mlinfra"]


def gcs_stack(tmp_path: Path, emulator: Emulator, name: str, *, regions='["a"]', extra_serve="") -> Path:
    return write_stack(tmp_path, f"""
        name = "{name}"
        [local]
        regions = {regions}
        [serve]
        command = "{HTTP_SERVER}"
        health_path = "/"
        {extra_serve}
        [state]
        backend = "gcs"
        bucket = "tf-state"
        prefix = "stacks/{name}"
        endpoint = "{emulator.url}"
    """)


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(MLINFRA + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_bootstrap_creates_a_versioned_bucket_and_reports_what_the_server_ignored(tmp_path, emulator):
    stack = Stack.load(gcs_stack(tmp_path, emulator, "boot"))
    first = stack.state_bootstrap()
    assert first.created and first.settings["versioning"] is True
    # The emulator drops iamConfiguration and labels: the read-back says so instead of claiming success.
    assert first.mismatches == [
        "uniform_bucket_level_access: asked True, bucket has False",
        "public_access_prevention: asked 'enforced', bucket has 'inherited'",
        "labels.stack: asked 'boot', bucket has None",
        "labels.managed-by: asked 'mlinfra', bucket has None",
    ]
    second = stack.state_bootstrap()
    assert second.created is False and second.settings["versioning"] is True
    assert second.mismatches[-1] == "public access: the server has no IAM policy to check (an emulator?)"


def test_up_and_down_keep_state_in_the_bucket(tmp_path, emulator, deployed):
    stack = Stack.load(gcs_stack(tmp_path, emulator, "remote", regions='["a", "b"]'))
    stack.state_bootstrap()
    deployed(stack)
    up = stack.up(verify=False)
    assert up.applied and len(up.nodes) == 2
    state = json.loads(emulator.read("tf-state", "stacks/remote/default.tfstate"))
    assert len(state["resources"][0]["instances"]) == 2
    assert not (stack.workdir / "terraform.tfstate").exists()  # nothing kept locally
    assert [o["name"] for o in emulator.objects("tf-state")] == ["stacks/remote/default.tfstate"]  # lock released
    down = stack.down()
    assert down.destroyed
    assert json.loads(emulator.read("tf-state", "stacks/remote/default.tfstate"))["resources"] == []
    assert stack_processes("remote") == []


def test_concurrent_ups_exactly_one_applies(tmp_path, emulator):
    path = gcs_stack(tmp_path, emulator, "race", regions='["a", "b", "c"]')
    Stack.load(path).state_bootstrap()
    serials = []
    try:
        for round_no in range(10):
            # Each round changes the stack so there is real work to race for.
            text = path.read_text().replace(f'ROUND = "{round_no - 1}"', f'ROUND = "{round_no}"')
            if "ROUND" not in text:
                text = text.replace('health_path = "/"', f'health_path = "/"\n        env = {{ ROUND = "{round_no}" }}')
            path.write_text(text)
            procs = [subprocess.Popen(MLINFRA + ["up", "--yes", "--no-verify"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
            outcomes = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
            codes = sorted(code for code, _ in outcomes)
            assert codes == [0, 1], outcomes
            loser = next(err for code, err in outcomes if code == 1)
            assert "error: state is locked: apply by " in loser and "(lock ID " in loser, loser
            assert "hint: wait for it to finish; if its holder died, run `mlinfra state unlock`" in loser
            state = json.loads(emulator.read("tf-state", "stacks/race/default.tfstate"))  # parseable
            serials.append(state["serial"])
            assert len(stack_processes("race")) == 3  # never a duplicate node
        assert serials == sorted(serials) and len(set(serials)) == len(serials)
    finally:
        cli("down", "--yes", cwd=tmp_path)
    assert stack_processes("race") == []


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 60) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert text in seen, seen
    return seen


def test_kill_9_mid_apply_leaves_the_lock_and_recovers(tmp_path, emulator):
    path = gcs_stack(tmp_path, emulator, "crash", regions='["a", "b", "c", "d"]')
    Stack.load(path).state_bootstrap()
    proc = subprocess.Popen(MLINFRA + ["up", "--yes", "--no-verify"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(proc, ": create…")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for pid in [proc.pid, *map(int, children)]:  # the engine and its Terraform, at once
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)

        status = cli("status", cwd=tmp_path)
        assert status.stdout.startswith("Locked: apply by "), status.stdout + status.stderr
        unlock = cli("state", "unlock", cwd=tmp_path)  # no terminal, no --yes: refuses
        assert unlock.returncode == 2 and "pass --yes" in unlock.stderr
        unlock = cli("state", "unlock", "--yes", cwd=tmp_path)
        assert unlock.returncode == 0 and "Lock removed." in unlock.stderr, unlock.stderr
        assert not cli("status", cwd=tmp_path).stdout.startswith("Locked")

        up = cli("up", "--yes", "--no-verify", cwd=tmp_path)
        assert up.returncode == 0, up.stderr
        stack = Stack.load(path)
        assert [n.key for n in stack.status().nodes] == ["a-0", "b-0", "c-0", "d-0"]
        assert len(stack_processes("crash")) == 4  # converged, no duplicates
    finally:
        proc.kill()
        down = cli("down", "--yes", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert stack_processes("crash") == []


def test_sigint_mid_apply_saves_state_and_releases_the_lock(tmp_path, emulator):
    path = gcs_stack(tmp_path, emulator, "ctrlc", regions='["a", "b", "c", "d"]')
    Stack.load(path).state_bootstrap()
    proc = subprocess.Popen(MLINFRA + ["up", "--yes", "--no-verify"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(proc, ": create…")
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 130, rest
        assert "error: interrupted: Terraform stopped gracefully and saved its state" in rest
        names = [o["name"] for o in emulator.objects("tf-state")]
        assert names == ["stacks/ctrlc/default.tfstate"]  # saved, and no lock left behind
        json.loads(emulator.read("tf-state", "stacks/ctrlc/default.tfstate"))
    finally:
        down = cli("down", "--yes", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert stack_processes("ctrlc") == []


def test_history_and_restore(tmp_path, emulator, deployed):
    path = gcs_stack(tmp_path, emulator, "hist")
    stack = Stack.load(path)
    stack.state_bootstrap()
    deployed(stack)
    stack.up(verify=False)
    first = stack.state_history()[0]
    path.write_text(path.read_text().replace('regions = ["a"]', 'regions = ["a", "b"]'))
    bigger = Stack.load(path)
    deployed(bigger)
    bigger.up(verify=False)
    generations = bigger.state_history()
    assert len(generations) >= 2 and generations[0].current and generations[0].generation > first.generation
    assert first.generation in [g.generation for g in generations]

    seen = []
    plan = bigger.state_restore(first.generation, confirm=lambda p: seen.append(p) or True)
    assert seen == [plan] and plan.only_in_current == ['terraform_data.node["b-0"]'] and plan.only_in_restored == []
    restored = bigger.state_pull()
    assert [i["index_key"] for i in restored["resources"][0]["instances"]] == ["a-0"]
    assert restored["serial"] > plan.current_serial
    # The restored state forgot b-0; the next up brings it back under management, once.
    again = bigger.up(verify=False)
    assert again.summary.add == 1 and [n.key for n in again.nodes] == ["a-0", "b-0"]
    assert len(stack_processes("hist")) == 2


def test_stopped_emulator_fails_fast_naming_the_endpoint(tmp_path, emulator):
    gcs_stack(tmp_path, emulator, "dead")
    emulator.stop()
    for args in (["up", "--yes"], ["status"], ["state", "history"], ["state", "bootstrap"], ["down", "--yes"]):
        started = time.monotonic()
        result = cli(*args, cwd=tmp_path, timeout=60)
        assert time.monotonic() - started < 15, args
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.splitlines()[0] == \
            f"error: cannot reach the state bucket's endpoint {emulator.url}: Connection refused", (args, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlinfra.toml"]  # local files untouched


def test_switching_from_local_to_gcs_migrates_the_state(tmp_path, emulator):
    path = write_stack(tmp_path, f'name = "move"\n[serve]\ncommand = "{HTTP_SERVER}"\nhealth_path = "/"\n')
    try:
        pid = Stack.load(path).up(verify=False).nodes[0].pid
        path.write_text(path.read_text() + f'[state]\nbackend = "gcs"\nbucket = "tf-state"\nendpoint = "{emulator.url}"\n')
        Stack.load(path).state_bootstrap()
        refused = cli("up", cwd=tmp_path)  # no terminal and no --yes: never migrates silently
        assert refused.returncode == 2 and "pass --yes" in refused.stderr, refused.stderr
        moved = cli("up", "--yes", "--no-verify", cwd=tmp_path)
        assert moved.returncode == 0, moved.stderr
        assert "No changes" in moved.stderr  # the same node, found in the migrated state
        assert [n.pid for n in Stack.load(path).status().nodes] == [pid]
        assert json.loads(emulator.read("tf-state", "mlinfra/move/default.tfstate"))["resources"]
    finally:
        down = cli("down", "--yes", cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert stack_processes("move") == []


def test_two_environments_keep_their_state_under_their_own_prefix(tmp_path, emulator, deployed):
    """[env.*] deployments share the bucket, never the state: the prefix gets /<env>."""
    path = gcs_stack(tmp_path, emulator, "envs")
    path.write_text(path.read_text() + '\n[env.dev]\n[env.prod.local]\nregions = ["a", "b"]\n')
    dev, prod = Stack.load(path, "dev"), Stack.load(path, "prod")
    dev.state_bootstrap()
    deployed(dev)
    deployed(prod)
    assert len(dev.up(verify=False).nodes) == 1 and len(prod.up(verify=False).nodes) == 2
    names = sorted(o["name"] for o in emulator.objects("tf-state"))
    assert names == ["stacks/envs/dev/default.tfstate", "stacks/envs/prod/default.tfstate"]
    assert json.loads(emulator.read("tf-state", "stacks/envs/dev/default.tfstate"))["resources"][0]["instances"][0][
        "index_key"] == "a-0"
    assert dev.down().destroyed
    assert json.loads(emulator.read("tf-state", "stacks/envs/dev/default.tfstate"))["resources"] == []
    assert len(json.loads(emulator.read("tf-state", "stacks/envs/prod/default.tfstate"))["resources"][0]["instances"]) == 2
    assert stack_processes("envs-dev") == [] and len(stack_processes("envs-prod")) == 2
