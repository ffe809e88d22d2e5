"""Batched slot scoring and batched generation of LocalBackend against one-prompt references.

Tiny random GPT-2 (absolute positions), Llama and Gemma-3 (sliding window 8, far shorter than the
prompts; final logit softcapping) in float32. Every batched value must equal a plain full forward with
log_softmax, and the existing one-prompt path, within 1e-4.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from neuron_explainer.llm.base import CapabilityError, GenerateParams, Message, SlotError, SlotLogprobs, SlotRequest
from neuron_explainer.llm.hf_local import LocalBackend
from tests.conftest import WORDS
from tests.tiny_hf import SLIDING_WINDOW, make_label_tokenizer, make_model

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")  # e.g. the deprecated `past_key_values`

FAMILIES = ("gpt2", "llama", "gemma3")
LABELS = ("one", "two", "three", "four", "five")
PREFIX = "the cat sat on the red road and the dog ran under the big tree near a small blue house by the river ."


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request: pytest.FixtureRequest) -> tuple:
    tokenizer, vocab = make_label_tokenizer(with_bos=request.param != "gpt2")
    return request.param, make_model(request.param, vocab), tokenizer


def slot_requests(lengths: tuple[int, ...] = (3, 17, 8, 25, 1, 11, 6), seed: int = 0) -> list[SlotRequest]:
    """The shared prefix, then suffixes of mixed lengths with slots at some of their words."""
    rng = random.Random(seed)
    out = []
    for n in lengths:
        text, slots = PREFIX, []
        for i in range(n):
            word = rng.choice(WORDS)
            text += " " + word
            if i == n - 1 or rng.random() < 0.4:
                slots.append(len(text) - len(word))
        out.append(SlotRequest(text, tuple(slots), LABELS))
    return out


def reference(model, tokenizer, request: SlotRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """Full forward, log_softmax: per slot, label logprobs renormalised over the labels, and their log mass."""
    enc = tokenizer(request.prompt, return_offsets_mapping=True)
    starts = [s if i or tokenizer.bos_token is None else -1 for i, (s, _) in enumerate(enc["offset_mapping"])]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([enc["input_ids"]])).logits[0].float(), -1)
    ids = [tokenizer.convert_tokens_to_ids(label) for label in LABELS]
    rows = torch.stack([logp[starts.index(slot) - 1, ids] for slot in request.slots])
    mass = rows.logsumexp(-1)
    return rows - mass[:, None], mass


def assert_matches(model, tokenizer, request: SlotRequest, got: SlotLogprobs) -> None:
    want, mass = reference(model, tokenizer, request)
    assert torch.allclose(torch.tensor(got.logprobs), want, atol=1e-4)
    if got.label_mass is not None:
        assert torch.allclose(torch.tensor(got.label_mass), mass, atol=1e-4)
    assert got.slot_tokens == tuple(request.prompt[s:].split(" ", 1)[0] for s in request.slots)


def test_label_logprobs_equal_a_full_forward(tiny) -> None:
    family, model, tokenizer = tiny
    backend = LocalBackend(model, tokenizer, model_name=family, slot_batch_tokens=40, min_prefix_tokens=4)
    requests = slot_requests()
    out = asyncio.run(backend.label_logprobs(requests, label_mass=True))
    for request, got in zip(requests, out, strict=True):
        assert_matches(model, tokenizer, request, got)
    scorer = backend.slots
    prefix = len(scorer.store.items[0].ids)
    assert prefix > 2 * SLIDING_WINDOW and scorer.store.forward_tokens == prefix  # the prefix ran once
    assert scorer.batches >= 3 and scorer.padded_tokens > scorer.suffix_tokens  # several padded batches


def test_label_logprobs_equal_the_one_prompt_path(tiny) -> None:
    family, model, tokenizer = tiny
    backend = LocalBackend(model, tokenizer, model_name=family, slot_batch_tokens=64, min_prefix_tokens=4)
    requests = slot_requests((5, 14, 2))
    batched = asyncio.run(backend.label_logprobs(requests))
    for request, got in zip(requests, batched, strict=True):
        tokens = asyncio.run(backend.prompt_logprobs(request.prompt, top_k=2, include=LABELS))
        index = {t.offset: i for i, t in enumerate(tokens)}
        for slot, row in zip(request.slots, got.logprobs, strict=True):
            top = dict(tokens[index[slot] - 1].top)
            one = torch.tensor([top[label] for label in LABELS])
            assert torch.allclose(torch.tensor(row), one - one.logsumexp(0), atol=1e-4)
        assert got.label_mass is None


def test_prefix_is_reused_across_calls_and_never_changed() -> None:
    tokenizer, vocab = make_label_tokenizer()
    model = make_model("gemma3", vocab)
    backend = LocalBackend(model, tokenizer, model_name="gemma3", slot_batch_tokens=64, min_prefix_tokens=4)
    asyncio.run(backend.label_logprobs(slot_requests()))
    store = backend.slots.store
    (entry,) = store.items
    ran, kept = store.forward_tokens, [layer.keys.clone() for layer in entry.cache.layers]
    again = slot_requests((9, 1, 21), seed=1)  # a one-word suffix: the shared prefix ends where it did
    out = asyncio.run(backend.label_logprobs(again))
    assert store.forward_tokens == ran  # same prefix: nothing recomputed
    assert all(torch.equal(a, layer.keys) for a, layer in zip(kept, entry.cache.layers, strict=True))
    text = PREFIX + " one two three four five"
    single = SlotRequest(text, (text.index("four"), text.index("five")), LABELS)
    out += asyncio.run(backend.label_logprobs([single]))
    enc = tokenizer(single.prompt, return_offsets_mapping=True)
    first_read = [s for s, _ in enc["offset_mapping"]].index(single.slots[0], 1) - 1
    assert store.forward_tokens - ran == first_read - len(entry.ids) > 0  # only the new request's own words
    for request, got in zip([*again, single], out, strict=True):
        assert_matches(model, tokenizer, request, got)


def test_without_prefix_reuse_every_prompt_runs_in_full_with_the_same_values() -> None:
    tokenizer, vocab = make_label_tokenizer()
    model = make_model("gemma3", vocab)
    backend = LocalBackend(model, tokenizer, model_name="gemma3", reuse_prefix=False, slot_batch_tokens=80)
    requests = slot_requests()
    for request, got in zip(requests, asyncio.run(backend.label_logprobs(requests)), strict=True):
        assert_matches(model, tokenizer, request, got)
    assert backend.slots.store.forward_tokens == 0 and backend.slots.suffix_tokens == backend.slots.prompt_tokens


def test_misaligned_slots_and_bad_labels_fail_alone() -> None:
    tokenizer, vocab = make_label_tokenizer()
    model = make_model("llama", vocab)
    backend = LocalBackend(model, tokenizer, model_name="llama", min_prefix_tokens=4)
    good = slot_requests((6, 3))
    inside_a_word = SlotRequest(good[0].prompt, (good[0].slots[0] + 1,), LABELS)
    past_the_end = SlotRequest(good[0].prompt, (len(good[0].prompt),), LABELS)
    unknown_label = SlotRequest(good[1].prompt, good[1].slots, ("one", "zebra"))
    repeated_label = SlotRequest(good[1].prompt, good[1].slots, ("one", "one"))
    out = asyncio.run(
        backend.label_logprobs([good[0], inside_a_word, past_the_end, unknown_label, repeated_label, good[1]])
    )
    assert [type(o).__name__ for o in out] == ["SlotLogprobs"] + ["SlotError"] * 4 + ["SlotLogprobs"]
    assert "does not split the prompt at the slot" in str(out[1]) and isinstance(out[3], SlotError)
    assert_matches(model, tokenizer, good[0], out[0])
    assert_matches(model, tokenizer, good[1], out[5])


def test_a_head_it_cannot_reproduce_is_refused() -> None:
    tokenizer, vocab = make_label_tokenizer()
    model = make_model("llama", vocab)
    model.config.final_logit_softcapping = 0.5  # Llama ignores it; the slot head would apply it
    backend = LocalBackend(model, tokenizer, model_name="llama")
    with pytest.raises(CapabilityError, match="output head"):
        asyncio.run(backend.label_logprobs(slot_requests((3,))))


CHATS = [
    [Message("user", "the cat sat on the red road")],
    [Message("system", "be brief"), Message("user", "a dog")],
    [Message("user", "one two three four five six seven eight nine ten city town field lamp door")],
    [Message("user", "the king and the queen"), Message("assistant", "the king")],
]


def test_generate_batch_equals_one_by_one_at_temperature_0(tiny) -> None:
    family, model, tokenizer = tiny
    backend = LocalBackend(model, tokenizer, model_name=family, generate_batch_tokens=80)
    params = [GenerateParams(max_tokens=8, temperature=0.0, n=1 + i % 2) for i in range(len(CHATS))]
    one_by_one = [asyncio.run(backend.generate(chat, p)) for chat, p in zip(CHATS, params, strict=True)]
    batched = asyncio.run(backend.generate_batch(list(zip(CHATS, params, strict=True))))
    assert batched == one_by_one
    assert [len(t) for t in batched] == [p.n for p in params] and any(t[0].strip() for t in batched)


def test_sampled_generate_batch_is_seeded_and_gives_n_samples() -> None:
    tokenizer, vocab = make_label_tokenizer()
    backend = LocalBackend(make_model("llama", vocab), tokenizer, model_name="llama", generate_batch_tokens=60)
    requests = [(chat, GenerateParams(max_tokens=6, temperature=1.0, n=3, seed=7)) for chat in CHATS]
    first = asyncio.run(backend.generate_batch(requests))
    assert first == asyncio.run(backend.generate_batch(requests))
    assert [len(texts) for texts in first] == [3] * len(CHATS)
    assert all(len(set(texts)) > 1 for texts in first[:2])  # samples of a request differ
