"""Back-end specs -> back ends. Heavy imports happen inside, when a back end is built.

Specs: `local:<model>` (hub id, directory, .gguf file or builtin:<name>), `openai:<model>@<base-url>`
(any OpenAI-compatible server; prompt logprobs by echo), `vllm:<model>@<base-url>` (a vLLM server; prompt
logprobs by its `prompt_logprobs` extension), `fake` / `fake:oracle` (tests and dry runs).
"""

from __future__ import annotations

from neuron_explainer.errors import ConfigError
from neuron_explainer.llm.base import LLMBackend

KINDS = ("local", "openai", "vllm", "fake")


def build_backend(
    spec: str, *, device: str = "cpu", dtype: str = "float32", api_key_env: str = "OPENAI_API_KEY"
) -> LLMBackend:
    """Build a back end from its spec.

    Raises:
        ConfigError: unknown kind or malformed spec.
    """
    kind, _, rest = spec.partition(":")
    if kind == "fake":
        from neuron_explainer.llm.fake import FakeBackend, hashed_oracle

        if rest not in ("", "oracle"):
            raise ConfigError(f"fake back ends are `fake` (chat only) or `fake:oracle` (with logprobs), got {spec!r}")
        # `fake:oracle` answers every prompt deterministically: for CLI tests and dry runs of whole pipelines
        return FakeBackend(completions=(" tokens of this kind.",), oracle=hashed_oracle if rest else None)
    if kind == "local":
        if not rest:
            raise ConfigError("local back end needs a model: local:<hub id | dir | .gguf | builtin:name>")
        from neuron_explainer.llm.hf_local import LocalBackend

        return LocalBackend.load(rest, device=device, dtype=dtype)
    if kind in ("openai", "vllm"):
        model, _, base_url = rest.partition("@")
        if not model or (kind == "vllm" and not base_url):
            where = "[@<base-url>]" if kind == "openai" else "@<base-url>"
            raise ConfigError(f"{kind} back end needs a model: {kind}:<model>{where}")
        from neuron_explainer.llm.openai_compat import OpenAICompatBackend

        return OpenAICompatBackend(
            model,
            base_url or "https://api.openai.com/v1",
            api_key_env=api_key_env,
            logprobs_api=kind.replace("openai", "echo"),
        )
    raise ConfigError(f"unknown back end {spec!r}: use one of {', '.join(k + ':...' for k in KINDS)}")
