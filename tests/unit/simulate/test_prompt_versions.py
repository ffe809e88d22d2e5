"""Every simulation method reads the configured prompt version from the configured prompts directory."""

import shutil
from pathlib import Path

import pytest

from neuron_explainer.errors import ConfigError
from neuron_explainer.prompts.templates import DEFAULT_PROMPTS_DIR, load_simulator_template
from neuron_explainer.simulate.logprob_free import build_logprob_free_messages
from neuron_explainer.simulate.one_at_a_time import build_one_at_a_time_prompt


@pytest.fixture
def prompts_v2(tmp_path: Path) -> Path:
    """A prompts directory whose simulator version v2 has its own one-at-a-time and logprob-free intros."""
    root = tmp_path / "prompts"
    (root / "simulator").mkdir(parents=True)
    shutil.copy(DEFAULT_PROMPTS_DIR / "simulator" / "fewshot_v1.yaml", root / "simulator" / "fewshot_v2.yaml")
    shutil.copy(DEFAULT_PROMPTS_DIR / "simulator" / "all_at_once_v1.md", root / "simulator" / "all_at_once_v2.md")
    (root / "simulator" / "one_at_a_time_v2.md").write_text("V2 ONE AT A TIME: levels 0 to {max_level}.")
    (root / "simulator" / "logprob_free_v2.md").write_text("V2 LOGPROB FREE: levels 0 to {max_level}.")
    # v3 has only the all-at-once template
    shutil.copy(DEFAULT_PROMPTS_DIR / "simulator" / "fewshot_v1.yaml", root / "simulator" / "fewshot_v3.yaml")
    shutil.copy(DEFAULT_PROMPTS_DIR / "simulator" / "all_at_once_v1.md", root / "simulator" / "all_at_once_v3.md")
    return root


def test_one_at_a_time_and_logprob_free_use_the_configured_version(prompts_v2: Path) -> None:
    template = load_simulator_template(str(prompts_v2), "v2")
    prompt = build_one_at_a_time_prompt(template, "cats", [" a", " cat"], 1, max_level=9)
    assert prompt.startswith("V2 ONE AT A TIME: levels 0 to 9.")
    messages = build_logprob_free_messages(template, "cats", [" a", " cat"], max_level=9)
    assert messages[0].content == "V2 LOGPROB FREE: levels 0 to 9."
    default = load_simulator_template()
    assert not build_one_at_a_time_prompt(default, "cats", [" a"], 0).startswith("V2")


def test_a_version_without_the_method_template_is_a_clear_error(prompts_v2: Path) -> None:
    template = load_simulator_template(str(prompts_v2), "v3")
    with pytest.raises(ConfigError, match="no one_at_a_time_v3.md"):
        build_one_at_a_time_prompt(template, "cats", [" a"], 0)
    with pytest.raises(ConfigError, match="no logprob_free_v3.md"):
        build_logprob_free_messages(template, "cats", [" a"])
