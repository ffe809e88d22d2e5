"""The one wrapper around every back end: concurrency limit, per-attempt timeout, classified retries."""

import asyncio

import pytest

from neuron_explainer.config import LLMConfig
from neuron_explainer.llm.base import BackendError, Capability, GenerateParams, Message, RetryableBackendError
from neuron_explainer.llm.managed import ManagedBackend


class Scripted:
    """A back end that sleeps, then fails or answers as scripted; it records the peak concurrency."""

    name, model = "scripted", "m"
    capabilities = frozenset({Capability.GENERATE})

    def __init__(self, script: list, delay: float = 0.0) -> None:
        self.script, self.delay, self.calls, self.active, self.peak = list(script), delay, 0, 0, 0

    async def generate(self, messages, params):
        self.calls += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
            step = self.script.pop(0) if self.script else "ok"
            if isinstance(step, Exception):
                raise step
            return [step]
        finally:
            self.active -= 1

    async def aclose(self) -> None:
        pass


def managed(inner, **settings) -> ManagedBackend:
    return ManagedBackend(inner, LLMConfig(max_backoff_seconds=0.0, **settings))


def call(backend) -> list[str]:
    return asyncio.run(backend.generate([Message("user", "x")], GenerateParams()))


def test_retryable_failures_are_retried_then_reported() -> None:
    inner = Scripted([RetryableBackendError("HTTP 503"), RetryableBackendError("malformed"), "fine"])
    assert call(managed(inner)) == ["fine"] and inner.calls == 3
    inner = Scripted([RetryableBackendError("HTTP 503")] * 5)
    with pytest.raises(BackendError, match="failed after 3 attempts: HTTP 503"):
        call(managed(inner, max_attempts=3))
    assert inner.calls == 3


def test_other_failures_are_not_retried() -> None:
    inner = Scripted([BackendError("HTTP 401"), "never"])
    with pytest.raises(BackendError, match="HTTP 401"):
        call(managed(inner))
    assert inner.calls == 1


def test_a_slow_attempt_times_out_and_is_retried() -> None:
    inner = Scripted(["late"], delay=0.3)
    backend = managed(inner, timeout_seconds=0.05, max_attempts=2)
    with pytest.raises(BackendError, match="no answer within 0.05 s"):
        call(backend)
    assert inner.calls == 2 and backend.attempts == 2


def test_concurrency_is_limited_per_back_end() -> None:
    inner = Scripted([], delay=0.05)
    backend = managed(inner, max_in_flight=3)

    async def many() -> None:
        await asyncio.gather(*(backend.generate([Message("user", str(i))], GenerateParams()) for i in range(10)))

    asyncio.run(many())
    assert inner.calls == 10 and inner.peak == 3
    asyncio.run(many())  # a second event loop (as a second stage would use) works too
    assert inner.calls == 20 and inner.peak == 3
