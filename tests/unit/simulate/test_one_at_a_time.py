import asyncio
import math

import pytest

from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.prompts.templates import load_simulator_template
from neuron_explainer.simulate.one_at_a_time import build_one_at_a_time_prompt, simulate_one_at_a_time
from neuron_explainer.simulate.parse import SimulationParseError
from neuron_explainer.simulate.simulator import SimulatorSetup


def test_golden_one_at_a_time_prompt(golden) -> None:
    prompt = build_one_at_a_time_prompt(load_simulator_template(), "the word cat", [" The", " cat", " sat"], 1, 9)
    golden("simulator_one_at_a_time_v1", prompt)
    assert prompt.endswith('Text: " The cat"\nLast token: " cat"\nActivation:')  # sees tokens up to 1 only


def test_one_request_per_token_and_expected_values() -> None:
    def oracle(prompt, tokens, i):
        if i != len(tokens) - 1:
            return (("x", 0.0),)
        target = prompt.rsplit("Explanation:", 1)[1]
        return ((" 4", math.log(0.5)), ("8", math.log(0.5))) if 'Last token: " cat"' in target else (("0", 0.0),)

    fake = FakeBackend(oracle=oracle)
    sim = asyncio.run(
        simulate_one_at_a_time("cats", [" The", " cat", "."], SimulatorSetup(fake, load_simulator_template(), 10))
    )
    assert sim.expected_values == [0.0, 6.0, 0.0] and len(fake.calls) == 3


def test_no_label_is_a_failure() -> None:
    fake = FakeBackend(oracle=lambda prompt, tokens, i: (("maybe", 0.0),))
    with pytest.raises(SimulationParseError, match="no activation label"):
        asyncio.run(simulate_one_at_a_time("cats", [" The"], SimulatorSetup(fake, load_simulator_template(), 10)))
