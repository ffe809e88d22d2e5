"""Config loading: typed overrides, no base-60 surprises, one-line errors that name the key."""

from pathlib import Path

import pytest

from neuron_explainer.config import load_config, parse_set_options
from neuron_explainer.errors import ConfigError


def test_set_options_are_typed_by_the_field_they_set() -> None:
    typed = parse_set_options(
        [
            "neurons=12:34",
            "harvest.layers=[0, 5]",
            "harvest.n_excerpts=500",
            "llm.cache=false",
            "simulate.max_level=null",
        ]
    )
    assert typed == {"neurons": "12:34", "harvest.layers": [0, 5], "harvest.n_excerpts": 500, "llm.cache": False,
                     "simulate.max_level": None}  # fmt: skip
    # a text field takes the text as written, even when it looks like YAML
    assert parse_set_options(["explain.explainer=openai:gpt-4o@http://x:8000/v1"])["explain.explainer"] == (
        "openai:gpt-4o@http://x:8000/v1"
    )
    cfg = load_config(None, ["neurons=12:34", "harvest.layers=[0, 5]"])
    assert cfg.neurons == "12:34" and cfg.harvest.layers == [0, 5]


def test_unquoted_neuron_specs_in_yaml_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "neurons: 5:12\nharvest:\n  n_excerpts: 1_000\n  seed: 0x10\n  layers: [1, 2]\nexplain:\n  temperature: 0.5\n"
    )
    cfg = load_config(path)
    assert cfg.neurons == "5:12" and cfg.harvest.n_excerpts == 1000 and cfg.harvest.seed == 16
    assert cfg.explain.temperature == 0.5


def test_flags_win_over_set_and_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("neurons: 1:1\n")
    assert load_config(path, {"neurons": "2:2"}).neurons == "2:2"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["harvest.n_excerpt=5"], "unknown config key 'harvest.n_excerpt' \\(did you mean 'n_excerpts'\\?\\)"),
        (["max_concurrent=4"], "has moved: set 'llm.max_in_flight' instead"),
        (["harvest.n_excerpts=0"], "harvest.n_excerpts: Input should be greater than or equal to 1 \\(got 0\\)"),
        (["harvest.layers=[1, 1]"], "duplicates"),
        (["harvest.n_excerpts"], "must look like section.key=value"),
        (["harvest.layers=[1,"], "not valid YAML"),
        (["score.scorers=[best]"], "scorers must be a non-empty list"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value) and "errors.pydantic.dev" not in str(info.value)


def test_moved_keys_in_a_file_say_where_they_went(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("llm_device: cuda\n")
    with pytest.raises(ConfigError, match="'llm_device' .* has moved: set 'llm.device' instead"):
        load_config(path)
