"""A stack's work dir, ``.mlinfra/<stack>/`` beside its stack file: every file name in it, and
the one place that renders and initialises it.

What lives there: the rendered module (``*.tf``, ``terraform.tfvars.json``, the backend
config), Terraform's own files (``.terraform/``, local state, the saved plan), the local lock,
the local nodes' process records and logs (``nodes/``), the GCP stack's SSH key and
``known_hosts``, and zone fallback's record.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlinfra.engine import Terraform

TFVARS = "terraform.tfvars.json"
BACKEND_CONFIG = "backend.tfbackend.json"
LOCAL_STATE = "terraform.tfstate"
PLAN_FILE = "tfplan"
NODES = "nodes"
SSH_KEY = "ssh_ed25519"  # the .pub sits next to it
KNOWN_HOSTS = "known_hosts"
ZONE_MOVES = "zone-moves.json"
LOCK = ".lock"  # the stack lock for local state (an flock)
RENDER_LOCK = ".render.lock"
RENDER_STAMP = ".render.sha256"  # what the last render wrote, so an unchanged stack renders nothing  # serialises render + init in the work dir


class Workspace:
    """The work dir of one stack (or the directory a module is ejected into)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    # -- file names --------------------------------------------------------------------------

    @property
    def tfvars(self) -> Path:
        return self.root / TFVARS

    @property
    def backend_config(self) -> Path:
        return self.root / BACKEND_CONFIG

    @property
    def local_state(self) -> Path:
        return self.root / LOCAL_STATE

    @property
    def nodes_dir(self) -> Path:
        return self.root / NODES

    def node_record(self, key: str) -> Path:
        return self.nodes_dir / f"{key}.json"

    @property
    def ssh_key(self) -> Path:
        return self.root / SSH_KEY

    @property
    def known_hosts(self) -> Path:
        return self.root / KNOWN_HOSTS

    @property
    def zone_moves(self) -> Path:
        return self.root / ZONE_MOVES

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK

    # -- Terraform's view ----------------------------------------------------------------------

    def initialized(self) -> bool:
        return (self.root / ".terraform").is_dir()

    def backend_initialized(self) -> str | None:
        """The backend this work dir was last initialised for (None: never)."""
        from mlinfra.engine import initialized_backend

        return initialized_backend(self.root) if self.initialized() else None

    def prepare(
        self,
        render: Callable[[], object],
        engine: Terraform,
        backend_config: Path | None,
        migrate: Callable[[str, str], bool] | None,
        read_back: Callable[[], bool] | None = None,
    ) -> Terraform:
        """Render, then init when needed, under the work dir's mutex: two commands at once means
        one renders and inits, then the other finds it done. ``read_back`` (after init) takes from
        the state what a fresh work dir lacks; when it took something, the module is rendered again."""
        with workdir_mutex(self.root):
            render()
            engine.init(backend_config, migrate=migrate)
            if read_back is not None and read_back():
                render()
        return engine


@contextmanager
def workdir_mutex(workdir: Path) -> Iterator[None]:
    """Serialise rendering and ``terraform init`` in one work dir (a short wait, never an error).

    Two commands on one stack at once must not write the same files or run two inits side by
    side; the stack lock, taken after this, then decides which of them may change state.
    """
    workdir = Path(workdir)
    private_dir(workdir)
    fd = os.open(workdir / RENDER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def private_dir(path: Path) -> Path:
    """Make ``path`` (and missing parents) and keep it 0700: the work dir holds state, values and
    keys that may carry secrets, so nobody but its owner may list or read it. A location that
    cannot be written is bad input, said in one line."""
    from mlinfra.errors import UsageError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError as exc:
        raise UsageError(f"cannot use {path} as a work dir: {exc.strerror or exc}") from None
    return path
