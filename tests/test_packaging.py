"""The wheel carries the templates: an installed mlinfra renders from any directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from helpers import ROOT



def test_wheel_ships_templates_and_renders_outside_the_checkout(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("mlinfra-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for template in sorted((ROOT / "templates").rglob("*")):
        if template.is_file() and "__pycache__" not in template.parts:
            assert f"mlinfra/templates/{template.relative_to(ROOT / 'templates')}" in names
    assert "mlinfra/clouds/gcp/gpus.toml" in names
    assert "mlinfra/textgen.json" in names  # the reference server's language model

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    project = tmp_path / "elsewhere"
    project.mkdir()
    (project / "mlinfra.toml").write_text('name = "packaged"\n')
    # -I: isolated mode, so neither the checkout nor the editable install is on sys.path.
    code = f"import sys; sys.path.insert(0, {str(site)!r}); sys.path.extend({sys.path!r}); " \
           "from mlinfra.cli import main; sys.argv = ['mlinfra', 'render']; main()"
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (project / ".mlinfra" / "packaged" / "main.tf").is_file()
    check = subprocess.run([sys.executable, "-I", "-c", code.replace("main()", "") +
                            "import mlinfra.render as r; print(r.__file__)"], cwd=project, capture_output=True, text=True)
    assert check.stdout.strip().startswith(str(site))
