import asyncio
from pathlib import Path

from neuron_explainer.llm.base import GenerateParams, Message
from neuron_explainer.llm.cache import CachedBackend
from neuron_explainer.llm.fake import FakeBackend

MSGS = [Message("user", "explain")]


def test_samples_are_cached_separately_and_survive_a_restart(tmp_path: Path) -> None:
    inner = FakeBackend(completions=("a", "b", "c", "d"))
    cached = CachedBackend(inner, tmp_path / "llm.sqlite")
    first = asyncio.run(cached.generate(MSGS, GenerateParams(n=2, seed=1)))
    assert first == ["a", "b"] and cached.misses == 2
    assert asyncio.run(cached.generate(MSGS, GenerateParams(n=2, seed=1))) == first
    assert len(inner.calls) == 1  # the repeat made no call
    more = asyncio.run(cached.generate(MSGS, GenerateParams(n=3, seed=1)))
    assert more[:2] == first and more[2] == "c"  # only the missing sample was generated
    assert inner.calls[-1][1][1].n == 1
    reopened = CachedBackend(FakeBackend(completions=("zzz",)), tmp_path / "llm.sqlite")
    assert asyncio.run(reopened.generate(MSGS, GenerateParams(n=3, seed=1))) == more
    assert reopened.inner.calls == []


def test_anything_that_changes_the_output_misses(tmp_path: Path) -> None:
    inner = FakeBackend(completions=("a", "b", "c", "d", "e"))
    cached = CachedBackend(inner, tmp_path / "llm.sqlite")
    asyncio.run(cached.generate(MSGS, GenerateParams(seed=1)))
    asyncio.run(cached.generate(MSGS, GenerateParams(seed=2)))
    asyncio.run(cached.generate(MSGS, GenerateParams(seed=1, temperature=0.5)))
    asyncio.run(cached.generate([Message("user", "other")], GenerateParams(seed=1)))
    assert len(inner.calls) == 4 and cached.hits == 0


def test_prompt_logprobs_cache_is_opt_in(tmp_path: Path) -> None:
    inner = FakeBackend(oracle=lambda prompt, toks, i: (("7", -0.1), ("8", -2.5)))
    plain = CachedBackend(inner, tmp_path / "a.sqlite")
    asyncio.run(plain.prompt_logprobs("a\tb", 2))
    asyncio.run(plain.prompt_logprobs("a\tb", 2))
    assert len(inner.calls) == 2
    cached = CachedBackend(inner, tmp_path / "b.sqlite", cache_logprobs=True)
    x = asyncio.run(cached.prompt_logprobs("a\tb", 2))
    y = asyncio.run(cached.prompt_logprobs("a\tb", 2))
    assert x == y and len(inner.calls) == 3
