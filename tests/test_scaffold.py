"""`mlinfra new` and `mlinfra ci github`: the files they write, what they refuse, and the
generated Makefile driving a real local stack up, through verify, and down."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import stack_processes

from mlinfra import Stack
from mlinfra.spec import StackSpec
from mlinfra.errors import UsageError
from mlinfra.scaffold import REQUIREMENTS, WORKFLOW, ci_github, new_project, project_name

MLINFRA = Path(sys.executable).parent / "mlinfra"
TARGETS = ["up", "down", "verify", "rebuild", "heal"]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes: two equal snapshots mean nothing changed."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def make_dry_run(directory: Path, *args: str) -> list[str]:
    # --no-print-directory: under `make test` (CI) MAKELEVEL > 0 makes a nested make announce directories.
    out = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=directory, capture_output=True,
                         text=True, check=True)
    return out.stdout.splitlines()


# -- mlinfra new ---------------------------------------------------------------------------

@pytest.mark.parametrize("gpu", ["none", "t4", "L4", "nvidia-tesla-a100"])
def test_new_local_writes_three_files_and_the_stack_loads(tmp_path, gpu):
    project = tmp_path / "demand-predictor"
    result = new_project(project, gpu=gpu)
    assert result.written == [Path("mlinfra.toml"), Path("Makefile"), Path(".gitignore")]
    assert result.skipped == []
    assert sorted(p.name for p in project.iterdir()) == [".gitignore", "Makefile", "mlinfra.toml"]

    stack = Stack.load(project / "mlinfra.toml")
    assert (stack.name, stack.target, stack.compute.gpu) == ("demand-predictor", "local", gpu.lower())
    assert stack.regions == ("local",)
    assert (project / ".gitignore").read_text().splitlines().count(".mlinfra/") == 1


@pytest.mark.parametrize("gpu", ["t4", "l4", "v100", "none"])
def test_new_gcp_stack_loads_with_placeholder_project(tmp_path, gpu):
    # GPU and region chosen so GCP offers the pair (t4, l4, v100 in us-central1: gcp-gpu-facts §5).
    new_project(tmp_path / "vision", target="GCP", gpu=gpu)
    stack = Stack.load(tmp_path / "vision" / "mlinfra.toml")
    assert (stack.target, stack.compute.gpu, stack.regions) == ("gcp", gpu, ("us-central1",))
    assert stack.gcp.project == "your-gcp-project"
    text = (tmp_path / "vision" / "mlinfra.toml").read_text()
    assert '# backend = "gcs"' in text and stack.state.backend == "local"  # offered, not switched on
    assert "[local]" not in text


def test_new_writes_the_spec_defaults_and_a_comment_for_every_key(tmp_path):
    new_project(tmp_path / "defaults", gpu="t4")
    text = (tmp_path / "defaults" / "mlinfra.toml").read_text()
    # Everything but name and gpu is the spec's default: the file suggests nothing unsafe.
    assert Stack.load(tmp_path / "defaults" / "mlinfra.toml") == Stack(name="defaults", compute={"gpu": "t4"})

    sections = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S))
    sections["stack"] = text.split("\n[", 1)[0]
    spec_tables = {f.name: f.default_factory() for f in dataclasses.fields(StackSpec)
                   if f.default_factory is not dataclasses.MISSING}
    spec_tables.pop("gcp")  # a local stack offers [gcp] commented out (checked below)
    for table, section in [("stack", Stack(name="x").spec)] + list(spec_tables.items()):
        keys = [f.name for f in dataclasses.fields(section) if f.compare and not dataclasses.is_dataclass(getattr(section, f.name))]
        for key in keys:
            # Present (or commented out, like payload), and the line above it explains it.
            match = re.search(rf"^(#[^\n]*)\n(# )?{key} = ", sections[table], re.M)
            assert match, f"[{table}] {key} is missing or has no comment above it"
    assert "# [gcp]" in text and '# project = "your-gcp-project"' in text


@pytest.mark.parametrize(("directory", "name"), [
    ("My Model_v2", "my-model-v2"),
    ("2024-forecast", "forecast"),
    ("Modèle Été", "modele-ete"),
    ("a" * 29 + "-bcd", "a" * 29),  # cut to 30, then the trailing hyphen goes
    ("123", "ml-stack"),
    ("---", "ml-stack"),
])
def test_name_from_the_directory_follows_gcp_rules(tmp_path, directory, name):
    assert project_name(tmp_path / directory) == name
    new_project(tmp_path / directory)
    assert Stack.load(tmp_path / directory / "mlinfra.toml").name == name


def test_explicit_name_is_used_or_refused_with_a_suggestion(tmp_path):
    new_project(tmp_path / "p", name="churn-model")
    assert Stack.load(tmp_path / "p" / "mlinfra.toml").name == "churn-model"
    with pytest.raises(UsageError, match=r"'Churn_Model'.*did you mean 'churn-model'"):
        new_project(tmp_path / "q", name="Churn_Model")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"target": "gpc"}, r"unknown target 'gpc'.*did you mean 'gcp'"),
    ({"gpu": "t44"}, r"unknown GPU 't44'.*did you mean 't4'"),
    ({"gpu": "nvidia-tesla-k80"}, r"not allowed: end of support"),
])
def test_bad_target_or_gpu_is_exit_2_and_writes_nothing(tmp_path, kwargs, message):
    (tmp_path / ".gitignore").write_text("venv/\n")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match=message) as info:
        new_project(tmp_path, **kwargs)
    assert info.value.exit_code == 2
    assert snapshot(tmp_path) == before


def test_refuses_to_overwrite_and_changes_nothing(tmp_path):
    (tmp_path / "mlinfra.toml").write_text('name = "mine"\n')
    (tmp_path / ".gitignore").write_text("venv/")  # no trailing newline: must stay exactly so
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match=r"refusing to overwrite .*mlinfra\.toml: pass --force") as info:
        new_project(tmp_path)
    assert info.value.exit_code == 2
    assert "Makefile" not in str(info.value)
    assert snapshot(tmp_path) == before  # no Makefile written, .gitignore untouched

    (tmp_path / "Makefile").write_text("all:\n\techo mine\n")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match=r"mlinfra\.toml, .*Makefile: pass --force to replace them"):
        new_project(tmp_path, gpu="t4")
    assert snapshot(tmp_path) == before


def test_force_rewrites_and_gitignore_gets_the_entry_once(tmp_path):
    (tmp_path / ".gitignore").write_text("venv/")
    (tmp_path / "Makefile").write_text("old\n")
    first = new_project(tmp_path, force=True)
    assert Path(".gitignore") in first.written
    gitignore = (tmp_path / ".gitignore").read_text()
    assert gitignore.startswith("venv/\n#") and gitignore.endswith(".mlinfra/\n")

    second = new_project(tmp_path, force=True, gpu="l4")
    assert second.skipped == [Path(".gitignore")]
    assert (tmp_path / ".gitignore").read_text() == gitignore
    assert gitignore.splitlines().count(".mlinfra/") == 1
    assert Stack.load(tmp_path / "mlinfra.toml").compute.gpu == "l4"
    assert "old" not in (tmp_path / "Makefile").read_text()


def test_gitignore_with_another_spelling_of_the_entry_is_left_alone(tmp_path):
    (tmp_path / ".gitignore").write_text("/.mlinfra\n")
    result = new_project(tmp_path)
    assert result.skipped == [Path(".gitignore")]
    assert (tmp_path / ".gitignore").read_text() == "/.mlinfra\n"


def test_makefile_targets_run_the_right_commands(tmp_path):
    new_project(tmp_path)
    assert make_dry_run(tmp_path, *TARGETS) == [
        "mlinfra up --yes -f mlinfra.toml",
        "mlinfra down --yes -f mlinfra.toml",
        "mlinfra verify -f mlinfra.toml",
        "mlinfra rebuild --yes -f mlinfra.toml",
        "mlinfra heal -f mlinfra.toml",
    ]
    assert make_dry_run(tmp_path, "up", "STACK=prod.toml", "MLINFRA=.venv/bin/mlinfra") == [
        ".venv/bin/mlinfra up --yes -f prod.toml"]


def test_new_then_make_up_verify_down_with_real_nodes(tmp_path):
    project = tmp_path / "scaffold-e2e"
    new_project(project)
    env = {**os.environ, "PATH": f"{MLINFRA.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        run = subprocess.run(["make", "up", "verify", "down", f"MLINFRA={MLINFRA}"], cwd=project, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.count("PASSED") == 2  # the gate in `up`, then `verify`
        assert "Destroyed 1 resource(s)" in run.stderr
        assert stack_processes("scaffold-e2e") == []  # `make down` itself, before the safety net
    finally:
        subprocess.run([str(MLINFRA), "down", "--yes", "-f", str(project / "mlinfra.toml")],
                       env=env, capture_output=True, timeout=120)
    assert stack_processes("scaffold-e2e") == []


# -- mlinfra ci github ---------------------------------------------------------------------

def load_workflow(path: Path) -> dict:
    import yaml  # not a runtime dependency; the test extra provides it (fail, never skip)

    return yaml.safe_load(path.read_text())


def test_workflow_structure(tmp_path):
    result = ci_github(tmp_path, stack_file="deploy/prod.toml", schedule="30 2 * * 1-5")
    assert result.written == [WORKFLOW, REQUIREMENTS]
    text = (tmp_path / WORKFLOW).read_text()
    flow = load_workflow(tmp_path / WORKFLOW)

    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads a bare `on` key as true
    assert triggers["schedule"] == [{"cron": "30 2 * * 1-5"}]
    assert "workflow_dispatch" in triggers
    assert flow["permissions"] == {"contents": "read", "id-token": "write"}
    assert flow["concurrency"]["cancel-in-progress"] is False and flow["concurrency"]["group"]

    [job] = flow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] > 0
    assert job["env"] == {"STACK": "deploy/prod.toml"}
    steps = job["steps"]
    assert [s.get("uses", "").split("@")[0] for s in steps[:2]] == ["actions/checkout", "actions/setup-python"]
    assert steps[1]["with"]["python-version"] == "3.11"
    # From the repository's own pinned source, failing closed until it says one.
    assert any(s.get("run", "") == f"pip install -r {REQUIREMENTS} && command -v mlinfra" for s in steps)

    [auth] = [s for s in steps if s.get("uses", "").startswith("google-github-actions/auth@")]
    assert auth["with"] == {"workload_identity_provider": "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}",
                            "service_account": "${{ vars.GCP_SERVICE_ACCOUNT }}"}
    for banned in ("credentials_json", "GOOGLE_APPLICATION_CREDENTIALS", "secrets.", ".json_key", "key_file"):
        assert banned not in text

    [rebuild] = [s for s in steps if "mlinfra rebuild" in s.get("run", "")]
    assert rebuild["run"].startswith("mlinfra rebuild --yes --junit mlinfra-junit.xml --report mlinfra-report.json")
    assert rebuild["run"].endswith('-f "$STACK"')
    assert "if" not in rebuild and rebuild["timeout-minutes"] < job["timeout-minutes"]
    assert steps.index(auth) < steps.index(rebuild)

    [upload] = [s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@v6")]
    assert upload["if"] == "always()"
    assert set(upload["with"]["path"].split()) == {"mlinfra-junit.xml", "mlinfra-report.json"}
    down = steps[-1]
    assert down["if"] == "always()" and down["run"] == 'mlinfra down --yes -f "$STACK"'
    assert steps.index(rebuild) < steps.index(upload) < len(steps) - 1


@pytest.mark.parametrize("stack_file", [
    "my stack.toml", "x'.toml", 'x".toml', "$HOME.toml", "a;b.toml", "`id`.toml", "../up.toml",
    "a/../b.toml", "/etc/stack.toml", "-f.toml", "dir/", "", "a//b.toml", "x\n.toml",
])
def test_workflow_refuses_unsafe_stack_paths(tmp_path, stack_file):
    with pytest.raises(UsageError, match="plain relative path") as info:
        ci_github(tmp_path, stack_file=stack_file)
    assert info.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("schedule", ["0 3 * *", "0 3 * * * *", "0 3 * * 'x'", "0 3 * * ${{ x }}", ""])
def test_workflow_refuses_bad_schedules(tmp_path, schedule):
    with pytest.raises(UsageError, match="cron expression"):
        ci_github(tmp_path, schedule=schedule)
    assert list(tmp_path.iterdir()) == []


def test_workflow_refuses_to_overwrite_without_force(tmp_path):
    ci_github(tmp_path)
    (tmp_path / WORKFLOW).write_text("# edited by hand\n")
    before = snapshot(tmp_path)
    with pytest.raises(UsageError, match=r"mlinfra-rebuild\.yml: pass --force"):
        ci_github(tmp_path, schedule="0 4 * * *")
    assert snapshot(tmp_path) == before
    ci_github(tmp_path, schedule="0 4 * * *", force=True)
    assert "'0 4 * * *'" in (tmp_path / WORKFLOW).read_text()


def test_workflow_notes_about_the_stack(tmp_path):
    assert "does not exist yet" in ci_github(tmp_path).notes[0]
    new_project(tmp_path, target="gcp", gpu="t4")
    notes = ci_github(tmp_path, force=True).notes
    assert any("backend = 'gcs'" in note for note in notes)



def test_no_generated_file_installs_the_unrelated_pypi_mlinfra(tmp_path):
    """`mlinfra` on PyPI is another project: a workflow that installs it runs someone else's code
    with the stack's cloud credentials."""
    import re

    new_project(tmp_path / "p", gpu="t4")
    ci_github(tmp_path / "p")
    pinned = "git+https://github.com/acme/mlinfra@v0.1.0"
    ci_github(tmp_path / "q", install=pinned)
    files = [f for f in (tmp_path).rglob("*") if f.is_file()]
    assert len(files) >= 5
    for path in files:
        text = path.read_text()
        assert not re.search(r"pip install +['\"]?mlinfra(\b|==)", text), path
    assert f"pip install {pinned} && command -v mlinfra" in (tmp_path / "q" / WORKFLOW).read_text()
    assert not (tmp_path / "q" / REQUIREMENTS).exists()
    for bad in ("mlinfra", "mlinfra==0.1.0", "-r x; curl evil"):
        with pytest.raises(UsageError):
            ci_github(tmp_path / "r", install=bad, force=True)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.yml"))
