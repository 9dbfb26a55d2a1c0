"""The rendered GCP module against an independent security scanner: checkov.

Checkov lives in its own venv (`make .venv-checkov/bin/checkov`, a prerequisite of `make test`):
it pins many dependencies that must not touch the project's. One checkov run scans a spread of
stacks (every GPU in the catalog, Spot, multi-region, public opt-in, private nodes, a
customer-managed disk key), because checkov takes seconds to start. Any failure that is not
skipped inline in templates/gcp/ with its reason fails the test.

Before the hardening (block-project-ssh-keys, Shielded VM, gcp.public_ip, gcp.disk_kms_key) a
plain T4 stack got 20 passed, 4 failed (CKV_GCP_32, CKV_GCP_38, CKV_GCP_39, CKV_GCP_40) per VM.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT, gcp_stack
from mlinfra.clouds.gcp import catalog

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
PINNED = re.search(r"^CHECKOV_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
KMS_KEY = "projects/ml-demo-123456/locations/us-central1/keyRings/mlinfra/cryptoKeys/boot-disks"
# What may be skipped, and why: each has its inline reason in templates/gcp/main.tf.j2.
ALLOWED_SKIPS = {
    "CKV_GCP_40",  # external IP: the default (gcp.public_ip = true); false removes it
    "CKV_GCP_38",  # customer-managed disk key: opt-in (gcp.disk_kms_key)
}
# The checks this hardening fixed: they must pass on every VM, skipped or not.
FIXED = {"CKV_GCP_32", "CKV_GCP_39"}


def spread() -> dict[str, dict]:
    """Stack sections by name: every GPU, then the shapes that change what is rendered."""
    stacks: dict[str, dict] = {}
    for gpu in catalog.gpus().values():
        count = catalog.counts_for(gpu)[0]
        machine = catalog.default_machine_type(gpu, count)
        spot = not machine.on_demand  # Spot where the GPU only comes as Spot
        if gpu.zones is None:  # the catalog has not verified its zones: name one
            gcp = {"regions": ["us-central1"], "zones": ["us-central1-b"]}
        else:
            regions = catalog.regions_for(gpu, machine if machine.bundled else None)
            gcp = {"regions": ["us-central1" if "us-central1" in regions else regions[0]]}
        stacks[gpu.short.replace("-", "")] = dict(gcp=gcp, compute={"gpu": gpu.short, "gpu_count": count, "spot": spot})
    stacks["cpu"] = dict(compute={"gpu": "none"})
    stacks["spot"] = dict(compute={"gpu": "l4", "spot": True}, gcp={"spot_termination": "DELETE"})
    stacks["multiregion"] = dict(gcp={"regions": ["us-central1", "europe-west4", "asia-southeast1"]},
                                 compute={"gpu": "t4", "replicas": 2}, state={"backend": "gcs", "bucket": "ml-state-bucket"})
    stacks["public"] = dict(compute={"gpu": "t4"},
                            serve={"allow_cidrs": ["0.0.0.0/0"], "public": True, "ssh_cidrs": ["203.0.113.0/24"]})
    stacks["private"] = dict(compute={"gpu": "t4"}, gcp={"public_ip": False})
    stacks["kms"] = dict(compute={"gpu": "t4"}, gcp={"disk_kms_key": KMS_KEY})
    stacks["hardened"] = dict(compute={"gpu": "l4", "replicas": 2}, gcp={"public_ip": False, "disk_kms_key": KMS_KEY})
    return stacks


def render_tree(tmp_path: Path, scan: Path) -> list[str]:
    """Render every stack of the spread; copy its module (.tf + tfvars) to scan/as-rendered/<name>/
    and, without its checkov:skip comments, to scan/no-skips/<name>/."""
    names = []
    for name, sections in spread().items():
        sections = {**sections, "gcp": {"project": "ml-demo-123456", **sections.get("gcp", {})}}
        rendered = gcp_stack(tmp_path / "stacks", name, **sections).render()
        for variant in ("as-rendered", "no-skips"):
            module = scan / variant / name
            module.mkdir(parents=True)
            for path in [*rendered.workdir.glob("*.tf"), rendered.workdir / "terraform.tfvars.json"]:
                lines = path.read_text().splitlines(keepends=True)
                if variant == "no-skips":
                    lines = [line for line in lines if "checkov:skip" not in line]
                (module / path.name).write_text("".join(lines))
        names.append(name)
    return names


def run_checkov(root: Path) -> list[dict]:
    """One checkov run over every module below ``root``: its check results, each with its module."""
    if not CHECKOV.is_file():
        pytest.fail(f"checkov is not installed ({CHECKOV} is missing): run `make .venv-checkov/bin/checkov` "
                    "(`make test` does it), which installs it into its own venv", pytrace=False)
    version = subprocess.run([str(CHECKOV), "--version"], capture_output=True, text=True).stdout.strip()
    if version != PINNED:
        pytest.fail(f"{CHECKOV} is checkov {version or '?'}, the Makefile pins {PINNED}: "
                    "run `make .venv-checkov/bin/checkov`", pytrace=False)
    # --skip-download: no call to Prisma Cloud for guidelines (the tests run offline).
    result = subprocess.run([str(CHECKOV), "-d", str(root), "--framework", "terraform", "-o", "json",
                             "--skip-download", "--compact"],
                            capture_output=True, text=True, timeout=300, cwd=root)
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-4000:]  # 1: failed checks
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert [r["check_type"] for r in reports] == ["terraform"], result.stdout[:2000]
    assert reports[0]["summary"]["parsing_errors"] == 0, reports[0]["results"].get("parsing_errors")
    found = []
    for outcome in ("passed", "failed", "skipped"):
        for check in reports[0]["results"][f"{outcome}_checks"]:
            module = Path(check["file_abs_path"]).resolve().relative_to(root.resolve()).parts[0]
            found.append({**check, "outcome": outcome, "module": module})
    return found


def counts(results: list[dict]) -> dict[str, int]:
    return {o: sum(r["outcome"] == o for r in results) for o in ("passed", "failed", "skipped")}


def test_rendered_gcp_modules_pass_checkov(tmp_path, capsys):
    scan = tmp_path / "scan"
    names = render_tree(tmp_path, scan)
    results = run_checkov(scan)
    as_rendered = [r for r in results if r["module"] == "as-rendered"]
    no_skips = [r for r in results if r["module"] == "no-skips"]
    for r in as_rendered + no_skips:
        r["stack"] = Path(r["file_abs_path"]).parent.name
    with capsys.disabled():
        print(f"\ncheckov {PINNED} over {len(names)} rendered GCP modules: {counts(as_rendered)} "
              f"(without the inline skips: {counts(no_skips)})")

    # Every module was scanned, every VM of it.
    assert {r["stack"] for r in as_rendered} == set(names)
    instances = {(r["stack"], r["resource"]) for r in as_rendered if r["resource"].startswith("google_compute_instance.")}
    assert len(instances) == len(names) + 5 + 1  # one VM each; multiregion has 6, hardened 2

    failures = [f"{r['stack']}: {r['check_id']} {r['resource']} ({r['check_name']})"
                for r in as_rendered if r["outcome"] == "failed"]
    assert failures == [], "checkov failures that are not skipped in templates/gcp/:\n" + "\n".join(failures)
    for r in (r for r in as_rendered if r["outcome"] == "skipped"):
        assert r["check_id"] in ALLOWED_SKIPS, f"{r['check_id']} is skipped in the template but not allowed here"
        assert len(r["check_result"].get("suppress_comment", "")) > 20, f"{r['check_id']} is skipped without a reason"

    # Without the skip comments, only the skipped-by-design checks may fail, and the fixed ones
    # pass on every VM (a skip comment must never hide one of them).
    unskipped = {r["check_id"] for r in no_skips if r["outcome"] == "failed"}
    assert unskipped <= ALLOWED_SKIPS, unskipped
    for check_id in FIXED:
        passed = {(r["stack"], r["resource"]) for r in no_skips if r["check_id"] == check_id and r["outcome"] == "passed"}
        assert passed == instances, f"{check_id} does not pass on {sorted(instances - passed)}"


def test_missing_checkov_fails_with_the_command_that_installs_it(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "CHECKOV", tmp_path / "nope" / "checkov")
    with pytest.raises(pytest.fail.Exception) as info:
        run_checkov(tmp_path)
    assert "make .venv-checkov/bin/checkov" in str(info.value)
