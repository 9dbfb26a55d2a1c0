"""The layout the README promises: targets in one place, small modules, no import cycles,
nothing that imports the CLI, and a public API that changes only on purpose."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

from helpers import HTTP_SERVER, ROOT, write_stack

import mlinfra

PACKAGE = ROOT / "mlinfra"


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """Every mlinfra module ``tree`` imports, at the top or inside functions; not under TYPE_CHECKING."""
    typing_only = {id(sub) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for sub in ast.walk(node)}

    def owner(name: str) -> str:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {owner(a.name) for a in node.names if a.name.startswith("mlinfra")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlinfra"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else owner(node.module))
    return found - {""}


def test_no_target_is_named_outside_the_targets_package():
    pattern = re.compile(r"target ==|target !=|\.target in")
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in PACKAGE.rglob("*.py")
                 if "targets" not in path.relative_to(PACKAGE).parts[:1]
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_every_module_is_at_most_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_there_is_no_import_cycle():
    trees = modules()
    graph = {name: imports(tree, set(trees)) - {name} for name, tree in trees.items()}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for nxt in sorted(graph[name]):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert cycles == []


def test_nothing_imports_the_cli_and_only_cli_and_console_import_rich_or_typer():
    trees = modules()
    for name, tree in trees.items():
        used = imports(tree, set(trees))
        if not name.startswith("mlinfra.cli") and name != "mlinfra.__main__":
            assert not any(u.startswith("mlinfra.cli") for u in used), name
        top = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        top |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        if top & {"rich", "typer"}:
            assert name.startswith("mlinfra.cli") or name == "mlinfra.console", name


def test_a_local_stack_command_imports_no_google_cloud_code():
    """`mlinfra status` on a local stack needs neither the GCP target nor its clouds' rules."""
    code = ("import sys; from mlinfra import Stack; s = Stack(name='arch', path='/nonexistent/mlinfra.toml'); "
            "s.status(); print(sorted(m for m in sys.modules if m.startswith(('mlinfra.targets.gcp', "
            "'mlinfra.clouds.gcp.rules', 'mlinfra.clouds.gcp.stockout', 'google'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_loading_a_stack_loads_no_verification_machinery():
    """Every stack loads the [verify] section (mlinfra.verify.section), and with it the verify
    package; its thread pool, report writer and XML stay for commands that verify."""
    code = ("import sys; from mlinfra import Stack; Stack(name='arch', path='/nonexistent/mlinfra.toml'); "
            "print(sorted(m for m in ('mlinfra.verify', 'concurrent.futures', 'mlinfra.verify.report', "
            "'xml.etree.ElementTree') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['mlinfra.verify']"  # the package itself: the check could see it


def test_up_and_down_load_no_cli_framework(tmp_path):
    """`mlinfra up` and `down` run without typer (cli.fast): it and its click cost ~50 ms per
    command, as long as the rest of mlinfra's start-up; rich loads only for tables on a terminal."""
    write_stack(tmp_path, f'name = "arch"\n[local]\nregions = ["a"]\n[serve]\ncommand = "{HTTP_SERVER}"\n')
    loaded = tmp_path / "modules.txt"
    code = ("import atexit, gc, os, sys; atexit.register(lambda: open(os.environ['MODULES_OUT'], 'w').write("
            "'\\n'.join([f'gc-enabled={gc.isenabled()}', *sys.modules]))); from mlinfra.__main__ import main; main()")
    try:
        for argv in (["up", "--yes", "--no-wait"], ["down", "--yes"]):
            done = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, stdin=subprocess.DEVNULL,
                                  env=os.environ | {"MODULES_OUT": str(loaded)}, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr
            modules = set(loaded.read_text().split())
            assert {"mlinfra.api", "mlinfra.engine.terraform", "mlinfra.state.lock"} <= modules  # it ran Terraform
            assert sorted(m for m in modules if m.split(".")[0] in ("typer", "click", "rich")) == [], argv
            assert "gc-enabled=True" in modules  # off only while modules load: a long verify collects as usual
    finally:
        subprocess.run([sys.executable, "-m", "mlinfra", "down", "--yes"], cwd=tmp_path, capture_output=True,
                       timeout=120)


def test_mlinfra_serve_starts_the_server_without_the_cli():
    """`mlinfra serve` (every default stack's node command) runs the reference server without
    importing Typer or click: ten nodes starting at once pay for every import."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "mlinfra", "serve", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "usage: mlinfra serve" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "mlinfra.serve" in imported  # the check could see the server's own import
    assert not {"typer", "click", "mlinfra.cli"} & imported


def test_a_stack_without_autoscale_never_imports_ray():
    """Ray is an extra: importing mlinfra, and validating, rendering and asking the status of a stack
    without [autoscale], load none of it (nor the Ray Serve driver)."""
    code = ("import sys, tempfile; from mlinfra import Stack; d = tempfile.mkdtemp(); "
            "s = Stack(name='arch', path=d + '/mlinfra.toml'); s.render(); s.status(); s.plan; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray' or m.startswith('mlinfra.targets.serve.local')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert "ray" in subprocess.run([sys.executable, "-c", "import ray; print('ray')"], capture_output=True,
                                   text=True).stdout  # the check above could not see Ray at all otherwise


def test_public_api_is_pinned():
    assert mlinfra.__all__ == [
        "Aborted", "Compute", "EngineError", "Gcp", "Local", "MlinfraError", "Serve", "SpecError", "Stack",
        "StackSpec", "State", "Verify", "__version__",
    ]
    for name in mlinfra.__all__:
        assert getattr(mlinfra, name) is not None
