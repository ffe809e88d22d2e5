import asyncio
import math

import pytest

from neuron_explainer.llm.base import CapabilityError, TokenLogprobs
from neuron_explainer.llm.fake import FakeBackend
from neuron_explainer.prompts.formatting import normalize_activations
from neuron_explainer.prompts.templates import load_simulator_template
from neuron_explainer.scoring.correlation import score_correlation
from neuron_explainer.simulate.parse import (
    SimulationParseError,
    build_all_at_once_prompt,
    read_label_distributions,
    rescale_level,
)
from neuron_explainer.simulate.simulator import SimulatorSetup, simulate_all_at_once

TOKENS = [" The", " cat", "\n", "sat", "\t", ""]


def test_golden_all_at_once_prompt(golden) -> None:
    template = load_simulator_template()
    prompt = build_all_at_once_prompt(template, "cats and other small animals", TOKENS, max_level=10)
    golden("simulator_all_at_once_v1", prompt.text)
    golden("simulator_all_at_once_v1_max9", build_all_at_once_prompt(template, "cats", TOKENS, max_level=9).text)
    assert len(prompt.slots) == len(TOKENS)
    for slot in prompt.slots:
        assert prompt.text[slot : slot + len("unknown")] == "unknown" and prompt.text[slot - 1] == "\t"


def test_rescale_level() -> None:
    assert [rescale_level(v, 9) for v in (0, 1, 2, 5, 9, 10)] == [0, 1, 2, 4, 8, 9]
    assert [rescale_level(v, 10) for v in range(11)] == list(range(11))


def oracle_for(levels: list[int]):
    """Fake logprobs: at the token before the n-th target slot, all mass on levels[n]."""

    def oracle(prompt, tokens, i):
        target_start = prompt.rfind("<start>\n")
        if i + 1 < len(tokens) and tokens[i + 1][0] == "unknown" and tokens[i + 1][1] > target_start:
            n = sum(1 for tok, off in tokens[: i + 1] if tok == "unknown" and off > target_start)
            return ((str(levels[n]), 0.0), ("unknown", -3.0))
        return (("x", 0.0),)

    return oracle


def test_fake_simulator_on_true_levels_scores_one() -> None:
    acts = [[0.0, 0.2, 3.0, 0.1, 0.0, 1.5], [0.0, 0.0, 0.4, 2.9, 0.0, 0.0]]
    top = max(max(a) for a in acts)
    sims = []
    for a in acts:
        levels = normalize_activations(a, top)
        fake = FakeBackend(oracle=oracle_for(levels))
        sim = asyncio.run(
            simulate_all_at_once(
                "x", ["a", "b", "c", "d", "e", "f"], SimulatorSetup(fake, load_simulator_template(), 10)
            )
        )
        assert sim.expected_values == [float(v) for v in levels]
        sims.append(sim.expected_values)
    assert score_correlation([normalize_activations(a, top) for a in acts], sims).correlation == pytest.approx(1.0)


def test_expected_value_renormalises_over_labels() -> None:
    prompt = build_all_at_once_prompt(load_simulator_template(), "x", ["a"], max_level=10)
    slot = prompt.slots[0]
    lp = [
        TokenLogprobs("a", slot - 2, ()),
        TokenLogprobs(
            "\t",
            slot - 1,
            (("unknown", math.log(0.5)), ("2", math.log(0.3)), (" 4", math.log(0.1)), ("11", math.log(0.1))),
        ),
        TokenLogprobs("unknown", slot, ()),
    ]
    dist = read_label_distributions(prompt, lp)
    assert dist.values == ((2, 4),) and dist.probabilities[0] == pytest.approx((0.75, 0.25))
    assert dist.expected_values[0] == pytest.approx(2.5)


def test_misaligned_or_label_free_logprobs_fail_loudly() -> None:
    prompt = build_all_at_once_prompt(load_simulator_template(), "x", ["a"], max_level=10)
    slot = prompt.slots[0]
    fused = [TokenLogprobs("a", slot - 2, (("0", 0.0),)), TokenLogprobs("\tunknown", slot - 1, ())]
    with pytest.raises(SimulationParseError, match="do not align"):
        read_label_distributions(prompt, fused)
    no_label = [TokenLogprobs("\t", slot - 1, (("unknown", 0.0),)), TokenLogprobs("unknown", slot, ())]
    with pytest.raises(SimulationParseError, match="no activation label"):
        read_label_distributions(prompt, no_label)
    shifted = [TokenLogprobs("\t", slot - 1, (("5", 0.0),)), TokenLogprobs("5", slot, ())]
    with pytest.raises(SimulationParseError, match="expected the start of 'unknown'"):
        read_label_distributions(prompt, shifted)


def test_chat_only_backend_is_refused_before_any_request() -> None:
    fake = FakeBackend()
    with pytest.raises(CapabilityError):
        asyncio.run(simulate_all_at_once("x", ["a"], SimulatorSetup(fake, load_simulator_template())))
    assert fake.calls == []


def test_label_distribution_ignores_digits_that_are_not_labels() -> None:
    from neuron_explainer.simulate.parse import label_distribution

    # Gemma's vocabulary has '²' and '٣': str.isdigit() says yes, int() refuses or reads another label
    values, probs, expected = label_distribution([("²", -0.1), ("٣", -0.2), (" 7", -0.5), ("3", -1.0)], 10, "t")
    assert values == (3, 7) and expected == pytest.approx((3 * math.exp(-1.0) + 7 * math.exp(-0.5))
                                                          / (math.exp(-1.0) + math.exp(-0.5)))  # fmt: skip
