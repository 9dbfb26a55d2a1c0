"""Read a VM's guest attributes with the Compute API and the operator's own credentials.

``GET https://compute.googleapis.com/compute/v1/projects/{project}/zones/{zone}/instances/{instance}
/getGuestAttributes?queryPath=NAMESPACE/`` answers a ``compute#guestAttributes`` entry whose
``queryValue.items`` are ``{"namespace", "key", "value"}`` (Compute API reference, "Method:
instances.getGuestAttributes", https://cloud.google.com/compute/docs/reference/rest/v1/instances/getGuestAttributes).
It needs ``compute.instances.getGuestAttributes`` (in roles/compute.instanceAdmin.v1, which
deploying needs anyway). Until the guest has written anything under the path the API answers
404, which Google's own image tests treat as "not yet" (GoogleCloudPlatform/compute-image-tools,
``WaitForGuestAttributes``): so do we.

A fresh report is asked for by changing one instance metadata value, which the node watches
(``?wait_for_change=true``): ``instances.get`` gives the metadata and its ``fingerprint``, and
``POST .../instances/{instance}/setMetadata`` with that fingerprint and every item (the one key
changed) replaces it, or fails with 412 when someone else changed it meanwhile (optimistic
locking; "Method: instances.setMetadata" and the ``Metadata`` resource in the same reference):
we read again and retry. Needs ``compute.instances.setMetadata`` (same role).

Credentials, in the order Terraform's google provider reads them: ``GOOGLE_OAUTH_ACCESS_TOKEN``,
then application default credentials (``google.auth.default``). ``MLINFRA_COMPUTE_API_URL``
points the client at a stand-in (tests).
"""

from __future__ import annotations

import json
import os
from urllib.error import HTTPError, URLError
from urllib.parse import quote
from urllib.request import Request, urlopen

from mlinfra.errors import MlinfraError

API = "https://compute.googleapis.com/compute/v1"
SCOPE = "https://www.googleapis.com/auth/compute"


class GuestAttributesError(MlinfraError):
    pass


def api_url() -> str:
    return os.environ.get("MLINFRA_COMPUTE_API_URL", API).rstrip("/")


def access_token() -> str:
    token = os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN")
    if token:
        return token
    try:
        import google.auth
        import google.auth.transport.requests

        credentials, _ = google.auth.default(scopes=[SCOPE])
        credentials.refresh(google.auth.transport.requests.Request())
        return str(credentials.token)
    except Exception as exc:  # google-auth's own error types, and requests' network errors
        raise GuestAttributesError(
            f"no Google credentials to read the nodes' reports ({type(exc).__name__}: {exc})",
            hint="run `gcloud auth application-default login`, or set GOOGLE_OAUTH_ACCESS_TOKEN",
        ) from None


def instance_url(project: str, zone: str, instance: str) -> str:
    return (
        f"{api_url()}/projects/{quote(project, safe='')}/zones/{quote(zone, safe='')}"
        f"/instances/{quote(instance, safe='')}"
    )


def _call(method: str, url: str, token: str, body: dict | None = None, timeout_s: float = 20) -> dict:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    with urlopen(Request(url, data=data, method=method, headers=headers), timeout=timeout_s) as response:
        return json.load(response)


def request_run(project: str, zone: str, instance: str, key: str, value: str, token: str, tries: int = 3) -> None:
    """Set metadata ``key`` to ``value`` on the instance, leaving every other item as it is."""
    url = instance_url(project, zone, instance)
    for attempt in range(tries):
        try:
            metadata = _call("GET", url, token).get("metadata") or {}
            items = [item for item in metadata.get("items") or [] if item.get("key") != key]
            items.append({"key": key, "value": value})
            body = {"kind": "compute#metadata", "fingerprint": metadata.get("fingerprint", ""), "items": items}
            _call("POST", url + "/setMetadata", token, body)
            return
        except HTTPError as exc:
            if exc.code == 412 and attempt + 1 < tries:  # changed meanwhile: read the new fingerprint
                continue
            raise GuestAttributesError(f"setMetadata on {instance}: HTTP {exc.code}: {_api_message(exc)}") from None
        except (URLError, OSError, ValueError) as exc:
            raise GuestAttributesError(f"setMetadata on {instance}: {exc}") from None


def read(project: str, zone: str, instance: str, namespace: str, token: str, timeout_s: float = 20) -> dict[str, str]:
    """{key: value} under ``namespace/`` on the instance; empty when the guest wrote nothing yet."""
    url = f"{instance_url(project, zone, instance)}/getGuestAttributes?queryPath={quote(namespace + '/', safe='')}"
    try:
        body = _call("GET", url, token, timeout_s=timeout_s)
    except HTTPError as exc:
        if exc.code == 404:
            return {}
        raise GuestAttributesError(f"getGuestAttributes on {instance}: HTTP {exc.code}: {_api_message(exc)}") from None
    except (URLError, OSError, ValueError) as exc:
        raise GuestAttributesError(f"getGuestAttributes on {instance}: {exc}") from None
    items = (body.get("queryValue") or {}).get("items") or []
    return {item["key"]: item.get("value", "") for item in items if item.get("namespace") == namespace}


def _api_message(exc: HTTPError) -> str:
    """The ``error.message`` of Google's JSON error body, or the HTTP reason."""
    try:
        return str(json.loads(exc.read().decode("utf-8", "replace"))["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(exc.reason)
