"""Terminal renderings: neurons with their top excerpts, score and revision tables. Pure: data in, text out."""

from __future__ import annotations

from typing import Any

from neuron_explainer.datatypes import ActivationRecord, NeuronRecord
from neuron_explainer.prompts.formatting import normalize_activations


def render_record(record: ActivationRecord, max_activation: float, width: int = 0) -> str:
    """One excerpt on one line, each token with a non-zero 0-10 activation followed by ⟨n⟩."""
    levels = normalize_activations(record.activations, max_activation)
    parts = []
    for token, level in zip(record.tokens, levels, strict=True):
        token = token.replace("\n", "⏎").replace("\t", "⇥")
        parts.append(f"{token}⟨{level}⟩" if level else token)
    text = "".join(parts)
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def render_neuron(record: NeuronRecord, n_top: int = 3, width: int = 0) -> str:
    """Header with statistics, then the top excerpts."""
    top = record.most_positive_activation_records[:n_top]
    max_act = max((max(r.activations) for r in top), default=0.0)
    nid = record.neuron_id
    lines = [
        f"layer {nid.layer_index} neuron {nid.neuron_index}: max {max_act:.3g}, mean {record.mean:.3g}, "
        f"var {record.variance:.3g}, skew {record.skewness:.3g}, kurtosis {record.kurtosis:.3g}"
    ]
    for i, r in enumerate(top):
        lines.append(f"  top {i + 1} (max {max(r.activations):.3g}): {render_record(r, max_act, width)}")
    return "\n".join(lines)


def pick_neurons(run_dir: str, manifest: dict[str, Any], count: int) -> list[tuple[int, int]]:
    """A few neurons spread over the harvested layers: the highest-kurtosis neuron of each."""
    import pyarrow.parquet as pq

    from neuron_explainer.records.store import RunStore

    layers = manifest["harvest"]["layers"]
    store = RunStore(run_dir)
    picks = []
    step = max(1, len(layers) // max(count, 1))
    for layer in layers[::step][:count]:
        table = pq.read_table(store.stats_path(layer), columns=["neuron", "kurtosis"]).to_pandas()
        picks.append((layer, int(table.sort_values("kurtosis", ascending=False).iloc[0]["neuron"])))
    return picks


def fmt_score(value: float) -> str:
    """A score with 3 decimals, or `undefined` for NaN."""
    return "undefined" if value != value else f"{value:.3f}"


def explainer_labels(specs: Any) -> dict[str, str]:
    """Short names for explainer specs in tables.

    `baseline:lookup` -> `lookup`; one LLM explainer -> `LLM`; several -> their model names
    (`local:builtin:smollm2-135m-instruct` -> `smollm2-135m-instruct`).
    """
    llms = sorted({s for s in specs if not s.startswith("baseline:")})
    labels = {s: s.split(":", 1)[1] for s in specs if s.startswith("baseline:")}
    for spec in llms:
        labels[spec] = "LLM" if len(llms) == 1 else spec.split("@", 1)[0].rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    return labels


def score_table(title: str, summary: Any) -> Any:
    """A rich table of the score summary (stages/score.py `summary`), with ablation columns if any exist.

    Per neuron, LLM explanations come first and baselines after; the caption gives each explainer's mean
    top-and-random score, so a weak explainer can be told from a broken scorer.
    """
    from rich.table import Table

    ablation = summary[["ablation_top_and_random", "ablation_random_only"]].notna().any().any()
    labels = explainer_labels(set(summary.explainer))
    rows = summary.assign(
        by=summary.explainer.map(labels), baseline=summary.explainer.str.startswith("baseline:")
    ).sort_values(["layer", "neuron", "baseline", "by"], kind="stable")
    means = rows.groupby(["baseline", "by"]).top_and_random.mean()
    caption = "mean top-and-random: " + ", ".join(f"{by} {fmt_score(m)}" for (_, by), m in means.items())
    caption += "".join(f"; LLM = {spec}" for spec, label in labels.items() if label == "LLM")
    table = Table(title=title + (", ablation)" if ablation else ")"), caption=caption if len(rows) else None)
    cols = ["neuron", "by", "explanation", "top-and-random", "random-only"]
    cols += ["ablation top-and-random", "ablation random-only"] if ablation else []
    for col in cols:
        table.add_column(col, justify="right" if "random" in col else "left")
    for row in rows.itertuples():
        cells = [
            f"{row.layer}:{row.neuron}",
            row.by,
            row.explanation.split(": ", 1)[-1] if row.baseline else row.explanation,  # baselines: the tokens
            fmt_score(row.top_and_random),
            fmt_score(row.random_only),
        ]
        if ablation:
            cells += [fmt_score(row.ablation_top_and_random), fmt_score(row.ablation_random_only)]
        table.add_row(*cells)
    return table


def revision_table(title: str, scores: Any) -> Any:
    """A rich table of revision scores: one row per original explanation and arm."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("neuron", "arm", "explanation", "original set", "extended set"):
        table.add_column(col, justify="right" if "set" in col else "left")
    wide = scores.pivot(
        index=["layer", "neuron", "original_explanation_id", "arm", "explanation"],
        columns="scorer",
        values="correlation",
    ).reset_index()
    for row in wide.sort_values(["layer", "neuron", "original_explanation_id"]).itertuples():
        table.add_row(
            f"{row.layer}:{row.neuron}",
            row.arm,
            row.explanation,
            fmt_score(row.original_set),
            fmt_score(row.extended_set),
        )
    return table
