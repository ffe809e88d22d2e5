import asyncio

import pytest

from neuron_explainer.llm.base import Capability, CapabilityError, GenerateParams, LLMBackend, Message, require
from neuron_explainer.llm.fake import FakeBackend, fake_tokenize


def test_fake_tokenize_offsets() -> None:
    assert fake_tokenize(" a b\tc\n") == [(" a b", 0), ("\t", 4), ("c", 5), ("\n", 6)]


def test_fake_generate_cycles_and_records() -> None:
    fake = FakeBackend(completions=("x", "y", "z"))
    msgs = [Message("user", "hi")]
    assert asyncio.run(fake.generate(msgs, GenerateParams(n=2))) == ["x", "y"]
    assert asyncio.run(fake.generate(msgs, GenerateParams(n=2))) == ["z", "x"]
    assert [m for m, _ in fake.calls] == ["generate", "generate"]
    assert isinstance(fake, LLMBackend)


def test_capabilities_are_checked_before_work() -> None:
    fake = FakeBackend()
    require(fake, Capability.GENERATE, "explain")
    with pytest.raises(CapabilityError, match="all-at-once simulation needs prompt_logprobs.*offers generate"):
        require(fake, Capability.PROMPT_LOGPROBS, "all-at-once simulation")
    with_oracle = FakeBackend(oracle=lambda prompt, toks, i: (("7", 0.0),))
    require(with_oracle, Capability.PROMPT_LOGPROBS, "all-at-once simulation")
    out = asyncio.run(with_oracle.prompt_logprobs("a\tunknown", top_k=5))
    assert [(t.token, t.offset, t.top) for t in out] == [
        ("a", 0, (("7", 0.0),)),
        ("\t", 1, (("7", 0.0),)),
        ("unknown", 2, (("7", 0.0),)),
    ]
