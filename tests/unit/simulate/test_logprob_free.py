import asyncio

import pytest

from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.prompts.templates import load_simulator_template
from neuron_explainer.simulate.logprob_free import build_logprob_free_messages, parse_levels, simulate_logprob_free
from neuron_explainer.simulate.parse import SimulationParseError
from neuron_explainer.simulate.simulator import SimulatorSetup


def test_golden_logprob_free_prompt(golden) -> None:
    msgs = build_logprob_free_messages(load_simulator_template(), "the word cat", [" The", " cat", "\n"], 10)
    golden("simulator_logprob_free_v1", "".join(f"=== {m.role}\n{m.content}\n" for m in msgs))


def test_parse_levels_accepts_only_well_formed_answers() -> None:
    assert parse_levels("Sure: [0, 10, 2.5]", 3, 10) == [0.0, 10.0, 2.5]
    for text, match in [
        ("no array", "no JSON array"),
        ("[0, 1]", "2 values for 3"),
        ("[0, 11, 2]", "not a number"),
        ('[0, "a", 2]', "not a number"),
        ("[0, true, 1]", "not a number"),
        ("[0, 1,, 2]", "unparseable"),
    ]:
        with pytest.raises(SimulationParseError, match=match):
            parse_levels(text, 3, 10)


def test_simulate_logprob_free_with_fake_backend() -> None:
    fake = FakeBackend(completions=("[0, 9, 0]", "[1, 2]"))
    sim = asyncio.run(
        simulate_logprob_free("cats", [" The", " cat", "."], SimulatorSetup(fake, load_simulator_template()))
    )
    assert sim.expected_values == [0.0, 9.0, 0.0] and sim.prompt_version == "simulator/logprob_free_v1"
    ((_, (_, params)),) = fake.calls
    assert params.temperature == 0.0
    with pytest.raises(SimulationParseError):  # malformed: a failure, never zeros
        asyncio.run(
            simulate_logprob_free("cats", [" The", " cat", "."], SimulatorSetup(fake, load_simulator_template()))
        )
