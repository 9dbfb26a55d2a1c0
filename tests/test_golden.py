"""Golden rendered modules: what a few representative stacks render to, byte for byte.

A template change shows up here as a diff to review. After an intended change, rewrite the
files with ``pytest tests/test_golden.py --update-golden`` and commit them with the change.
Machine-specific values in terraform.tfvars.json (paths, the interpreter, the stack's fresh SSH
key, the reference server's source, local ports picked at render time) are replaced by
placeholders; everything else is compared as is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from mlinfra import Stack

GOLDEN = ROOT / "tests" / "golden"

CASES = {
    # Two regions × two replicas of the reference server on this machine.
    "local-two-regions": dict(local={"regions": ["east", "west"]}, compute={"replicas": 2},
                              serve={"env": {"MODEL": "demand-v3"}}),
    # The seed article's stack: one T4 on n1-standard-4 in us-central1-a, port 8000.
    "gcp-t4-seed": dict(target="gcp", gcp={"project": "ml-demo-123456", "zones": ["us-central1-a"]},
                        compute={"gpu": "t4", "machine_type": "n1-standard-4"}),
    # Bundled machine type, Spot, two regions, state in GCS.
    "gcp-a100-spot-gcs": dict(target="gcp", gcp={"project": "ml-demo-123456", "regions": ["us-central1", "europe-west4"]},
                              compute={"gpu": "a100", "spot": True}, state={"backend": "gcs", "bucket": "tf-state-demo"}),
}


def normalized(tfvars: dict, workdir: Path, stack_dir: Path) -> dict:
    text = json.dumps(tfvars)
    for real, placeholder in ((str(workdir), "<WORKDIR>"), (str(stack_dir), "<STACK_DIR>"), (sys.executable, "<PYTHON>")):
        text = text.replace(json.dumps(real)[1:-1], placeholder)
    data = json.loads(text)
    if data.get("ssh_public_key"):
        data["ssh_public_key"] = "<SSH_PUBLIC_KEY>"
    if data.get("reference_server"):
        data["reference_server"] = "<mlinfra/serve.py>"
    for key, name in (("reference_completions", "completions.py"), ("reference_textgen", "textgen.py"),
                      ("reference_textgen_data", "textgen.json")):
        if data.get(key):
            data[key] = f"<mlinfra/{name}>"
    for node in data.get("nodes", {}).values():
        if "cwd" in node:  # local nodes: a port is picked from what is free at render time
            node["port"] = "<PORT>"
    return data


def rendered_files(name: str, tmp_path: Path) -> dict[str, str]:
    stack = Stack(name=name, path=tmp_path / "mlinfra.toml", **CASES[name])
    result = stack.render()
    files = {f: (result.workdir / f).read_text() for f in result.files if f.endswith(".tf")}
    tfvars = json.loads((result.workdir / "terraform.tfvars.json").read_text())
    files["terraform.tfvars.json"] = json.dumps(normalized(tfvars, result.workdir, tmp_path), indent=2, sort_keys=True) + "\n"
    if (result.workdir / "backend.tfbackend.json").exists():
        files["backend.tfbackend.json"] = (result.workdir / "backend.tfbackend.json").read_text()
    return files


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_module_matches_its_golden_copy(name, tmp_path, update_golden):
    files = rendered_files(name, tmp_path)
    folder = GOLDEN / name
    if update_golden:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.iterdir():
            stale.unlink()
        for file, text in files.items():
            (folder / file).write_text(text)
    expected = {p.name: p.read_text() for p in sorted(folder.iterdir())} if folder.is_dir() else {}
    assert expected, f"no golden files in {folder}: run pytest {__file__} --update-golden"
    assert sorted(files) == sorted(expected)
    for file, text in files.items():
        assert text == expected[file], f"{name}/{file} differs from its golden copy (intended? --update-golden)"
