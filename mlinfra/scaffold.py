"""Files for the user's own project: ``mlinfra new`` and ``mlinfra ci github``.

``new_project`` writes a commented ``mlinfra.toml``, a ``Makefile`` whose targets call
mlinfra, and the ``.mlinfra/`` entry in ``.gitignore``; ``ci_github`` writes the scheduled
destroy-rebuild workflow. Both check everything before they write anything, so a refusal
(a file exists, a bad option) leaves the directory exactly as it was, and each file is
written whole or not at all (temp file + rename). Nothing here prints.

The templates live in ``templates/scaffold/``. The stack file is Jinja and is fed only
validated values; the Makefile and the workflow are plain text with ``__TOKEN__`` markers,
because the workflow's ``${{ ... }}`` expressions would fight Jinja's syntax.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from mlinfra import environments, spec, targets
from mlinfra.clouds.gcp import catalog
from mlinfra.errors import MlinfraError, UnknownGpu, UsageError
from mlinfra.targets.gcp import PLACEHOLDER_PROJECT  # a valid project ID the user must change

STACK_FILE = "mlinfra.toml"
MAKEFILE = "Makefile"
GITIGNORE = ".gitignore"
WORKFLOW = Path(".github/workflows/mlinfra-rebuild.yml")
GITIGNORE_ENTRY = ".mlinfra/"
# The region for a new gcp stack: it offers every GPU in the catalog that GCP documents zones for.
DEFAULT_REGION = "us-central1"
FALLBACK_NAME = "ml-stack"

# What a stack path in the workflow may look like: it goes into YAML and a shell line, so
# only characters that need no quoting in either, as a relative path inside the repository.
_STACK_PATH = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*$")
# A pip requirement that needs no quoting in YAML or shell: a git URL, a path, or -r FILE.
_INSTALL = re.compile(r"^(-r )?[A-Za-z0-9.][A-Za-z0-9@:/._+#=~-]*$")
REQUIREMENTS = Path(".github/mlinfra-requirements.txt")
DEFAULT_INSTALL = f"-r {REQUIREMENTS}"
_CRON_FIELD = re.compile(r"^[A-Za-z0-9*/,-]+$")
_GCP_NAME = re.compile(catalog.NAME_PATTERN)  # the spec's rule (RFC 1035)


@dataclass
class ScaffoldResult:
    """What a scaffold command did. Paths are relative to ``directory``."""

    directory: Path
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)  # already as wanted: left untouched
    notes: list[str] = field(default_factory=list)  # what the user should do next


# -- mlinfra new ---------------------------------------------------------------------------


def new_project(
    directory: Path, *, target: str = "local", gpu: str = "none", name: str | None = None, force: bool = False
) -> ScaffoldResult:
    """Write ``mlinfra.toml``, ``Makefile`` and the ``.gitignore`` entry into ``directory``.

    Raises UsageError (and writes nothing) for a bad target, GPU or name, or when
    ``mlinfra.toml`` or ``Makefile`` exists and ``force`` is false.
    """
    directory = Path(directory)
    target = target.strip().lower()
    if target not in targets.NAMES:
        raise UsageError(
            f"unknown target {target!r}: use {' or '.join(map(repr, targets.NAMES))}"
            + catalog.did_you_mean(target, list(targets.NAMES))
        )
    gpu = _check_gpu(gpu)
    name = _check_name(name) if name is not None else project_name(directory)
    check_directory(directory)
    if not force:
        refuse_existing(directory, [STACK_FILE, MAKEFILE])

    stack_text = render_stack_file(name=name, target=target, gpu=gpu)
    _check_loads(stack_text, target, gpu)
    files = {Path(STACK_FILE): stack_text, Path(MAKEFILE): _template(f"{MAKEFILE}.tmpl")}
    gitignore = _gitignore_with_entry(directory / GITIGNORE)

    result = ScaffoldResult(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for relative, text in files.items():
        write_file(directory / relative, text)
        result.written.append(relative)
    if gitignore is None:
        result.skipped.append(Path(GITIGNORE))
    else:
        write_file(directory / GITIGNORE, gitignore)
        result.written.append(Path(GITIGNORE))
    result.notes += targets.driver(target).scaffold_notes(STACK_FILE)
    result.notes.append("run `make up` to create the stack, `make down` to destroy it")
    return result


def project_name(directory: Path) -> str:
    """A valid stack name from a directory's name: 'My Model_v2' -> 'my-model-v2'."""
    return sanitize_name(Path(directory).resolve().name) or FALLBACK_NAME


def sanitize_name(text: str) -> str:
    """Fold to GCP naming rules (lowercase, digits, hyphens, a letter first, at most 30); may be ''."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    name = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower())
    name = re.sub(r"^[^a-z]+", "", name)  # a letter first: drops leading digits and hyphens
    return name[: spec.NAME_MAX].rstrip("-")


def render_stack_file(*, name: str, target: str, gpu: str) -> str:
    """The commented stack file's text (values already validated by the caller)."""
    import jinja2  # lazy: only `new` needs it, and importing it costs time on every command

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_templates()),
        undefined=jinja2.StrictUndefined,  # a typo in the template fails loudly, not as ""
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["toml"] = _toml
    template = env.get_template("mlinfra.toml.j2")
    return template.render(
        name=name, target=target, gpu=gpu, project=PLACEHOLDER_PROJECT, region=DEFAULT_REGION, d=_spec_defaults()
    )


def _check_gpu(gpu: str) -> str:
    gpu = gpu.strip().lower()
    if gpu == "none":
        return gpu
    try:
        catalog.lookup_gpu(gpu)
    except UnknownGpu as exc:
        raise UsageError(f"--gpu: {exc}", hint="`mlinfra gpus` lists the GPUs; 'none' for CPU only") from None
    return gpu


def _check_name(name: str) -> str:
    if _GCP_NAME.match(name) and len(name) <= spec.NAME_MAX:
        return name
    suggestion = sanitize_name(name)
    hint = f" — did you mean {suggestion!r}?" if suggestion and suggestion != name else ""
    raise UsageError(
        f"--name {name!r} is not a valid stack name: lowercase letters, digits and hyphens, "
        f"starting with a letter, at most {spec.NAME_MAX} characters{hint}"
    )


def _check_loads(stack_text: str, target: str, gpu: str) -> None:
    """The file we are about to write must load; for gcp this applies the GPU/zone rules."""
    with tempfile.TemporaryDirectory(prefix="mlinfra-new-") as tmp:
        path = Path(tmp) / STACK_FILE
        path.write_text(stack_text, encoding="utf-8")
        try:
            spec.StackSpec.load(path)
        except MlinfraError as exc:
            detail = getattr(exc, "detail", exc.message)
            key = getattr(exc, "key", "")
            raise UsageError(
                f"cannot write a {target} stack with --gpu {gpu}: {key + ': ' if key else ''}{detail}",
                hint="choose another --gpu (or --gpu none) and edit [compute] afterwards",
            ) from None


def _spec_defaults() -> dict[str, dict[str, str]]:
    """Each stack section's defaults as TOML literals, read from the spec's own dataclasses.

    The template writes these rather than its own copies, so a changed default in the spec
    changes every new stack file too (a test checks that every spec key appears).
    """
    defaults: dict[str, dict[str, str]] = {"stack": {}}
    for f in dataclasses.fields(spec.StackSpec):
        if not f.init:  # bookkeeping the spec works out (placement, the keys a file gave), not a key
            continue
        if f.default is not dataclasses.MISSING:
            if f.default is not None:
                defaults["stack"][f.name] = _toml(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # a section: [gcp], [compute], ...
            section = f.default_factory()
            defaults[f.name] = {
                g.name: _toml(getattr(section, g.name))
                for g in dataclasses.fields(section)
                if getattr(section, g.name) is not None
            }
    return defaults


def _toml(value) -> str:
    """A Python value as a TOML literal. Strings are JSON-escaped, which TOML basic strings accept."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML literal for {value!r}")


def _gitignore_with_entry(path: Path) -> str | None:
    """The .gitignore text with ``.mlinfra/`` added, or None when it already ignores it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    # Equivalent spellings count as present, so a hand-written entry is not duplicated.
    present = {line.strip() for line in text.splitlines()}
    if present & {".mlinfra", ".mlinfra/", "/.mlinfra", "/.mlinfra/", ".mlinfra/*", ".mlinfra/**"}:
        return None
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "# mlinfra work dirs: rendered Terraform, local state, SSH keys, logs\n" + GITIGNORE_ENTRY + "\n"


# -- mlinfra ci github ---------------------------------------------------------------------


def ci_github(
    directory: Path,
    *,
    stack_file: str = STACK_FILE,
    force: bool = False,
    schedule: str = "0 3 * * *",
    install: str = DEFAULT_INSTALL,
) -> ScaffoldResult:
    """Write ``.github/workflows/mlinfra-rebuild.yml`` into the repository at ``directory``.

    Raises UsageError (and writes nothing) for an unsafe stack path, a malformed cron
    schedule, or an existing workflow without ``force``.
    """
    directory = Path(directory)
    check_stack_path(stack_file)
    schedule = check_schedule(schedule)
    check_directory(directory)
    if not force:
        refuse_existing(directory, [str(WORKFLOW)])

    from mlinfra import __version__

    text = render_workflow(stack_file=stack_file, schedule=schedule, version=__version__, install=install)
    result = ScaffoldResult(directory, notes=_stack_notes(directory / stack_file, stack_file))
    write_file(directory / WORKFLOW, text)
    result.written.append(WORKFLOW)
    add_requirements(directory, install, result)
    result.notes.append(
        "set the repository variables GCP_WORKLOAD_IDENTITY_PROVIDER and GCP_SERVICE_ACCOUNT "
        f"(see the comments at the top of {WORKFLOW})"
    )
    return result


def add_requirements(directory: Path, install: str, result: ScaffoldResult) -> None:
    """With the default install, the requirements file the workflows read, for the user to fill in."""
    if install == DEFAULT_INSTALL and not (directory / REQUIREMENTS).exists():
        write_file(directory / REQUIREMENTS, _template("mlinfra-requirements.txt.tmpl"))
        result.written.append(REQUIREMENTS)
        result.notes.append(f"say in {REQUIREMENTS} where the jobs install mlinfra from (until then they fail)")


def render_workflow(*, stack_file: str, schedule: str, version: str, install: str = "") -> str:
    """The workflow's text; each value is checked to need no quoting in YAML or shell."""
    check_stack_path(stack_file)
    values = {"__STACK_FILE__": stack_file, "__SCHEDULE__": check_schedule(schedule)}
    return fill_workflow(f"{WORKFLOW.name}.tmpl", values, version=version, install=install)


def fill_workflow(template: str, values: dict[str, str], *, version: str, install: str) -> str:
    """A workflow template with its ``__TOKEN__`` markers replaced (each value already checked),
    plus the install source and the version it was written for, which every workflow carries."""
    install = check_install(install or DEFAULT_INSTALL)
    if not re.match(r"^[0-9A-Za-z.+-]+$", version):
        raise ValueError(f"unexpected version string {version!r}")
    text = _template(template)
    for token, value in {**values, "__MLINFRA_VERSION__": version, "__INSTALL__": install}.items():
        if token not in text:
            raise RuntimeError(f"workflow template {template} lacks {token}")  # a broken install, not bad input
        text = text.replace(token, value)
    return text


def check_install(install: str) -> str:
    """What `pip install` gets in CI: a pinned source the user controls, never PyPI's "mlinfra"
    (another project's name: the job would run someone else's code with the cloud credentials)."""
    install = install.strip()
    target = install.removeprefix("-r ").strip()
    if re.fullmatch(r"(?i)mlinfra\s*([=<>!~].*)?", target):
        raise UsageError(
            f"--install {install!r}: the name 'mlinfra' on PyPI belongs to another project; install this one from "
            "a source you control: a git URL at a tag or commit (git+https://...@v0.1.0) or a wheel in the repository"
        )
    if not _INSTALL.match(install):
        raise UsageError(f"--install {install!r}: use a git URL, a path or '-r FILE' without spaces, quotes or '$'")
    return install


def check_stack_path(stack_file: str) -> None:
    parts = stack_file.split("/")
    if not _STACK_PATH.match(stack_file) or stack_file.endswith("/") or any(part in ("", ".", "..") for part in parts):
        raise UsageError(
            f"--file {stack_file!r}: use a plain relative path inside the repository "
            "(letters, digits, '_', '-', '.' and '/'; no spaces, quotes, '$' or '..')"
        )


def check_schedule(schedule: str) -> str:
    fields = schedule.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise UsageError(f"--schedule {schedule!r} is not a cron expression of five fields, like '0 3 * * *' (UTC)")
    return " ".join(fields)


def _stack_notes(path: Path, stack_file: str) -> list[str]:
    """Advice about the stack the workflow will rebuild (never a refusal: it may come later)."""
    try:  # with environments: the first one speaks for all (they share the target and backend)
        stack = spec.StackSpec.load(path, next(iter(sorted(environments.tables(environments.read(path)))), None))
    except MlinfraError as exc:
        if not path.exists():
            return [f"{stack_file} does not exist yet: create it with `mlinfra new` before the first run"]
        return [f"{stack_file} does not load yet ({exc.message}): the workflow will fail until it does"]
    notes = stack.driver.ci_notes(stack, stack_file)
    if stack.protected:
        notes.append(f"{stack_file} is protected = true: `mlinfra rebuild` will refuse to destroy it")
    return notes


# -- shared --------------------------------------------------------------------------------


def _templates() -> Path:
    from mlinfra.render import templates_dir  # lazy: render pulls in the spec/render stack

    return templates_dir() / "scaffold"


def _template(name: str) -> str:
    return (_templates() / name).read_text(encoding="utf-8")


def check_directory(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a directory")


def refuse_existing(directory: Path, names: list[str]) -> None:
    """Check every file first, so the message names them all and nothing is half-written."""
    existing = [name for name in names if (directory / name).exists()]
    if existing:
        listed = ", ".join(str(directory / name) for name in existing)
        raise UsageError(
            f"refusing to overwrite {listed}: pass --force to replace {'it' if len(existing) == 1 else 'them'}"
        )


def write_file(path: Path, text: str) -> None:
    """Whole or not at all: write a temp file beside the target, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary project files
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
