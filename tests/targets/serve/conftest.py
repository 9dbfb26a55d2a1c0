"""The Ray Serve tests' fixture: each test module brings up ONE real Ray stack and runs its tests
against it in order; the fixture always takes it down. A Ray head with Serve costs ~1 GB and
~10 s, so the folder runs three of them, one after the other (never side by side: 1 GB at most).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import stack_processes, write_stack
from mlinfra import Stack
from targets.serve.rayhelpers import server_command


@pytest.fixture(scope="module")
def ray_stack(request, tmp_path_factory) -> Iterator[Stack]:
    """The module's stack file text (``STACK``, with ``{command}``: ``COMMAND``, else the stand-in
    server with ``ENV``; ``FILES``: extra files beside it) brought up once, and always destroyed
    after the module's last test."""
    directory = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    for name, text in getattr(request.module, "FILES", {}).items():
        (directory / name).write_text(text)
    command = getattr(request.module, "COMMAND", None) or server_command(**request.module.ENV)
    stack = Stack.load(write_stack(directory, request.module.STACK.format(command=command)))
    try:
        stack.up(verify=False)
        yield stack
    finally:
        stack.down(force=True)
        assert stack_processes(stack.name) == [], f"Ray processes left behind by {stack.name}"
