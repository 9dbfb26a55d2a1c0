"""The operator's Compute API client for guest attributes and the re-run request, against the
Google stand-in (tests/standins/google.py: getGuestAttributes, instances.get and setMetadata
bodies from the Compute API v1 reference, named there)."""

from __future__ import annotations

import pytest
from standins.google import TOKEN, Google

from mlinfra.clouds.gcp import guest_attributes
from mlinfra.clouds.gcp.guest_attributes import GuestAttributesError


@pytest.fixture
def google(monkeypatch):
    google = Google.start(attributes={"startup-script": "#!/bin/bash", "mlinfra-check-request": "boot"})
    monkeypatch.setenv("MLINFRA_COMPUTE_API_URL", f"http://{google.address}/compute/v1")
    yield google
    google.stop()


def test_nothing_written_yet_is_empty_not_an_error(google):
    assert guest_attributes.read("ml-demo-123456", "us-central1-a", "vm-0", "mlinfra", TOKEN) == {}


def test_only_the_namespace_asked_for_is_returned(google):
    google.guest.update({("mlinfra", "report"): '{"v": 1}', ("hostkeys", "ssh-ed25519"): "AAAA"})
    assert guest_attributes.read("ml-demo-123456", "us-central1-a", "vm-0", "mlinfra", TOKEN) == {"report": '{"v": 1}'}


def test_an_api_error_is_one_line_with_google_s_message(google):
    with pytest.raises(GuestAttributesError) as caught:
        guest_attributes.read("ml-demo-123456", "us-central1-a", "vm-0", "mlinfra", "expired-token")
    assert str(caught.value) == (
        "getGuestAttributes on vm-0: HTTP 401: Request had invalid authentication credentials."
    )


def test_a_rerun_request_changes_one_key_and_survives_a_concurrent_change(google, monkeypatch):
    real_call, posts = guest_attributes._call, []

    def racing(method, url, token, body=None, timeout_s=20):
        if method == "POST":
            if not posts:  # someone else changes the metadata between our read and our write
                google.set_attribute("added-meanwhile", "yes")
            posts.append(method)
        return real_call(method, url, token, body, timeout_s)

    monkeypatch.setattr(guest_attributes, "_call", racing)
    guest_attributes.request_run("ml-demo-123456", "us-central1-a", "vm-0", "mlinfra-check-request", "r2", TOKEN)
    assert posts == ["POST", "POST"]  # 412 on the stale fingerprint, then read again and succeed
    assert google.attributes == {"startup-script": "#!/bin/bash", "mlinfra-check-request": "r2",
                                 "added-meanwhile": "yes"}


def test_the_token_comes_from_the_environment_first(monkeypatch):
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.from-env")
    assert guest_attributes.access_token() == "ya29.from-env"
