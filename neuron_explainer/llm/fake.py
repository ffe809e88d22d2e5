"""A scripted, deterministic back end for tests and --dry-run. Records every call.

Generation returns scripted texts (cycled); prompt logprobs come from an `oracle` that sees each prompt
token with its offset and returns the next-token distribution to report. A tiny whitespace-and-tab
tokeniser stands in for a real one: it splits at tabs and newlines and keeps them as tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuron_explainer.llm.base import Capability, CapabilityError, GenerateParams, Message, TokenLogprobs

Oracle = Callable[[str, list[tuple[str, int]], int], tuple[tuple[str, float], ...]]
"""(prompt, all (token, offset) pairs, index of the current token) -> top next-token logprobs."""

_TOKEN = re.compile(r"\t|\n|[^\t\n]+")


def fake_tokenize(prompt: str) -> list[tuple[str, int]]:
    """Split at tabs and newlines, keeping each tab and newline as a token of its own."""
    return [(m.group(), m.start()) for m in _TOKEN.finditer(prompt)]


@dataclass
class FakeBackend:
    """Deterministic back end; `calls` records (method, payload) for every request."""

    completions: Sequence[str] = ("a placeholder explanation",)
    oracle: Oracle | None = None
    responder: Callable[[Sequence[Message]], str] | None = None
    """If set, answers every generate call instead of cycling `completions`."""
    name: str = "fake"
    model: str = "fake-model"
    supports_prefill: bool = False
    """Pretend a trailing assistant message is continued (as the local back end does)."""
    calls: list[tuple[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    """Tokens sent and received, by the fake tokeniser's count."""

    capabilities: frozenset[Capability] = field(init=False)
    """GENERATE always; PROMPT_LOGPROBS when an oracle is set (kept current when `oracle` changes)."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "oracle":
            caps = {Capability.GENERATE} | ({Capability.PROMPT_LOGPROBS} if value is not None else set())
            super().__setattr__("capabilities", frozenset(caps))

    async def generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        """Return the next `params.n` scripted completions (cycling)."""
        start = sum(payload[1].n for method, payload in self.calls if method == "generate")  # samples so far
        self.calls.append(("generate", (tuple(messages), params)))
        if self.responder is not None:
            out = [self.responder(messages) for _ in range(params.n)]
        else:
            out = [self.completions[(start + i) % len(self.completions)] for i in range(params.n)]
        self.usage["prompt_tokens"] += sum(len(fake_tokenize(m.content)) for m in messages)
        self.usage["completion_tokens"] += sum(len(fake_tokenize(o)) for o in out)
        return out

    async def prompt_logprobs(self, prompt: str, top_k: int, include: Sequence[str] = ()) -> list[TokenLogprobs]:
        """Tokenise with `fake_tokenize` and ask the oracle for each position."""
        if self.oracle is None:
            raise CapabilityError("this fake back end has no logprob oracle")
        self.calls.append(("prompt_logprobs", prompt))
        tokens = fake_tokenize(prompt)
        self.usage["prompt_tokens"] += len(tokens)
        return [TokenLogprobs(tok, off, self.oracle(prompt, tokens, i)[:top_k]) for i, (tok, off) in enumerate(tokens)]

    async def aclose(self) -> None:
        """Nothing to release."""


def hashed_oracle(prompt: str, tokens: list[tuple[str, int]], i: int) -> tuple[tuple[str, float], ...]:
    """A deterministic stand-in simulator for whole-pipeline tests.

    After a tab: a level 0-9 derived from a hash of the row's token (the same token always gets the same
    level) and a second label; elsewhere a non-label.
    """
    import hashlib

    if tokens[i][0] != "\t" or i == 0:
        return (("x", 0.0),)
    row_token = tokens[i - 1][0]
    level = hashlib.sha256(row_token.encode()).digest()[0] % 10
    return ((str(level), -0.2), (str((level + 3) % 10), -1.8))


def scripted_answer(messages: Sequence[Message]) -> str:
    """A plausible answer to each of the pipeline's prompts, for whole-pipeline tests and dry runs.

    A request for numbered test sentences (the revision prompt) gets four short sentences; anything
    else gets a short explanation.
    """
    last = messages[-1]
    asking_sentences = (last.role == "assistant" and last.content.strip() == "1.") or (
        last.role == "user" and last.content.startswith("Explanation: the main thing this neuron does is find")
    )
    if asking_sentences:
        return (
            " the cat sat on the red mat\n2. a dog ran under the old tree\n3. the king reads a book\n4. one two three"
        )
    return " tokens of this kind."
