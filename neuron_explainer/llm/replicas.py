"""One back end over several replicas of the same server: each request goes where the load is least.

A spec with several base URLs, `vllm:<model>@http://h1:8000/v1,http://h2:8000/v1` (or `openai:...`),
builds one transport per URL and puts them in a ReplicaPool, which the managed wrapper (llm/managed.py)
wraps like any other back end:
- a request goes to the replica in service with the fewest outstanding requests (ties: round-robin);
- a replica whose request fails with UnavailableError (unreachable, timed out, HTTP 500/502/503/504) is
  taken out of service for a cool-down that doubles with each failure in a row, up to a cap; when the
  cool-down ends one request probes it: an answer puts it back, a failure takes it out again for longer;
- the pool never retries: the failure reaches the managed wrapper, whose next attempt lands on another
  replica. With every replica out, a request fails at once (retryably), naming each replica's last error.
The per-attempt time limit is enforced here rather than by the wrapper, so a replica that hangs is taken
out too. A request returns one replica's whole parsed answer or raises; a failed attempt leaves nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from neuron_explainer.errors import ConfigError
from neuron_explainer.llm.base import (
    GenerateParams,
    LLMBackend,
    Message,
    RetryableBackendError,
    TokenLogprobs,
    UnavailableError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class Replica:
    """One replica's transport and its health."""

    backend: LLMBackend
    outstanding: int = 0
    """Requests sent to it and not yet answered."""
    strikes: int = 0
    """Cool-downs in a row without an answer in between (sets the next cool-down's length)."""
    out_until: float | None = None
    """Clock time its cool-down ends; None while in service."""
    probing: bool = False
    """A probe request is outstanding (the cool-down is over, the replica not yet back)."""
    answered: int = 0
    """Requests it answered (a non-retryable error counts: the server did answer)."""
    failed: int = 0
    """Requests that failed with UnavailableError or a time-out."""
    last_error: str = ""

    @property
    def url(self) -> str:
        """The replica's base URL (its model name when it has none, as fakes in tests)."""
        return str(getattr(self.backend, "base_url", None) or self.backend.model)


class ReplicaPool:
    """Replicas of one model as one back end; same protocol. See the module docstring for the policy."""

    enforces_timeout = True
    """Read by the managed wrapper: the time limit per attempt is this pool's, so time-outs take replicas out."""

    def __init__(
        self,
        replicas: Sequence[LLMBackend],
        *,
        timeout: float | None = None,
        cooldown: float = 2.0,
        max_cooldown: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Pool `replicas` (same kind and model); `timeout` limits one attempt, in seconds (None: no limit).

        Raises:
            ConfigError: no replicas, or replicas of different kinds or models.
        """
        if not replicas:
            raise ConfigError("a replica pool needs at least one replica")
        first = replicas[0]
        if any((r.name, r.model) != (first.name, first.model) for r in replicas):
            found = sorted({f"{r.name}:{r.model}" for r in replicas})
            raise ConfigError(f"replicas must serve one model, got {', '.join(found)}")
        self.replicas = [Replica(r) for r in replicas]
        self.name, self.model = first.name, first.model
        self.capabilities = frozenset.intersection(*(frozenset(r.capabilities) for r in replicas))
        self.base_url = ",".join(r.url for r in self.replicas)
        self.timeout, self.cooldown, self.max_cooldown, self.clock = timeout, cooldown, max_cooldown, clock
        self._turn = 0

    @property
    def usage(self) -> dict[str, int]:
        """Tokens every replica's server reported, summed."""
        total: dict[str, int] = {}
        for r in self.replicas:
            for key, value in (getattr(r.backend, "usage", None) or {}).items():
                total[key] = total.get(key, 0) + value
        return total

    @property
    def requests(self) -> int:
        """Requests sent to any replica."""
        return sum(r.answered + r.failed for r in self.replicas)

    def pick(self) -> tuple[Replica, bool]:
        """The replica for the next request, and whether that request probes a replica back into service.

        Raises:
            RetryableBackendError: every replica is out of service (or has its probe outstanding).
        """
        now = self.clock()
        ready = [r for r in self.replicas if r.out_until is None or (r.out_until <= now and not r.probing)]
        if not ready:
            raise RetryableBackendError(self._all_out(now))
        least = min(r.outstanding for r in ready)
        n = len(self.replicas)
        in_turn = [self.replicas[(self._turn + step) % n] for step in range(n)]
        chosen = next(r for r in in_turn if r in ready and r.outstanding == least)
        self._turn = self.replicas.index(chosen) + 1
        probe = chosen.out_until is not None
        chosen.probing = chosen.probing or probe
        return chosen, probe

    def _all_out(self, now: float) -> str:
        back = min(max(0.0, (r.out_until or now) - now) for r in self.replicas)
        errors = "; ".join(f"{r.url}: {r.last_error}" for r in self.replicas)
        return (
            f"all {len(self.replicas)} replicas of {self.name}:{self.model} are out of service after failures "
            f"(the first is probed again in {back:.1f} s): {errors}"
        )[:1000]

    def _take_out(self, r: Replica, probe: bool, error: str) -> None:
        r.failed += 1
        r.last_error = error
        if r.out_until is not None and not probe:
            return  # a request sent before it was taken out: the cool-down already counts this failure
        r.strikes += 1
        pause = min(self.max_cooldown, self.cooldown * 2 ** (r.strikes - 1))
        r.out_until, r.probing = self.clock() + pause, False
        logger.warning("replica %s is out of service for %.1f s: %s", r.url, pause, error)

    def _answered(self, r: Replica, probe: bool) -> None:
        r.answered += 1
        if probe or r.out_until is None:  # an old request's answer says little about the replica now
            if r.out_until is not None:
                logger.warning("replica %s is back in service", r.url)
            r.strikes, r.out_until, r.probing = 0, None, False

    async def call(self, request: Callable[[LLMBackend], Awaitable[T]]) -> T:
        """Send one request to the chosen replica, one attempt, and update its health from the outcome.

        Raises:
            UnavailableError: the replica failed or timed out (it is taken out of service).
            RetryableBackendError: every replica is out of service.
            BackendError: whatever else the replica's transport raises, unchanged.
        """
        r, probe = self.pick()
        r.outstanding += 1
        try:
            async with asyncio.timeout(self.timeout):
                result = await request(r.backend)
        except UnavailableError as e:
            self._take_out(r, probe, str(e))
            raise
        except TimeoutError:
            message = f"{r.url}: no answer within {self.timeout:g} s"
            self._take_out(r, probe, message)
            raise UnavailableError(message) from None
        except Exception:  # the replica answered, with an error of the request, not of the server
            self._answered(r, probe)
            raise
        except BaseException:  # cancelled from outside: says nothing of the replica; the next request probes
            if probe:
                r.probing = False
            raise
        finally:
            r.outstanding -= 1
        self._answered(r, probe)
        return result

    async def generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        """Chat completions from one replica."""
        return await self.call(lambda b: b.generate(messages, params))

    async def prompt_logprobs(self, prompt: str, top_k: int, include: Sequence[str] = ()) -> list[TokenLogprobs]:
        """Prompt logprobs from one replica."""
        return await self.call(lambda b: b.prompt_logprobs(prompt, top_k, include))

    def status(self) -> list[dict[str, Any]]:
        """Each replica's URL, health and counts (for logs and tests)."""
        now = self.clock()
        return [
            {
                "url": r.url,
                "in_service": r.out_until is None,
                "out_for_seconds": 0.0 if r.out_until is None else max(0.0, r.out_until - now),
                "outstanding": r.outstanding,
                "answered": r.answered,
                "failed": r.failed,
            }
            for r in self.replicas
        ]

    async def aclose(self) -> None:
        """Close every replica's transport."""
        for r in self.replicas:
            await r.backend.aclose()
