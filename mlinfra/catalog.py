"""The GPU catalog: which GPUs exist on Google Cloud, by name and alias.

The facts live in ``data/gpus.toml`` (with their sources); this module only
loads and looks them up. It is read lazily, once, so ``--help`` stays fast.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Gpu:
    name: str  # the GCP accelerator type, e.g. "nvidia-tesla-t4"
    aliases: tuple[str, ...]
    memory_gb: int

    @property
    def short(self) -> str:
        return self.aliases[0] if self.aliases else self.name


@functools.cache
def _data() -> dict:
    text = resources.files("mlinfra").joinpath("data/gpus.toml").read_text()
    return tomllib.loads(text)


@functools.cache
def gpus() -> dict[str, Gpu]:
    return {
        name: Gpu(name=name, aliases=tuple(row.get("aliases", ())), memory_gb=row["memory_gb"])
        for name, row in _data()["gpus"].items()
    }


def gcp_regions() -> list[str]:
    return list(_data()["regions"]["gcp"])


class UnknownGpu(ValueError):
    pass


def lookup_gpu(text: str) -> Gpu:
    """Find a GPU by accelerator name or alias (case-insensitive).

    Raises UnknownGpu with a user-facing message (refusal reason or suggestion).
    """
    key = text.strip().lower()
    for gpu in gpus().values():
        if key == gpu.name or key in gpu.aliases:
            return gpu
    refused = _data().get("refused", {})
    if key in refused:
        raise UnknownGpu(f"GPU {text!r} is not allowed: {refused[key]}")
    names = [alias for gpu in gpus().values() for alias in gpu.aliases] + list(gpus())
    raise UnknownGpu(f"unknown GPU {text!r}" + did_you_mean(key, names))


def did_you_mean(word: str, choices: list[str]) -> str:
    """' — did you mean 'x'?' when a close match exists, else ''."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" — did you mean {match[0]!r}?" if match else ""
