"""simulate_all_at_once_batch: the same Simulations as one prompt at a time, a Failure per bad pair."""

from __future__ import annotations

import asyncio
import random

import pytest

from neuron_explainer.datatypes import Failure, Simulation
from neuron_explainer.llm.base import Capability, CapabilityError, SlotError, SlotLogprobs
from neuron_explainer.llm.fake import FakeBackend, hashed_oracle
from neuron_explainer.llm.hf_local import LocalBackend
from neuron_explainer.prompts.templates import load_simulator_template
from neuron_explainer.simulate.batched import simulate_all_at_once_batch
from neuron_explainer.simulate.simulator import SimulatorSetup, simulate_all_at_once
from tests.conftest import WORDS
from tests.tiny_hf import make_label_tokenizer, make_model

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

EXPLANATIONS = ("animals and the words around them", "colours", "verbs about reading and writing")


def items(lengths: tuple[int, ...] = (12, 3, 30, 7, 20, 1), seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    return [
        (EXPLANATIONS[i % len(EXPLANATIONS)], [" " + rng.choice(WORDS) for _ in range(n)])
        for i, n in enumerate(lengths)
    ]


def one_by_one(pairs, backend, template) -> list[Simulation]:
    return [asyncio.run(simulate_all_at_once(e, t, SimulatorSetup(backend, template))) for e, t in pairs]


def assert_same(a: Simulation, b: Simulation) -> None:
    assert a.tokens == b.tokens and a.max_level == b.max_level and a.distribution_values == b.distribution_values
    assert (a.simulator, a.prompt_version) == (b.simulator, b.prompt_version)
    assert max(abs(x - y) for x, y in zip(a.expected_values, b.expected_values, strict=True)) < 1e-4
    for p, q in zip(a.distribution_probabilities, b.distribution_probabilities, strict=True):
        assert max(abs(x - y) for x, y in zip(p, q, strict=True)) < 1e-4


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_batched_simulations_equal_one_prompt_at_a_time(family: str) -> None:
    tokenizer, vocab = make_label_tokenizer()
    backend = LocalBackend(make_model(family, vocab, positions=1024), tokenizer, model_name=family)
    backend.slots.batch_tokens = 200  # several batches of mixed lengths
    template = load_simulator_template()
    pairs = items()
    batched = asyncio.run(simulate_all_at_once_batch(pairs, SimulatorSetup(backend, template)))
    assert backend.slots.batches >= 2 and batched[0].max_level == 10
    for got, want in zip(batched, one_by_one(pairs, backend, template), strict=True):
        assert_same(got, want)
    assert len({round(v, 3) for s in batched for v in s.expected_values}) > 10  # varied, not a constant


def test_without_slot_logprobs_it_falls_back_to_one_prompt_at_a_time() -> None:
    tokenizer, vocab = make_label_tokenizer()
    backend = LocalBackend(make_model("llama", vocab, positions=1024), tokenizer, model_name="llama")
    template = load_simulator_template()
    pairs = items((5, 9))
    want = asyncio.run(simulate_all_at_once_batch(pairs, SimulatorSetup(backend, template)))
    backend.capabilities = frozenset({Capability.PROMPT_LOGPROBS})
    got = asyncio.run(simulate_all_at_once_batch(pairs, SimulatorSetup(backend, template)))
    assert backend.slots.batches == 1  # only the first call used slot scoring
    for a, b in zip(got, want, strict=True):
        assert_same(a, b)


def test_a_model_the_slot_head_cannot_reproduce_falls_back() -> None:
    tokenizer, vocab = make_label_tokenizer()
    model = make_model("llama", vocab, positions=1024)
    model.config.final_logit_softcapping = 0.5  # ignored by Llama, so the batched head check fails
    backend = LocalBackend(model, tokenizer, model_name="llama")
    template = load_simulator_template()
    pairs = items((4, 6))
    got = asyncio.run(simulate_all_at_once_batch(pairs, SimulatorSetup(backend, template)))
    assert backend.slots.batches == 0
    for a, b in zip(got, one_by_one(pairs, backend, template), strict=True):
        assert_same(a, b)


def test_fallback_gives_a_failure_per_bad_pair() -> None:
    def oracle(prompt, tokens, i):  # no label at all for the "colours" explanation
        return (("x", 0.0),) if "Explanation: colours" in prompt else hashed_oracle(prompt, tokens, i)

    backend = FakeBackend(oracle=oracle)
    template = load_simulator_template()
    pairs = items((3, 4, 5))
    out = asyncio.run(simulate_all_at_once_batch(pairs, SimulatorSetup(backend, template)))
    assert isinstance(out[1], Failure) and out[1].kind == "parse" and "no activation label" in out[1].message
    assert [o.expected_values for o in (out[0], out[2])] == [s.expected_values for s in one_by_one(
        [pairs[0], pairs[2]], backend, template)]  # fmt: skip


class ScriptedSlots:
    """Slot logprobs scripted per request: a SlotError, a wrong slot token, or a fixed distribution."""

    name, model, tokenizer = "scripted", "m", None
    capabilities = frozenset({Capability.SLOT_LOGPROBS})

    async def label_logprobs(self, requests, *, label_mass=False):
        out = []
        for i, r in enumerate(requests):
            slots = len(r.slots)
            if i == 1:
                out.append(SlotError("no prompt token starts at slot 0"))
            elif i == 2:
                out.append(SlotLogprobs(((0.0,) * len(r.labels),) * slots, ("x",) * slots))
            else:
                row = tuple(0.0 if label == "4" else -1e9 for label in r.labels)
                out.append(SlotLogprobs((row,) * slots, ("unknown",) * slots))
        return out


def test_slot_errors_and_misread_slots_fail_alone() -> None:
    out = asyncio.run(
        simulate_all_at_once_batch(items((2, 3, 4, 5)), SimulatorSetup(ScriptedSlots(), load_simulator_template()))
    )
    assert [type(o).__name__ for o in out] == ["Simulation", "Failure", "Failure", "Simulation"]
    assert "expected the start of 'unknown'" in out[2].message and out[1].kind == out[2].kind == "parse"
    assert out[3].expected_values == pytest.approx([4.0] * 5) and out[3].simulator == "scripted:m"


def test_bad_input_and_missing_capabilities_raise_before_any_request() -> None:
    backend = FakeBackend(oracle=hashed_oracle)
    with pytest.raises(ValueError, match="empty excerpt"):
        asyncio.run(
            simulate_all_at_once_batch([("a", [" x"]), ("b", [])], SimulatorSetup(backend, load_simulator_template()))
        )
    assert backend.calls == []
    with pytest.raises(CapabilityError):
        asyncio.run(simulate_all_at_once_batch(items((2,)), SimulatorSetup(FakeBackend(), load_simulator_template())))
