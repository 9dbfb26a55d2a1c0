"""The ``[autoscale]`` table of the stack file (issue 10): its presence makes the stack one that
Ray Serve serves, scaling replicas per region between min and max on queue depth or a policy.

Declared here, beside the driver it selects, and read by ``spec`` like every other section.
Nothing here imports Ray: validating a stack never does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mlinfra.errors import SpecError
from mlinfra.fields import Section, in_range

_POLICY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Autoscale(Section):
    """Present: the stack is served by Ray Serve, which scales replicas per region (issue 10)."""

    _key: ClassVar[str] = "autoscale"
    min_replicas: int = field(default=0, metadata=in_range(0, 1000))  # per region; 0 = scale to zero
    max_replicas: int = field(default=4, metadata=in_range(1, 1000))
    target_ongoing_requests: float = field(default=2.0, metadata=in_range(0.1, 10_000))
    max_queued_requests: int = field(default=64, metadata=in_range(1, 1_000_000))  # beyond: 503 at once
    upscale_delay_s: float = field(default=5.0, metadata=in_range(0, 86_400))
    downscale_delay_s: float = field(default=600.0, metadata=in_range(0, 86_400))
    policy: str = ""  # "package.module:function": a custom policy on a metric the replicas report

    def _check(self) -> None:
        if self.min_replicas > self.max_replicas:
            raise SpecError(
                "autoscale.min_replicas",
                f"{self.min_replicas} is more than autoscale.max_replicas ({self.max_replicas})",
            )
        if self.policy and not _POLICY.match(self.policy):
            raise SpecError("autoscale.policy", f"{self.policy!r} is not a policy: use 'package.module:function'")


def refuse_replicas_with_autoscale(compute: Any, autoscale: Any) -> None:
    """Both a fixed count and autoscaling: say which to keep. A table (TOML, or a dict from
    Python) tells whether replicas was written at all; a built Compute only its value."""
    if autoscale is None:
        return
    given = "replicas" in compute if isinstance(compute, dict) else compute.replicas != 1
    if given:
        raise SpecError(
            "compute.replicas",
            "cannot be set with [autoscale]: remove compute.replicas to autoscale between "
            "autoscale.min_replicas and max_replicas, or remove [autoscale] for a fixed count",
        )


def refuse_secrets_with_autoscale(spec: Any) -> None:
    """The Ray templates do not carry serve.secrets, serve.image, serve.setup nor [model] yet:
    refuse them rather than start replicas without them (both the local and the GCP mode)."""
    from mlinfra.workload import refuse_with_autoscale

    if spec.serve.secrets:
        raise SpecError("serve.secrets", "is not supported with [autoscale] yet")
    refuse_with_autoscale(spec)
