"""The LLM back-end protocol and its value types. Pure: no network, no torch.

A back end declares its capabilities up front, so a stage that needs prompt logprobs refuses to start
on a chat-only back end instead of failing halfway through a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol, runtime_checkable

from neuron_explainer.errors import NeuronExplainerError


class Capability(str, Enum):
    """What a back end can do."""

    GENERATE = "generate"
    """Chat messages in, sampled completions out."""
    PROMPT_LOGPROBS = "prompt_logprobs"
    """Top-k next-token log-probabilities at every position of a given prompt."""
    SLOT_LOGPROBS = "slot_logprobs"
    """`label_logprobs(requests)`: label log-probabilities at given slots of many prompts, batched."""
    GENERATE_BATCH = "generate_batch"
    """`generate_batch(requests)`: many chats generated together; greedy output equals `generate`'s."""


class CapabilityError(NeuronExplainerError):
    """A back end lacks a capability a stage needs."""


class BackendError(NeuronExplainerError):
    """A back end failed (after retries, if the failure was retryable)."""


class RetryableBackendError(BackendError):
    """A failure worth another attempt: a timeout, a lost connection, HTTP 408/409/429/5xx, a malformed answer.

    Back ends raise it from one attempt; the managed wrapper (llm/managed.py) retries it and, when the
    attempts run out, raises a plain BackendError saying so.
    """


class UnavailableError(RetryableBackendError):
    """The server itself failed, not the request: unreachable, timed out, or HTTP 5xx.

    A replica pool (llm/replicas.py) takes a replica that raises it out of service for a while; like
    every RetryableBackendError it is retried by the managed wrapper, so the next attempt lands elsewhere.
    """


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class GenerateParams:
    """Sampling settings of one generate call. Immutable: never changed per call behind the caller."""

    max_tokens: int = 80
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    """Number of samples; each is cached separately."""
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenLogprobs:
    """One prompt token and the model's prediction for the token after it."""

    token: str
    """The token's text as the back end reports it."""
    offset: int
    """Character offset of the token's first character in the prompt string."""
    top: tuple[tuple[str, float], ...] = field(default_factory=tuple)
    """Top-k (token text, log-probability) of the *next* token, given the prompt up to and including
    this one; sorted by log-probability, highest first."""


class SlotError(NeuronExplainerError):
    """A slot request cannot be scored: no prompt token starts at a slot, or a label is not one token."""


@dataclass(frozen=True)
class SlotRequest:
    """One prompt, the character offsets of its slots and the labels to score at every slot."""

    prompt: str
    slots: tuple[int, ...]
    """Character offsets in `prompt`; a prompt token must start exactly at each one (not the first token)."""
    labels: tuple[str, ...]
    """Candidate texts for the token at each slot; each must be exactly one token of the model."""


@dataclass(frozen=True)
class SlotLogprobs:
    """Label log-probabilities at the slots of one SlotRequest, read from the token just before each slot."""

    logprobs: tuple[tuple[float, ...], ...]
    """Per slot, per label: log P(label | the prompt before the slot, the next token is a label)."""
    slot_tokens: tuple[str, ...]
    """The prompt's text of the token that starts at each slot."""
    label_mass: tuple[float, ...] | None = None
    """Per slot, log P(the next token is one of the labels) over the whole vocabulary, when asked for;
    `logprobs[i][j] + label_mass[i]` is then the full-vocabulary log-probability of label j."""


@runtime_checkable
class LLMBackend(Protocol):
    """What every back end implements. Back ends do transport only; retry, cache and limits wrap them."""

    name: str
    """Back-end kind, e.g. `local`, `openai`, `fake`."""
    model: str
    """Model identifier as the back end knows it."""
    capabilities: frozenset[Capability]

    async def generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        """Return `params.n` sampled completions of a chat."""
        ...

    async def prompt_logprobs(self, prompt: str, top_k: int, include: Sequence[str] = ()) -> list[TokenLogprobs]:
        """Tokenise `prompt` and return every token with its offset and top-k next-token logprobs.

        No special tokens are added beyond the model's usual BOS. Back ends that can (the local one)
        also report the tokens in `include` at every position, whether or not they are in the top-k.
        """
        ...

    async def aclose(self) -> None:
        """Release connections or memory."""
        ...


def require(backend: LLMBackend, capability: Capability, purpose: str) -> None:
    """Raise CapabilityError before any work starts if `backend` cannot do `capability`."""
    if capability not in backend.capabilities:
        have = ", ".join(sorted(c.value for c in backend.capabilities)) or "nothing"
        raise CapabilityError(
            f"{purpose} needs {capability.value}, but back end {backend.name}:{backend.model} offers {have}"
        )
