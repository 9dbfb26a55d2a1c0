"""Stack → a plain Terraform root module in a directory.

Jinja decides structure only (which backend, which blocks); every value the
user wrote goes to ``terraform.tfvars.json``, built by the stack's target. That
split is what makes HCL or shell injection impossible by construction: the
templates never see a user string (``template_context`` below is the whole list
of what they see).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.workspace import BACKEND_CONFIG, RENDER_STAMP, TFVARS, Workspace, private_dir


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
    """Write the root module for ``stack`` (an ``api.Stack``) into ``out`` (default: its work dir).

    When the inputs (templates, their context, the values) and the files already there are what
    the last render wrote, nothing is rendered again (no Jinja import, no writes): most commands
    run on an unchanged stack, and each one starts here.
    """
    workspace = Workspace(Path(out)) if out else stack.workspace
    source = templates_dir(stack.driver.templates)
    if not source.is_dir():
        raise MlinfraError(f"no templates for target {stack.spec.target!r} in {source}")
    if out is None:  # first: the target's values read what the last render left there
        private_dir(workspace.root)
    else:
        _writable_dir(workspace.root)
    templates = sorted(t for t in source.iterdir() if t.name.endswith(".tf.j2") or t.suffix in (".py", ".sh"))
    templates += [templates_dir() / name for name in stack.driver.shared_templates]
    context = template_context(stack)
    values = {
        TFVARS: json.dumps(stack.driver.tfvars(stack.spec, stack.placement, workspace), indent=2, sort_keys=True) + "\n"
    }
    backend = stack.backend.config()
    if backend is not None:
        values[BACKEND_CONFIG] = json.dumps(backend, indent=2, sort_keys=True) + "\n"
    names = sorted([t.name[: -len(".j2")] if t.name.endswith(".tf.j2") else t.name for t in templates] + list(values))
    nodes = [n.key for n in stack.placement.nodes]
    workdir = workspace.root
    inputs = _inputs_digest(context, values, templates)
    if out is None and _already_rendered(workdir, inputs, names):  # an ejected module gets no stamp
        return RenderResult(workdir=workdir, files=names, nodes=nodes, changed=False)

    import jinja2  # lazy: keeps `mlinfra --help` (and unchanged renders) fast

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(source)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    files: dict[str, str] = {}
    for template in templates:
        if template.name.endswith(".tf.j2"):
            # From its own text: a shared template lives in another folder than the loader's.
            files[template.name[: -len(".j2")]] = env.from_string(template.read_text()).render(context)
        else:
            files[template.name] = template.read_text()
    files.update(values)

    changed = False
    try:
        for name, text in files.items():
            changed |= write_if_changed(workdir / name, text)
    except OSError as exc:
        from mlinfra.errors import UsageError

        raise UsageError(f"cannot write the module to {workdir}: {exc.strerror or exc}") from None
    # A file this renderer wrote before but no longer produces would still be loaded by Terraform.
    for stale in workdir.glob("*.tf"):
        if stale.name not in files:
            stale.unlink()
            changed = True
    if out is None:
        write_if_changed(workdir / RENDER_STAMP, _stamp(workdir, inputs, names))
    return RenderResult(workdir=workdir, files=sorted(files), nodes=nodes, changed=changed)


def _inputs_digest(context: dict[str, str], values: dict[str, str], templates: list[Path]) -> str:
    digest = hashlib.sha256(json.dumps([context, values]).encode())
    for template in templates:  # a template's name, size and mtime: edited templates re-render
        stat = template.stat()
        digest.update(f"{template.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def _stamp(workdir: Path, inputs: str, names: list[str]) -> str:
    """The inputs, then every file the render wrote as it is now, then the module's *.tf names:
    a file edited or added by hand since then makes the next render a real one."""
    outputs = []
    for name in names:
        stat = (workdir / name).stat()
        outputs.append(f"{name} {stat.st_size} {stat.st_mtime_ns}")
    return "\n".join([inputs, *outputs, " ".join(sorted(p.name for p in workdir.glob("*.tf")))]) + "\n"


def _already_rendered(workdir: Path, inputs: str, names: list[str]) -> bool:
    try:
        return (workdir / RENDER_STAMP).read_text() == _stamp(workdir, inputs, names)
    except (FileNotFoundError, NotADirectoryError):
        return False


def write_if_changed(path: Path, text: str) -> bool:
    """Atomically replace ``path`` with ``text``; untouched when equal (keeps mtimes stable)."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    # A name of its own: two `up`s render before either holds the stack lock. 0600: a module's
    # values can carry the stack's environment.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
    return True


def _writable_dir(path: Path) -> None:
    """An eject target: made if missing; one that cannot be written is bad input, in one line."""
    from mlinfra.errors import UsageError

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the module to {path}: {exc.strerror or exc}") from None
