"""The ``[verify]`` table of the stack file: the latency benchmark's load and budget.

Declared beside the checks it drives, and read by ``spec`` like every other section.
``protocol = "openai"`` (issue 11) turns the benchmark into streaming ``/v1/completions``
(or ``/v1/chat/completions``) requests, measured per token (``verify.stream``), with budgets of
their own: time to first token, inter-token latency and output tokens/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from mlinfra.errors import SpecError
from mlinfra.fields import Section, in_range, one_of

HTTP_PATH, OPENAI_PATH = "/predict", "/v1/completions"
# Prompts the reference server's model (Genesis, KJV) continues; any server accepts them.
DEFAULT_PROMPTS = (
    "In the beginning",
    "And the LORD said unto Abram,",
    "Tell me about the land of Egypt.",
    "And Joseph dreamed a dream,",
)
_TOKEN_BUDGETS = ("ttft_p95_ms", "itl_p95_ms", "min_tokens_per_s")


@dataclass(frozen=True)
class Verify(Section):
    _key: ClassVar[str] = "verify"
    # openai: 0 (no budget) unless the file sets it (apply_protocol_defaults).
    p95_ms: float = field(default=250.0, metadata=in_range(0.1, 600_000))
    p99_ms: float = field(default=0.0, metadata=in_range(0, 600_000))  # 0: no p99 budget
    max_error_rate: float = field(default=0.01, metadata=in_range(0, 1))
    min_rps: float = field(default=0.0, metadata=in_range(0, 10_000_000))
    requests: int = field(default=200, metadata=in_range(1, 10_000_000))
    concurrency: int = field(default=8, metadata=in_range(1, 10_000))
    warmup: int = field(default=20, metadata=in_range(0, 1_000_000))
    health_timeout_s: float = field(default=600.0, metadata=in_range(1, 86_400))
    rate: float = field(default=0.0, metadata=in_range(0, 1_000_000))  # req/s open loop; 0: closed loop
    path: str = HTTP_PATH  # where the latency benchmark sends its requests; openai: /v1/completions
    payload: dict[str, Any] | None = None  # the request body; None: one the reference server accepts
    # The request's shape: "http" (POST payload, time the response) or "openai" (streamed tokens).
    protocol: str = field(default="http", metadata=one_of("http", "openai"))
    prompts: tuple[str, ...] = DEFAULT_PROMPTS  # openai: request i sends prompts[i % len]
    max_tokens: int = field(default=64, metadata=in_range(1, 100_000))
    model_name: str = ""  # openai: the request's "model" ("" leaves it out: the server's default)
    token_timeout_s: float = field(default=10.0, metadata=in_range(0.01, 3_600))  # openai: a stall, past this
    ttft_p95_ms: float = field(default=0.0, metadata=in_range(0, 600_000))  # 0: no budget
    itl_p95_ms: float = field(default=0.0, metadata=in_range(0, 600_000))  # 0: no budget
    min_tokens_per_s: float = field(default=0.0, metadata=in_range(0, 10_000_000))  # 0: no budget

    def _check(self) -> None:
        if not self.path.startswith("/") or any(c.isspace() for c in self.path):
            raise SpecError("verify.path", f"{self.path!r} must be a URL path starting with '/', like '/predict'")
        if self.protocol == "http":
            for name in _TOKEN_BUDGETS:
                if getattr(self, name):
                    raise SpecError(f"verify.{name}", "is a token budget: it needs verify.protocol = 'openai'")
            return
        if self.path == HTTP_PATH:  # the http default: an OpenAI server's is /v1/completions
            object.__setattr__(self, "path", OPENAI_PATH)
        if not self.path.endswith("/completions"):
            raise SpecError(
                "verify.path",
                f"{self.path!r} is not an OpenAI completions path: use '/v1/completions' or '/v1/chat/completions'",
            )
        if self.rate:
            raise SpecError("verify.rate", "protocol 'openai' runs a closed loop: remove verify.rate")
        if self.payload is not None:
            raise SpecError("verify.payload", "is not sent with protocol 'openai': set verify.prompts and max_tokens")
        if not self.prompts:
            raise SpecError("verify.prompts", "must hold at least one prompt")
        for i, prompt in enumerate(self.prompts):
            if not prompt.strip():
                raise SpecError(f"verify.prompts[{i}]", "must not be empty")

    def apply_protocol_defaults(self, given: frozenset[str]) -> None:
        """openai: no request-latency p95 budget (0) unless the file wrote verify.p95_ms: a whole
        stream lasts max_tokens inter-token gaps, which the http default (250 ms) never fits; its
        budgets are ttft_p95_ms, itl_p95_ms and min_tokens_per_s."""
        if self.protocol == "openai" and "verify.p95_ms" not in given:
            object.__setattr__(self, "p95_ms", 0.0)

    @property
    def chat(self) -> bool:
        """openai: the chat API (``messages``) rather than the completions API (``prompt``)."""
        return self.path.endswith("/chat/completions")
