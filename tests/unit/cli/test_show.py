"""The terminal score table: LLM explanations before baselines per neuron, short labels, per-explainer means."""

from __future__ import annotations

import pandas as pd
from rich.console import Console

from neuron_explainer.cli.show import explainer_labels, score_table

LLM = "local:builtin:smollm2-135m-instruct"


def summary_frame() -> pd.DataFrame:
    rows = [
        (2, 7, "baseline:weights", "the tokens it responds to from its weights alone: ' loss'", 0.6, 0.2),
        (2, 7, LLM, "words about losing", 0.1, float("nan")),
        (1, 3, "baseline:lookup", "the tokens with the highest mean activation on held-out text: ' morning'", 0.8, 0.4),
        (1, 3, LLM, "words about the House", -0.1, 0.3),
    ]
    frame = pd.DataFrame(rows, columns=["layer", "neuron", "explainer", "explanation", "top_and_random", "random_only"])
    frame["ablation_top_and_random"] = frame["ablation_random_only"] = float("nan")
    return frame


def render(table) -> str:  # noqa: ANN001
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_labels_name_one_llm_plainly_and_several_by_model() -> None:
    assert explainer_labels({LLM, "baseline:lookup"}) == {LLM: "LLM", "baseline:lookup": "lookup"}
    two = explainer_labels({LLM, "openai:gpt-4o@http://h:8000/v1"})
    assert two == {LLM: "smollm2-135m-instruct", "openai:gpt-4o@http://h:8000/v1": "gpt-4o"}


def test_score_table_orders_rows_and_states_each_explainers_mean() -> None:
    text = render(score_table("scores (valid split; correlation", summary_frame()))
    lines = [line for line in text.splitlines() if line.startswith("│ ")]
    assert [line.split("│")[1].strip() + " " + line.split("│")[2].strip() for line in lines] == [
        "1:3 LLM",
        "1:3 lookup",
        "2:7 LLM",
        "2:7 weights",
    ]
    assert "held-out text" not in text and "' morning'" in text  # baselines show their tokens only
    assert "undefined" in text  # NaN is never printed as a number
    caption = " ".join(text.split())  # the caption wraps to the table's width
    assert f"mean top-and-random: LLM 0.000, lookup 0.800, weights 0.600; LLM = {LLM}" in caption
