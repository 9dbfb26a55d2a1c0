"""``mlinfra ci github``: which workflows to write, for which environments.

Three workflows, each a file of its own so a repository takes the ones it wants:

- ``rebuild`` (``scaffold.ci_github``): the nightly destroy-rebuild-verify job;
- ``review``: on a pull request that touches the stack, ``mlinfra plan --markdown`` per
  environment, posted as one pull-request comment updated in place;
- ``drift``: on a schedule, ``mlinfra plan --detailed-exitcode`` per environment; exit 3 fails it.

The environments are a job matrix (``MLINFRA_ENV`` per job); by default, every ``[env.<name>]`` of
the stack file. Everything is checked before anything is written, and the workflows authenticate
with workload identity federation like the rebuild job (no key file). Nothing here prints.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlinfra import environments, scaffold
from mlinfra.clouds.gcp import catalog
from mlinfra.errors import MlinfraError, UsageError

REVIEW = Path(".github/workflows/mlinfra-plan.yml")
DRIFT = Path(".github/workflows/mlinfra-drift.yml")
FILES = {"rebuild": scaffold.WORKFLOW, "review": REVIEW, "drift": DRIFT}
DEFAULT_DRIFT_SCHEDULE = "0 6 * * *"
_ENV_NAME = re.compile(catalog.NAME_PATTERN)  # environments' own rule: safe in YAML and shell


def stack_environments(path: Path) -> list[str]:
    """The environments the stack file defines (none when it has none or does not load yet)."""
    try:
        return sorted(environments.tables(environments.read(path)))
    except MlinfraError:
        return []


def matrix(envs: list[str]) -> str:
    """The job matrix's list: one job per environment, or one job without any."""
    return "[" + ", ".join(f"'{name}'" for name in envs) + "]" if envs else "['']"


def render(kind: str, *, stack_file: str, envs: list[str], schedule: str, install: str, version: str) -> str:
    """The text of the ``review`` or ``drift`` workflow."""
    scaffold.check_stack_path(stack_file)
    for name in envs:
        if not _ENV_NAME.match(name):
            raise UsageError(f"--env {name!r} is not an environment name (lowercase letters, digits and hyphens)")
    values = {"__STACK_FILE__": stack_file, "__ENVS__": matrix(envs)}
    if kind == "drift":
        values["__SCHEDULE__"] = scaffold.check_schedule(schedule)
    return scaffold.fill_workflow(f"{FILES[kind].name}.tmpl", values, version=version, install=install)


def ci_github(
    directory: Path,
    *,
    stack_file: str = scaffold.STACK_FILE,
    workflows: tuple[str, ...] = ("rebuild",),
    envs: list[str] | None = None,
    force: bool = False,
    schedule: str = "0 3 * * *",
    drift_schedule: str = DEFAULT_DRIFT_SCHEDULE,
    install: str = scaffold.DEFAULT_INSTALL,
) -> scaffold.ScaffoldResult:
    """Write the chosen workflows (``FILES``) into the repository at ``directory``.

    Raises UsageError (and writes nothing) for an unknown workflow or environment, anything
    ``scaffold.ci_github`` refuses, or an existing file without ``force``.
    """
    from mlinfra import __version__

    directory = Path(directory)
    unknown = [kind for kind in workflows if kind not in FILES]
    scaffold.check_schedule(schedule)  # the rebuild's, checked before anything is written
    if unknown or not workflows:
        raise UsageError(f"--workflow {', '.join(unknown) or '(none)'}: choose from {', '.join(FILES)}")
    kinds = list(dict.fromkeys(workflows))
    known = stack_environments(directory / stack_file)
    chosen = list(envs) if envs else known
    strangers = [name for name in chosen if known and name not in known]
    if strangers:
        raise UsageError(
            f"--env {strangers[0]!r}: {stack_file} defines {', '.join(known)}"
            + catalog.did_you_mean(strangers[0], known)
        )
    # Render everything first: a refusal leaves the repository as it was.
    texts = {
        kind: render(
            kind, stack_file=stack_file, envs=chosen, schedule=drift_schedule, install=install, version=__version__
        )
        for kind in kinds
        if kind != "rebuild"
    }
    scaffold.check_directory(directory)
    if not force:
        scaffold.refuse_existing(directory, [str(FILES[kind]) for kind in kinds])
    if "rebuild" in kinds:
        result = scaffold.ci_github(directory, stack_file=stack_file, force=True, schedule=schedule, install=install)
        if known:
            result.notes.append(
                f"{stack_file} defines environments ({', '.join(known)}): set MLINFRA_ENV in {scaffold.WORKFLOW} "
                "to the one the nightly rebuild may destroy (default_env otherwise)"
            )
    else:
        result = scaffold.ScaffoldResult(directory)
    for kind, text in texts.items():
        scaffold.write_file(directory / FILES[kind], text)
        result.written.append(FILES[kind])
    if texts:
        scaffold.add_requirements(directory, install, result)
        result.notes.append(
            "set the repository variables GCP_WORKLOAD_IDENTITY_PROVIDER and GCP_PLAN_SERVICE_ACCOUNT "
            f"(a read-only account for plans; see the comments at the top of {FILES[next(iter(texts))]})"
        )
    return result
