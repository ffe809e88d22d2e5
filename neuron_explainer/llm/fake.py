"""A scripted, deterministic back end for tests and --dry-run. Records every call.

Generation returns scripted texts (cycled); prompt logprobs come from an `oracle` that sees each prompt
token with its offset and returns the next-token distribution to report. A tiny whitespace-and-tab
tokeniser stands in for a real one: it splits at tabs and newlines and keeps them as tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    name: str = "fake"
    model: str = "fake-model"
    supports_prefill: bool = False
    """Pretend a trailing assistant message is continued (as the local back end does)."""
    calls: list[tuple[str, object]] = field(default_factory=list)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """GENERATE always; PROMPT_LOGPROBS when an oracle is set."""
        caps = {Capability.GENERATE}
        if self.oracle is not None:
            caps.add(Capability.PROMPT_LOGPROBS)
        return frozenset(caps)

    async def generate(self, messages: Sequence[Message], params: GenerateParams) -> list[str]:
        """Return the next `params.n` scripted completions (cycling)."""
        start = sum(payload[1].n for method, payload in self.calls if method == "generate")  # samples so far
        self.calls.append(("generate", (tuple(messages), params)))
        return [self.completions[(start + i) % len(self.completions)] for i in range(params.n)]

    async def prompt_logprobs(self, prompt: str, top_k: int, include: Sequence[str] = ()) -> list[TokenLogprobs]:
        """Tokenise with `fake_tokenize` and ask the oracle for each position."""
        if self.oracle is None:
            raise CapabilityError("this fake back end has no logprob oracle")
        self.calls.append(("prompt_logprobs", prompt))
        tokens = fake_tokenize(prompt)
        return [TokenLogprobs(tok, off, self.oracle(prompt, tokens, i)[:top_k]) for i, (tok, off) in enumerate(tokens)]

    async def aclose(self) -> None:
        """Nothing to release."""
