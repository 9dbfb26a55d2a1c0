"""The stack file: typed objects, and a clear one-line error for every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlinfra import Compute, Serve, SpecError, Stack
from mlinfra.cli import app
from helpers import DATA

BAD = DATA / "bad"
BAD_FILES = sorted(BAD.glob("*.toml"))
runner = CliRunner()


def expected_error(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: '"
    return first[len("# expect: "):]


def test_corpus_is_large_enough():
    assert len(BAD_FILES) >= 30



@pytest.mark.parametrize("command", ["up", "plan", "render", "down", "status"])
@pytest.mark.parametrize("path", BAD_FILES, ids=lambda p: p.stem)
def test_bad_stack_is_one_line_exit_2_and_touches_nothing(path, command, tmp_path, monkeypatch, spy_terraform):
    work = tmp_path / "project"
    work.mkdir()
    (work / "mlinfra.toml").write_text(path.read_text())
    monkeypatch.chdir(work)
    result = runner.invoke(app, [command, "--yes"] if command in ("up", "down") else [command])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: mlinfra.toml: {expected_error(path)}\n"
    assert result.stdout == ""
    assert sorted(p.name for p in work.iterdir()) == ["mlinfra.toml"]  # no work dir
    assert not spy_terraform.exists()  # Terraform never ran


def test_missing_file_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["plan", "-f", "nope.toml"])
    assert result.exit_code == 2
    assert result.stderr == "error: nope.toml: no such stack file (pass --file, or create mlinfra.toml)\n"


def test_directory_instead_of_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir.toml").mkdir()
    result = runner.invoke(app, ["plan", "-f", "dir.toml"])
    assert result.exit_code == 2
    assert result.stderr == "error: dir.toml: is a directory, not a stack file\n"


def test_file_and_python_build_the_same_stack(tmp_path):
    path = tmp_path / "mlinfra.toml"
    path.write_text(
        'name = "demand"\n[compute]\ngpu = "T4"\nreplicas = 2\n'
        '[serve]\nallow_cidrs = ["10.1.0.0/16"]\nenv = { MODEL = "v2" }\n'
    )
    from_file = Stack.load(path)
    from_python = Stack(name="demand", compute=Compute(gpu="t4", replicas=2),
                        serve=Serve(allow_cidrs=["10.1.0.0/16"], env={"MODEL": "v2"}))
    from_dicts = Stack(name="demand", compute={"gpu": "t4", "replicas": 2},
                       serve={"allow_cidrs": ["10.1.0.0/16"], "env": {"MODEL": "v2"}})
    assert from_file == from_python == from_dicts
    assert from_file.compute.accelerator.name == "nvidia-tesla-t4"
    assert from_file.serve.allow_cidrs == ("10.1.0.0/16",)


def test_python_construction_validates_with_key_paths():
    with pytest.raises(SpecError) as info:
        Stack(name="demo", compute=Compute(gpu="h1000"))
    assert str(info.value) == "compute.gpu: unknown GPU 'h1000' — did you mean 'h100'?"
    with pytest.raises(SpecError) as info:
        Stack(name="demo", compute={"gpu_count": 0})
    assert str(info.value) == "compute.gpu_count: 0 is out of range (1–16)"


def test_defaults_are_safe():
    stack = Stack(name="demo")
    assert stack.target == "local"
    assert stack.compute.gpu == "none" and stack.compute.accelerator is None
    assert stack.serve.public is False and "0.0.0.0/0" not in stack.serve.allow_cidrs
    assert stack.regions == ("local",)


def test_public_must_be_explicit():
    stack = Stack(name="demo", serve={"allow_cidrs": ["0.0.0.0/0"], "public": True})
    assert stack.serve.public


def test_gpu_aliases_resolve_to_gcp_names():
    for alias, name in [("t4", "nvidia-tesla-t4"), ("a100-80gb", "nvidia-a100-80gb"),
                        ("h100", "nvidia-h100-80gb"), ("nvidia-l4", "nvidia-l4"), ("H200", "nvidia-h200-141gb")]:
        assert Stack(name="x", compute={"gpu": alias}).compute.accelerator.name == name


def test_workdir_sits_beside_the_stack_file(tmp_path):
    path = tmp_path / "sub" / "mlinfra.toml"
    path.parent.mkdir()
    path.write_text('name = "beside"\n')
    assert Stack.load(path).workdir == path.parent.resolve() / ".mlinfra" / "beside"


def test_the_default_gcp_region_is_a_catalog_region_so_keeping_it_needs_no_catalog():
    from mlinfra.clouds.gcp import catalog
    from mlinfra.spec import DEFAULT_GCP_REGIONS, Gcp

    assert Gcp().regions == DEFAULT_GCP_REGIONS and set(DEFAULT_GCP_REGIONS) <= set(catalog.gcp_regions())
    code = ("from mlinfra import Stack; from mlinfra.clouds.gcp import catalog; Stack(name='quick'); "
            "print(catalog.data.cache_info().misses)")
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0"  # loading a local stack read no catalog
