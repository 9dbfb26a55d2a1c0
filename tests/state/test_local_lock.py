"""The stack lock's record."""

from __future__ import annotations

import uuid

from mlinfra.state.lock import LockInfo


def test_a_lock_id_is_a_random_version_4_uuid():
    ids = {LockInfo.new("apply").ID for _ in range(50)}
    assert len(ids) == 50
    assert all(uuid.UUID(hex=i).version == 4 and uuid.UUID(hex=i).hex == i for i in ids)
