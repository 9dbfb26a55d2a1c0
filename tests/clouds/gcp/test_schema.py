"""mlinfra.schema finds what the real provider would reject, and init failures are explained.

The checker is what stands in for `terraform validate` here, so it must fail on bad modules:
each case below breaks one rule of the hashicorp/google 6.50.0 schema.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from mlinfra.clouds.gcp import schema
from mlinfra.targets import gcp
from mlinfra.errors import MlinfraError
from mlinfra.engine.events import Diagnostic
from helpers import DATA, SCHEMA, seed_stack

INIT = sorted((DATA / "gcp" / "init").glob("*.json"))

HEADER = """
terraform {
  required_providers {
    google = { source = "hashicorp/google", version = "~> 6.50" }
  }
}
"""
GOOD_INSTANCE = """
resource "google_compute_instance" "vm" {
  name         = "vm"
  machine_type = "n1-standard-4"
  boot_disk {
    initialize_params { image = "debian-cloud/debian-12" }
  }
  network_interface { network = "default" }
  %s
}
"""


def module(tmp_path: Path, body: str) -> Path:
    (tmp_path / "main.tf").write_text(textwrap.dedent(HEADER + body))
    return tmp_path


def problems(tmp_path: Path, body: str) -> list[str]:
    return [str(p) for p in schema.check_module(module(tmp_path, body), SCHEMA)]


def test_a_correct_module_has_no_problems(tmp_path):
    extra = """
  guest_accelerator {
    type  = "nvidia-tesla-t4"
    count = 1
  }
  scheduling { on_host_maintenance = "TERMINATE" }
  dynamic "service_account" {
    for_each = []
    content { scopes = ["cloud-platform"] }
  }
  lifecycle { ignore_changes = [metadata] }
"""
    assert problems(tmp_path, GOOD_INSTANCE % extra) == []


@pytest.mark.parametrize("extra,expected", [
    ("guest_accelerator = [{ type = \"nvidia-tesla-t4\", count = 1 }]", "guest_accelerator: is a block: write `guest_accelerator { ... }`"),
    ("scheduling { preemtible = true }", "scheduling.preemtible: is not an argument of this block — did you mean 'preemptible'?"),
    ("scheduling {}\n  scheduling {}", "scheduling: appears 2 times; at most 1 allowed"),
    ("labels { a = \"b\" }", "labels: is an argument, not a block: write `labels = ...`"),
    ("cpu_platform = \"Intel\"", "cpu_platform: is read-only"),
    ("guest_accelerator { type = \"nvidia-tesla-t4\" }", "guest_accelerator.count: is required"),
    ("gpu { type = \"t4\" }", "gpu: is not a block of this resource"),
    ("dynamic \"service_account\" {\n    for_each = []\n    content { email = \"x\" }\n  }", "service_account.scopes: is required"),
])
def test_each_schema_rule_fails_a_bad_module(tmp_path, extra, expected):
    found = problems(tmp_path, GOOD_INSTANCE % extra)
    assert any(expected in p for p in found), found


def test_missing_required_and_unknown_types(tmp_path):
    found = problems(tmp_path, """
resource "google_compute_instance" "vm" {
  name = "vm"
}
resource "google_compute_firewal" "fw" {}
data "google_compute_image" "img" {
  bogus = 1
}
""")
    assert any("google_compute_instance.vm.machine_type: is required" in p for p in found)
    assert any("google_compute_instance.vm.boot_disk: is required: at least 1 block" in p for p in found)
    assert any("google_compute_instance.vm.network_interface: is required" in p for p in found)
    assert any("did you mean 'google_compute_firewall'" in p for p in found)
    assert any(p.startswith("main.tf:") and "data.google_compute_image.img.bogus" in p for p in found)


def test_rendered_module_with_a_broken_template_is_caught(tmp_path):
    """The matrix test relies on this: a template mistake shows up as a problem."""

    rendered = seed_stack(tmp_path).render()
    main = rendered.workdir / "main.tf"
    main.write_text(main.read_text().replace("allow_stopping_for_update = true", "allow_stoping_for_update = true"))
    found = [str(p) for p in schema.check_module(rendered.workdir, SCHEMA)]
    assert found and "did you mean 'allow_stopping_for_update'" in found[0]


def test_schema_file_errors_are_one_line(tmp_path):
    with pytest.raises(MlinfraError, match="cannot read the provider schema"):
        schema.check_module(module(tmp_path, ""), tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format_version": "1.0"}))
    with pytest.raises(MlinfraError, match="not a provider schema"):
        schema.check_module(module(tmp_path, ""), bad)


def test_a_provider_missing_from_the_schema_file_is_reported(tmp_path):
    found = problems(tmp_path, 'resource "aws_instance" "x" {}\n')
    assert any("the schema file has no provider registry.terraform.io/hashicorp/aws" in p for p in found)


# -- Terraform cannot install the provider --------------------------------------------------------

@pytest.mark.parametrize("path", INIT, ids=lambda p: p.stem)
def test_recorded_init_failures_get_one_line(path):
    recorded = json.loads(path.read_text())
    assert recorded["source"]
    diag = recorded["diagnostic"]
    for form in (diag, Diagnostic(diag["severity"], diag["summary"], diag["detail"]), f"{diag['summary']}: {diag['detail']}"):
        line = gcp.explain_init_failure([form])
        assert line and "\n" not in line and "mlinfra render" in line and "provider mirror" in line


def test_other_init_failures_are_not_explained_away():
    assert gcp.explain_init_failure([]) is None
    assert gcp.explain_init_failure([{"severity": "error", "summary": "Backend initialization required", "detail": ""}]) is None


def test_recorded_failure_is_what_the_bundled_terraform_says_now(tmp_path):
    """Re-record: init on a rendered GCP module, with no registry and an empty mirror."""
    import subprocess
    import sys

    from mlinfra.engine import terraform_env

    workdir = seed_stack(tmp_path).render().workdir
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    config = tmp_path / "terraformrc"
    config.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n')
    env = {**terraform_env(), "TF_CLI_CONFIG_FILE": str(config)}
    result = subprocess.run([sys.executable, "-m", "mlinfra.engine._exec", "init", "-input=false", "-json", "-backend=false"],
                            cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    diagnostics = [json.loads(line)["diagnostic"] for line in result.stdout.splitlines() if '"diagnostic"' in line]
    assert gcp.explain_init_failure(diagnostics) is not None, diagnostics
    shutil.rmtree(workdir / ".terraform", ignore_errors=True)
