"""Results as JSON: every result type owns its shape through ``as_dict()``.

``to_data`` turns a result (and whatever it holds: dataclasses, paths, tuples) into plain
JSON values; ``Result`` is the mixin that gives a dataclass its ``as_dict`` — its fields,
plus the derived values named in ``_json_extra`` (a verdict, ``passed``) that scripts need.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar


def to_data(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return to_data(value.as_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_data(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class Result:
    """Mixin for result dataclasses: ``as_dict()`` = the fields + ``_json_extra`` properties."""

    _json_extra: ClassVar[tuple[str, ...]] = ()

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: to_data(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        data.update({name: to_data(getattr(self, name)) for name in self._json_extra})
        return data
