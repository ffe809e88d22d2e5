"""Back-end specs -> back ends. Heavy imports happen inside, when a back end is built.

Specs: `local:<model>` (hub id, directory, .gguf file or builtin:<name>), `openai:<model>@<base-url>`
(any OpenAI-compatible server), `fake` (tests and dry runs).
"""

from __future__ import annotations

from neuron_explainer.errors import ConfigError
from neuron_explainer.llm.base import LLMBackend

KINDS = ("local", "openai", "fake")


def build_backend(
    spec: str, *, device: str = "cpu", dtype: str = "float32", api_key_env: str = "OPENAI_API_KEY"
) -> LLMBackend:
    """Build a back end from its spec.

    Raises:
        ConfigError: unknown kind or malformed spec.
    """
    kind, _, rest = spec.partition(":")
    if kind == "fake":
        from neuron_explainer.llm.fake import FakeBackend

        return FakeBackend()
    if kind == "local":
        if not rest:
            raise ConfigError("local back end needs a model: local:<hub id | dir | .gguf | builtin:name>")
        from neuron_explainer.llm.hf_local import LocalBackend

        return LocalBackend.load(rest, device=device, dtype=dtype)
    if kind == "openai":
        model, _, base_url = rest.partition("@")
        if not model:
            raise ConfigError("openai back end needs a model: openai:<model>[@<base-url>]")
        from neuron_explainer.llm.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(model, base_url or "https://api.openai.com/v1", api_key_env=api_key_env)
    raise ConfigError(f"unknown back end {spec!r}: use one of {', '.join(k + ':...' for k in KINDS)}")


def parse_neurons(spec: str) -> list[tuple[int, int]]:
    """`5:0-99,7:3,7:10-12` -> [(5, 0), ..., (7, 12)].

    Raises:
        ConfigError: malformed spec.
    """
    out: list[tuple[int, int]] = []
    try:
        for part in spec.split(","):
            layer, _, rng = part.strip().partition(":")
            lo, _, hi = rng.partition("-")
            out += [(int(layer), n) for n in range(int(lo), int(hi or lo) + 1)]
    except ValueError:
        raise ConfigError(f"neurons must look like 5:0-99 or 5:3,7:10-12, got {spec!r}") from None
    return out
