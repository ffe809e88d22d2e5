"""Back-end specs -> back ends, and the pool a run builds them in. Heavy imports happen when one is built.

Specs: `local:<model>` (hub id, directory, .gguf file or builtin:<name>), `openai:<model>@<base-url>`
(any OpenAI-compatible server; prompt logprobs by echo), `vllm:<model>@<base-url>` (a vLLM server; prompt
logprobs by its `prompt_logprobs` extension), `fake` / `fake:oracle` (tests and dry runs). An HTTP spec may
name several replicas of one server, `vllm:<model>@http://h1:8000/v1,http://h2:8000/v1`: requests are
spread over them by load and a failing one is taken out for a while (llm/replicas.py).
Every back end the pool builds is wrapped the same way, from the `llm:` config section:
ManagedBackend (concurrency, timeouts, retries) inside CachedBackend (the run's response cache).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from neuron_explainer.config.sections import LLMConfig
from neuron_explainer.errors import ConfigError
from neuron_explainer.llm.base import LLMBackend

logger = logging.getLogger(__name__)


def build_fake(rest: str, settings: LLMConfig) -> LLMBackend:
    """`fake` (chat only) or `fake:oracle` (deterministic prompt logprobs too): for tests and dry runs."""
    from neuron_explainer.llm.fake import FakeBackend, hashed_oracle, scripted_answer

    if rest not in ("", "oracle"):
        raise ConfigError(f"fake back ends are `fake` (chat only) or `fake:oracle` (with logprobs), got 'fake:{rest}'")
    return FakeBackend(responder=scripted_answer, oracle=hashed_oracle if rest else None, supports_prefill=True)


def build_local(rest: str, settings: LLMConfig) -> LLMBackend:
    """A transformers model in this process."""
    if not rest:
        raise ConfigError("local back end needs a model: local:<hub id | dir | .gguf | builtin:name>")
    from neuron_explainer.llm.hf_local import LocalBackend

    return LocalBackend.load(
        rest,
        device=settings.device,
        dtype=settings.dtype,
        slot_batch_tokens=settings.slot_batch_tokens,
        generate_batch_tokens=settings.generate_batch_tokens,
    )


def base_urls(kind: str, rest: str) -> tuple[str, list[str]]:
    """The model and the base URLs of an HTTP spec's `<model>[@<url>[,<url>...]]`.

    Raises:
        ConfigError: no model, no URL where one is needed, an empty or repeated URL.
    """
    model, _, urls = rest.partition("@")
    if not model or (kind == "vllm" and not urls):
        where = "[@<base-url>[,<base-url>...]]" if kind == "openai" else "@<base-url>[,<base-url>...]"
        raise ConfigError(f"{kind} back end needs a model: {kind}:<model>{where}")
    found = [u.strip() for u in urls.split(",")] if urls else ["https://api.openai.com/v1"]
    if not all(found) or len(set(found)) < len(found):
        raise ConfigError(f"{kind}:{rest}: the base URLs after '@' must be distinct and comma-separated")
    return model, found


def _http(kind: str, rest: str, settings: LLMConfig) -> LLMBackend:
    from neuron_explainer.llm.openai_compat import OpenAICompatBackend, pooled_http_client
    from neuron_explainer.llm.replicas import ReplicaPool

    model, urls = base_urls(kind, rest)
    client = pooled_http_client(settings.max_in_flight * len(urls))  # one connection pool for all replicas
    replicas = [
        OpenAICompatBackend(
            model,
            url,
            api_key_env=settings.api_key_env,
            timeout=settings.timeout_seconds,
            logprobs_api="vllm" if kind == "vllm" else "echo",
            http_client=client,
        )
        for url in urls
    ]
    if len(replicas) == 1:
        return replicas[0]
    return ReplicaPool(
        replicas,
        timeout=settings.timeout_seconds,
        cooldown=settings.replica_cooldown_seconds,
        max_cooldown=settings.replica_max_cooldown_seconds,
    )


def build_openai(rest: str, settings: LLMConfig) -> LLMBackend:
    """Any OpenAI-compatible server; prompt logprobs by echo."""
    return _http("openai", rest, settings)


def build_vllm(rest: str, settings: LLMConfig) -> LLMBackend:
    """A vLLM server; prompt logprobs from its `prompt_logprobs` extension."""
    return _http("vllm", rest, settings)


BACKENDS: dict[str, Callable[[str, LLMConfig], LLMBackend]] = {
    "local": build_local,
    "openai": build_openai,
    "vllm": build_vllm,
    "fake": build_fake,
}
"""Spec kind -> builder(rest of the spec, llm settings). Add a kind here to support another back end."""


def build_backend(spec: str, settings: LLMConfig | None = None) -> LLMBackend:
    """Build a bare back end (no limits, no cache) from its spec.

    Raises:
        ConfigError: unknown kind or malformed spec.
    """
    kind, _, rest = spec.partition(":")
    if kind not in BACKENDS:
        raise ConfigError(f"unknown back end {spec!r}: use one of {', '.join(k + ':...' for k in BACKENDS)}")
    return BACKENDS[kind](rest, settings or LLMConfig())


class BackendPool:
    """The back ends of one run, built once per spec and wrapped per the `llm:` settings.

    `prebuilt` maps specs to ready back ends (tests inject fakes this way); they are wrapped too.
    """

    def __init__(
        self,
        settings: LLMConfig,
        cache_path: str | Path | None = None,
        *,
        prebuilt: Mapping[str, LLMBackend] | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.cache_path = Path(cache_path) if cache_path is not None and settings.cache else None
        self.prebuilt = dict(prebuilt or {})
        self.notify = notify or logger.info
        self.built: dict[str, LLMBackend] = {}
        self.bare: dict[str, LLMBackend] = {}
        """The unwrapped back ends, by spec: their `usage` counts tokens really sent (cache hits are free)."""

    def get(self, spec: str) -> LLMBackend:
        """The wrapped back end for `spec`, built on first use."""
        from neuron_explainer.llm.cache import CachedBackend
        from neuron_explainer.llm.managed import ManagedBackend

        if spec not in self.built:
            if spec in self.prebuilt:
                bare = self.prebuilt[spec]
            else:
                self.notify(f"loading {spec} ...")
                bare = build_backend(spec, self.settings)
            self.bare[spec] = bare
            backend: Any = ManagedBackend(bare, self.settings)
            if self.cache_path is not None:
                backend = CachedBackend(backend, self.cache_path, cache_logprobs=self.settings.cache_logprobs)
            self.built[spec] = backend
        return self.built[spec]

    def tokens(self) -> tuple[int, int]:
        """Prompt and completion tokens sent through every back end so far."""
        usage = [getattr(b, "usage", None) or {} for b in self.bare.values()]
        return sum(u.get("prompt_tokens", 0) for u in usage), sum(u.get("completion_tokens", 0) for u in usage)

    async def aclose(self) -> None:
        """Close every back end built."""
        for backend in self.built.values():
            await backend.aclose()
        self.built.clear()
