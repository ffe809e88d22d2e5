"""The one wrapper that gives every back end its limits: concurrency, timeouts and classified retries.

Back ends do transport only (one attempt per call) and raise RetryableBackendError for what deserves
another try. `ManagedBackend` adds, in this one place and from the `llm:` config section:
- at most `max_in_flight` calls outstanding (a semaphore per event loop, so a back end survives
  being used by several `asyncio.run` calls);
- a time limit per attempt (not for in-process back ends: a forward pass cannot be interrupted; a
  replica pool, llm/replicas.py, enforces it itself, per replica, so a replica that hangs is taken out);
- up to `max_attempts` attempts with jittered exponential back-off capped at `max_backoff_seconds`;
  other errors are never retried.
The response cache (llm/cache.py) wraps this wrapper, so cache hits skip the limits.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from neuron_explainer.config.sections import LLMConfig
from neuron_explainer.llm.base import (
    BackendError,
    GenerateParams,
    LLMBackend,
    Message,
    RetryableBackendError,
    TokenLogprobs,
)

T = TypeVar("T")


class ManagedBackend:
    """A back end with concurrency limit, per-attempt timeout and classified retries; same protocol."""

    def __init__(self, inner: LLMBackend, settings: LLMConfig) -> None:
        self.inner = inner
        self.settings = settings
        self.name, self.model, self.capabilities = inner.name, inner.model, inner.capabilities
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        self.attempts = 0
        """Attempts made, retries included."""

    def __getattr__(self, item: str) -> Any:  # `tokenizer`, `supports_prefill`, `usage` of the inner back end
        return getattr(self.inner, item)

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._semaphores:
            self._semaphores[loop] = asyncio.Semaphore(self.settings.max_in_flight)
        return self._semaphores[loop]

    async def _once(self, call: Callable[[], Awaitable[T]]) -> T:
        self.attempts += 1
        if getattr(self.inner, "in_process", False) or getattr(self.inner, "enforces_timeout", False):
            return await call()
        try:
            return await asyncio.wait_for(call(), self.settings.timeout_seconds)
        except asyncio.TimeoutError:
            raise RetryableBackendError(f"no answer within {self.settings.timeout_seconds:g} s") from None

    async def call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run one back-end call under the limits.

        Raises:
            BackendError: a non-retryable failure, or a retryable one on every attempt.
        """
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableBackendError),
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=wait_random_exponential(multiplier=0.5, max=self.settings.max_backoff_seconds),
            reraise=True,
        )
        try:
            async with self._semaphore():
                async for attempt in retrying:
                    with attempt:
                        return await self._once(call)
        except RetryableBackendError as e:
            raise BackendError(
                f"{self.name}:{self.model} failed after {self.settings.max_attempts} attempts: {e}"
            ) from e
        raise AssertionError("unreachable")  # AsyncRetrying either returns or re-raises

    async def generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        """The inner back end's generate, under the limits."""
        return await self.call(lambda: self.inner.generate(messages, params))

    async def prompt_logprobs(self, prompt: str, top_k: int, include: Sequence[str] = ()) -> list[TokenLogprobs]:
        """The inner back end's prompt_logprobs, under the limits."""
        return await self.call(lambda: self.inner.prompt_logprobs(prompt, top_k, include))

    async def generate_batch(self, requests: Sequence[tuple[Sequence[Message], GenerateParams]]) -> list[list[str]]:
        """The inner back end's batched generate (GENERATE_BATCH), under the limits, as one call."""
        return await self.call(lambda: self.inner.generate_batch(requests))  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        """Close the inner back end."""
        await self.inner.aclose()
