"""LocalBackend against exact log-softmax on a tiny random Llama with an in-code tokenizer."""

import asyncio

import pytest
import torch

from neuron_explainer.llm.base import GenerateParams, Message
from neuron_explainer.llm.hf_local import LocalBackend
from tests.conftest import make_tiny_model, make_tokenizer

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")  # e.g. the deprecated `past_key_values`

PREFIX = " ".join(["the cat sat on the red road and the dog ran under the big tree ."] * 3)


@pytest.fixture(scope="module")
def tiny() -> tuple:
    tokenizer, vocab = make_tokenizer(with_bos=True)
    return make_tiny_model("llama", vocab), tokenizer


def exact_top(model, tokenizer, prompt: str, k: int):
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    return logp.topk(k, -1)


def test_prompt_logprobs_are_exact_and_aligned(tiny) -> None:
    model, tokenizer = tiny
    backend = LocalBackend(model, tokenizer, model_name="tiny", reuse_prefix=False)
    prompt = "the cat sat on the red road"
    out = asyncio.run(backend.prompt_logprobs(prompt, top_k=5))
    values, indices = exact_top(model, tokenizer, prompt, 5)
    assert [t.token for t in out] == prompt.split()  # BOS omitted, texts are the prompt's own spans
    assert all(prompt[t.offset : t.offset + len(t.token)] == t.token for t in out)
    for pos, t in enumerate(out, start=1):  # position 0 is BOS
        assert [tok for tok, _ in t.top] == [tokenizer.decode([int(i)]) for i in indices[pos]]
        assert torch.allclose(torch.tensor([lp for _, lp in t.top]), values[pos], atol=1e-6)


def test_prefix_reuse_matches_full_forward_and_saves_work(tiny) -> None:
    model, tokenizer = tiny
    plain = LocalBackend(model, tokenizer, model_name="tiny", reuse_prefix=False)
    reuse = LocalBackend(model, tokenizer, model_name="tiny", reuse_prefix=True)
    targets = [PREFIX + " one two three", PREFIX + " fish eats bread", PREFIX + " one two four"]
    for prompt in targets:
        a = asyncio.run(plain.prompt_logprobs(prompt, top_k=4))
        b = asyncio.run(reuse.prompt_logprobs(prompt, top_k=4))
        assert [(t.token, t.offset) for t in a] == [(t.token, t.offset) for t in b]
        for x, y in zip(a, b, strict=True):
            assert [tok for tok, _ in x.top] == [tok for tok, _ in y.top]
            assert max(abs(p - q) for (_, p), (_, q) in zip(x.top, y.top, strict=True)) < 1e-4
    assert reuse.forward_tokens < plain.forward_tokens / 2


def test_generate_returns_n_samples_and_applies_stop(tiny) -> None:
    model, tokenizer = tiny
    backend = LocalBackend(model, tokenizer, model_name="tiny")
    msgs = [Message("system", "be brief"), Message("user", "the cat")]
    outs = asyncio.run(backend.generate(msgs, GenerateParams(max_tokens=6, temperature=1.0, n=3, seed=1)))
    assert len(outs) == 3 and all(isinstance(o, str) for o in outs)
    again = asyncio.run(backend.generate(msgs, GenerateParams(max_tokens=6, temperature=1.0, n=3, seed=1)))
    assert outs == again  # seeded sampling is reproducible
    greedy = asyncio.run(backend.generate(msgs, GenerateParams(max_tokens=8, temperature=0.0, stop=("the",))))
    assert "the" not in greedy[0]


def test_included_tokens_are_reported_exactly_outside_the_top_k(tiny) -> None:
    model, tokenizer = tiny
    backend = LocalBackend(model, tokenizer, model_name="tiny", reuse_prefix=False)
    prompt = "the cat sat on the red road"
    out = asyncio.run(backend.prompt_logprobs(prompt, top_k=2, include=["moon", "star", "not-a-token"]))
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    moon = tokenizer.convert_tokens_to_ids("moon")
    for pos, t in enumerate(out, start=1):
        got = dict(t.top)
        assert abs(got["moon"] - float(logp[pos, moon])) < 1e-6 and "star" in got and len(t.top) <= 4


def test_trailing_assistant_message_is_continued(tiny) -> None:
    model, tokenizer = tiny
    backend = LocalBackend(model, tokenizer, model_name="tiny")
    msgs = [Message("user", "the cat"), Message("assistant", "the dog")]
    ids = backend._chat_ids(msgs)[0].tolist()
    assert tokenizer.decode(ids).rstrip().endswith("dog")  # no new turn after the prefill
    assert len(asyncio.run(backend.generate(msgs, GenerateParams(max_tokens=4, temperature=0.0)))) == 1
