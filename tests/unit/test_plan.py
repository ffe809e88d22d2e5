"""`run --dry-run`: the gpt2-xl plan's numbers follow from the config."""

from pathlib import Path

import pytest

from neuron_explainer.config import RunConfig, load_config
from neuron_explainer.datatypes import ActivationRecord
from neuron_explainer.errors import ConfigError
from neuron_explainer.explain.explainer import build_explainer_messages
from neuron_explainer.plan import N_CALIBRATION, N_VALID, format_plan, make_plan, model_shape
from neuron_explainer.prompts.templates import load_explainer_template, load_simulator_template
from neuron_explainer.simulate.parse import build_all_at_once_prompt

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_gpt2_xl_plan_arithmetic() -> None:
    cfg = load_config(CONFIGS / "gpt2-xl.yaml", [])
    layers, neurons, source = model_shape(cfg)  # gpt2-xl's config is not cached here: model_shape is used
    assert (layers, neurons) == (48, 6400) and "model_shape" in source
    plan = make_plan(cfg, layers, neurons, source)
    assert plan.selected == 48 * 6400 == 307_200
    assert plan.harvest_tokens == 50_000 * 64
    explain, simulate = plan.stages
    assert explain.calls == 307_200 and explain.completion_tokens == 307_200 * cfg.explain.max_tokens
    assert simulate.calls == 307_200 * (N_VALID + N_CALIBRATION) == 6_144_000
    # token counts: the real v1 templates rendered around 64 placeholder tokens, 4 characters a token,
    # counted here independently of the plan's code path
    sim_text = build_all_at_once_prompt(load_simulator_template(), "a placeholder explanation", [" word"] * 64).text
    assert simulate.prompt_tokens == simulate.calls * (len(sim_text) // 4)
    assert 400 < len(sim_text) // 4 < 3000  # a few-shot prefix plus one 64-token excerpt
    records = [ActivationRecord(tokens=[" word"] * 64, activations=[float(i % 7 == 0) for i in range(64)])] * 5
    messages = build_explainer_messages(load_explainer_template(), records)
    assert explain.prompt_tokens == 307_200 * sum(len(m.content) // 4 for m in messages)
    text = format_plan(cfg, plan)
    assert "307,200" in text and "6,144,000 LLM calls" in text
    # 6,144,000 calls at the configured 20 calls/s
    assert f"{6_144_000 / 20 / 86400:.1f} days" in text


def test_plan_with_revision_prices_and_a_sample() -> None:
    cfg = load_config(
        CONFIGS / "gpt2-xl.yaml",
        ["neurons=sample:1000", "revise.enabled=true", "simulate.calibrate=false", "explain.n_samples=2"],
    )
    cfg = RunConfig.model_validate(
        {**cfg.model_dump(), "prices": {cfg.explain.explainer: {"prompt": 2.0, "completion": 8.0}}}
    )
    plan = make_plan(cfg, 48, 6400, "test")
    explain, simulate, revise = plan.stages
    assert explain.calls == 1000 and simulate.calls == 2000 * N_VALID
    assert revise.units == 2000 and revise.calls == 2000 * (1 + 3) + 2000 * (3 * (N_VALID + 5) + 5)
    text = format_plan(cfg, plan)
    cost = explain.prompt_tokens * 2.0 / 1e6 + explain.completion_tokens * 8.0 / 1e6
    assert f"${cost:,.2f}" in text


def test_model_shape_comes_from_a_readable_config_and_must_agree(tiny_model_dirs) -> None:
    model = str(tiny_model_dirs["gpt2"])
    assert model_shape(load_config(None, [f"harvest.model={model}"]))[:2] == (2, 128)
    cfg = load_config(None, [f"harvest.model={model}", "model_shape.n_layers=5", "model_shape.n_neurons=7"])
    with pytest.raises(ConfigError, match="disagrees"):
        model_shape(cfg)
