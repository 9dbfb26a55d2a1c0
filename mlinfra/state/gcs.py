"""Talking to the state bucket: one client, short deadlines, one-line errors.

google-cloud-storage is imported here only, and only when a command needs the
bucket (it costs ~0.5 s to import). Credentials come from the environment:
``GOOGLE_OAUTH_ACCESS_TOKEN`` or Application Default Credentials; against an
emulator (``[state] endpoint`` or ``STORAGE_EMULATOR_HOST``) anonymous ones.
No token is ever written to a file, printed or logged.

The library retries for up to two minutes by default; a user waiting on a
dead endpoint deserves better, so every call here has a ~10 s budget and a
TCP pre-check that fails in seconds with the endpoint's name.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from urllib.parse import urlsplit

from mlinfra.errors import MlinfraError

DEADLINE_S = 10.0
CONNECT_TIMEOUT_S = 3.0
EMULATOR_TOKEN = "emulator"  # any token works against an emulator; Terraform insists on one


class BucketUnreachable(MlinfraError):
    pass


def endpoint(state) -> str | None:
    """The custom endpoint (an emulator, a private GCS-compatible server), or None for Google."""
    value = state.endpoint or os.environ.get("STORAGE_EMULATOR_HOST", "")
    if not value:
        return None
    # Accept it the way Terraform's storage_custom_endpoint is written, too: ".../storage/v1/".
    value = base_url(value)
    return value if "://" in value else f"http://{value}"


def base_url(endpoint: str) -> str:
    """``http://host:port`` from ``http://host:port`` or ``http://host:port/storage/v1/``."""
    value = endpoint.rstrip("/")
    return value[: -len("/storage/v1")] if value.endswith("/storage/v1") else value


def state_object(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/default.tfstate"


def lock_object(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/default.tflock"


def terraform_env(state) -> dict[str, str]:
    """What Terraform's gcs backend needs from the environment to reach an emulator."""
    if (
        endpoint(state)
        and not os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN")
        and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    ):
        return {"GOOGLE_OAUTH_ACCESS_TOKEN": EMULATOR_TOKEN}
    return {}


def check_reachable(state) -> None:
    """Fail in seconds, naming the endpoint, when nothing listens there."""
    url = endpoint(state) or "https://storage.googleapis.com"
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BucketUnreachable(
            f"cannot reach the state bucket's endpoint {url}: {reason}",
            hint="is the endpoint up? check [state] endpoint / STORAGE_EMULATOR_HOST",
        ) from None


def client(state, project: str = ""):
    """A storage client for this stack's state settings (after a reachability check)."""
    check_reachable(state)
    from google.api_core.client_options import ClientOptions
    from google.cloud import storage

    url = endpoint(state)
    if url:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=project or "mlinfra",
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=url),
        )
    token = os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN")
    if token:
        from google.oauth2.credentials import Credentials

        return storage.Client(project=project or None, credentials=Credentials(token))
    return storage.Client(project=project or None)


def retry():
    """The library's retry policy, capped at our deadline."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(DEADLINE_S)


@contextmanager
def errors(state, what: str):
    """Turn the library's exceptions into one line naming the bucket and endpoint."""
    from google.api_core import exceptions as gexc

    where = f"gs://{state.bucket}" + (f" at {endpoint(state)}" if endpoint(state) else "")
    try:
        yield
    except gexc.NotFound as exc:
        raise MlinfraError(
            f"{what}: not found in {where} ({_short(exc)})",
            # Never the hint to run the very command that just failed.
            hint=None if "bootstrap" in what else "create the bucket with `mlinfra state bootstrap`",
        ) from None
    except gexc.Forbidden as exc:
        raise MlinfraError(f"{what}: permission denied on {where} ({_short(exc)})") from None
    except gexc.GoogleAPIError as exc:
        raise MlinfraError(f"{what}: {where}: {_short(exc)}") from None
    except (OSError, ConnectionError) as exc:
        raise BucketUnreachable(f"{what}: cannot reach {where}: {type(exc).__name__}") from None
    except Exception as exc:  # requests' and google-auth's own error types, among others
        if type(exc).__module__.split(".")[0] in ("requests", "urllib3", "google"):
            raise MlinfraError(f"{what}: {where}: {_short(exc)}") from None
        raise


def _short(exc: Exception) -> str:
    text = " ".join(str(getattr(exc, "message", "") or exc).split())
    return text[:200]
