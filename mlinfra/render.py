"""Stack → a plain Terraform root module in a directory.

Jinja decides structure only (which backend, which blocks); every value the
user wrote goes to ``terraform.tfvars.json``, built by the stack's target. That
split is what makes HCL or shell injection impossible by construction: the
templates never see a user string (``template_context`` below is the whole list
of what they see).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.workspace import BACKEND_CONFIG, TFVARS, Workspace


@dataclass
class RenderResult:
    workdir: Path
    files: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    changed: bool = False  # whether any file differs from what was there

    def as_dict(self) -> dict[str, Any]:
        return {"workdir": str(self.workdir), "files": self.files, "nodes": self.nodes, "changed": self.changed}


def templates_dir(folder: str = "") -> Path:
    """``templates/<folder>``: inside the wheel mlinfra/templates, in a source checkout ./templates."""
    packaged = Path(__file__).parent / "templates"
    root = packaged if packaged.is_dir() else Path(__file__).parent.parent / "templates"
    return root / folder if folder else root


def template_context(stack) -> dict[str, str]:
    """The only things templates may branch on: choices from fixed sets, never user text."""
    return {"target": stack.spec.target, "backend": stack.backend.kind}


def render(stack, out: Path | None = None) -> RenderResult:
    """Write the root module for ``stack`` (an ``api.Stack``) into ``out`` (default: its work dir)."""
    import jinja2  # lazy: keeps `mlinfra --help` fast

    workspace = Workspace(Path(out)) if out else stack.workspace
    source = templates_dir(stack.driver.templates)
    if not source.is_dir():
        raise MlinfraError(f"no templates for target {stack.spec.target!r} in {source}")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(source)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    files: dict[str, str] = {}
    context = template_context(stack)
    for template in sorted(source.iterdir()):
        if template.name.endswith(".tf.j2"):
            files[template.name[: -len(".j2")]] = env.get_template(template.name).render(context)
        elif template.suffix in (".py", ".sh"):
            files[template.name] = template.read_text()
    files[TFVARS] = json.dumps(stack.driver.tfvars(stack.spec, stack.placement, workspace), indent=2, sort_keys=True) + "\n"
    backend = stack.backend.config()
    if backend is not None:
        files[BACKEND_CONFIG] = json.dumps(backend, indent=2, sort_keys=True) + "\n"

    workdir = workspace.root
    workdir.mkdir(parents=True, exist_ok=True)
    changed = False
    for name, text in files.items():
        changed |= write_if_changed(workdir / name, text)
    # A file this renderer wrote before but no longer produces would still be loaded by Terraform.
    for stale in workdir.glob("*.tf"):
        if stale.name not in files:
            stale.unlink()
            changed = True
    return RenderResult(workdir=workdir, files=sorted(files), nodes=[n.key for n in stack.placement.nodes],
                        changed=changed)


def write_if_changed(path: Path, text: str) -> bool:
    """Atomically replace ``path`` with ``text``; untouched when equal (keeps mtimes stable)."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    # A name of its own: two `up`s render before either holds the stack lock.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True
