"""The content of one neuron's page, from the rows of each table that belong to it. Pure (no I/O).

`neuron_page` returns the template's context: small server-rendered parts (header, score tables) and
`data`, the JSON the page's script draws from (token heatmaps, the activation histogram, scatters).
Activation values are rounded to about 4 significant digits of the neuron's largest |activation|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_explainer.view.data import split_of
from neuron_explainer.view.summary import rank_rows, rounded

HIST_BINS = 40
QUANTILE_LABELS = ("q50", "q90", "q99", "q99.9")
SCORE_COLUMNS = ("top_and_random", "random_only", "ablation", "ablation_random_only")


Row = dict[str, Any]


@dataclass
class NeuronTables:
    """Every table's rows for one neuron, as plain dicts (column -> value), the way pages are built fast."""

    layer: int
    """Transformer block."""
    neuron: int
    """Neuron index within the layer."""
    model: str
    """Subject model spec, for the header."""
    stats: Row
    """The neuron's `neuron_stats` row (with `density` when the table has that column)."""
    records: list[Row]
    """Its `records` rows (kind, bucket, rank, excerpt_id, max_activation, activations)."""
    tokens: dict[int, list[str]]
    """Token strings of every excerpt its records and simulations use, by excerpt id."""
    explanations: list[Row]
    """Its rows of summary.explanation_table (one per explanation and simulator)."""
    simulations: list[Row]
    """Its `simulations` rows."""
    revision_scores: list[Row]
    """Its `revision_scores` rows."""
    revision_sentences: list[Row]
    """Its `revision_sentences` rows."""
    output_tokens: list[Row] | None
    """Its `output_tokens` rows, or None when the run has no such table."""


def compact(values: Any, scale: float) -> list[float | None]:
    """Values rounded to 1e-3 of `scale` (at least), NaN as None: short JSON without losing what a tooltip shows."""
    arr = np.asarray(values, dtype=np.float64)
    decimals = 3 - math.floor(math.log10(scale)) if scale > 0 and math.isfinite(scale) else 4
    out = np.round(arr, max(decimals, 0)).tolist()
    return [None if v != v else v for v in out]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two equal-length arrays; NaN when either is constant or shorter than 2."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def boundaries(t: NeuronTables) -> list[float]:
    """The neuron's quantile boundaries as floats (empty when absent)."""
    value = t.stats.get("quantile_boundaries")
    return [] if value is None else [float(x) for x in value]


def of_kind(t: NeuronTables, kind: str, bucket: int | None = None) -> list[Row]:
    """The neuron's records of one kind (and quantile bucket), by rank."""
    rows = [r for r in t.records if r["kind"] == kind and (bucket is None or r["bucket"] == bucket)]
    return sorted(rows, key=lambda r: r["rank"])


def density_estimate(t: NeuronTables) -> float | None:
    """Fraction of tokens > 0 over the neuron's random excerpts (None without random records)."""
    arrays = [np.asarray(r["activations"]) for r in of_kind(t, "random")]
    n = sum(len(a) for a in arrays)
    return sum(int((a > 0).sum()) for a in arrays) / n if n else None


def _scale(t: NeuronTables) -> float:
    peak = max((float(np.max(np.abs(r["activations"]))) for r in t.records if len(r["activations"])), default=0.0)
    return peak if peak > 0 else 1.0


def _record_items(rows: list[Row], scale: float) -> list[Row]:
    items = []
    for r in rows:
        split = split_of(r["kind"], int(r["rank"]))
        label = f"#{int(r['rank']) + 1} · excerpt {int(r['excerpt_id'])} · max {r['max_activation']:.3g}"
        values = [{"n": "activation", "v": compact(r["activations"], scale), "s": scale}]
        items.append({"id": int(r["excerpt_id"]), "label": label + (f" · {split}" if split else ""), "rows": values})
    return items


def record_groups(t: NeuronTables, scale: float) -> dict[str, Row]:
    """Heatmap groups: top excerpts, each quantile bucket, random excerpts (in that order)."""
    groups = {"top": {"title": "Top-activating excerpts", "items": _record_items(of_kind(t, "top"), scale)}}
    bounds = boundaries(t)
    buckets = sorted({int(r["bucket"]) for r in t.records if r["kind"] == "quantile"})
    for b in buckets:
        lo = f"{bounds[b - 1]:.3g}" if 0 < b <= len(bounds) else "−∞"
        hi = f"{bounds[b]:.3g}" if b < len(bounds) else "∞"
        title = f"Quantile bucket {b}: excerpt max in [{lo}, {hi})"
        groups[f"q{b}"] = {"title": title, "items": _record_items(of_kind(t, "quantile", b), scale)}
    groups["random"] = {"title": "Random excerpts", "items": _record_items(of_kind(t, "random"), scale)}
    return groups


def activation_histogram(t: NeuronTables) -> Row:
    """Log-count histogram of token activations: random-excerpt tokens (unbiased) and top-excerpt tokens."""
    lo, hi = float(t.stats["min_activation"]), float(t.stats["max_activation"])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, HIST_BINS + 1)
    series = []
    for kind, name in (("random", "random excerpts"), ("top", "top excerpts")):
        arrays = [np.asarray(r["activations"], dtype=np.float64) for r in t.records if r["kind"] == kind]
        values = np.concatenate(arrays) if arrays else np.zeros(0)
        counts, _ = np.histogram(np.clip(values, lo, hi), bins=edges)
        series.append({"name": name, "counts": counts.tolist(), "n": int(len(values))})
    marks = [{"x": rounded(x), "label": label} for x, label in zip(boundaries(t), QUANTILE_LABELS, strict=False)]
    return {"edges": [rounded(e) for e in edges], "series": series, "marks": marks, "mean": rounded(t.stats["mean"])}


def _simulation_panel(t: NeuronTables, row: Row, key: str, scale: float) -> tuple[Row, Row] | None:
    sims = [
        s
        for s in t.simulations
        if s["explanation_id"] == row["explanation_id"] and s["simulator"] == row["simulator"] and s["split"] == "valid"
    ]
    if not sims:
        return None
    truth = {int(r["excerpt_id"]): r["activations"] for r in t.records}
    offset = 1 if row["view"] == "next_token" else 0
    max_level = int(sims[0]["max_level"])
    sim_scale = float(max_level) if max_level > 0 else scale  # baselines predict in activation units
    items, true_all, sim_all = [], [], []
    for s in sorted(sims, key=lambda s: (s["record_kind"] != "top", s["excerpt_id"])):
        acts = np.asarray(truth.get(int(s["excerpt_id"]), []), dtype=np.float64)
        acts = acts[: len(acts) - offset] if offset else acts
        sim = np.asarray(s["expected_values"], dtype=np.float64)
        if len(acts) != len(sim):
            continue  # a record this run no longer holds: nothing to compare against
        r = pearson(acts, sim)
        true_all.append(acts)
        sim_all.append(sim)
        values = [
            {"n": "true", "v": compact(acts, scale), "s": scale},
            {"n": "simulated", "v": compact(sim, sim_scale), "s": sim_scale},
        ]
        label = f"{s['record_kind']} · excerpt {int(s['excerpt_id'])} · r = " + ("undefined" if r != r else f"{r:.2f}")
        items.append({"id": int(s["excerpt_id"]), "o": offset, "label": label, "rows": values, "r": rounded(r)})
    slope, intercept = rounded(sims[0]["calibration_slope"]), rounded(sims[0]["calibration_intercept"])
    meta = {
        "key": key,
        "explanation": row["explanation"],
        "simulator": row["simulator"],
        "scores": {c: rounded(row[c]) for c in SCORE_COLUMNS},
        "n_excerpts": len(items),
        "n_tokens": int(sum(len(a) for a in true_all)),
        "pooled_r": rounded(pearson(np.concatenate(true_all), np.concatenate(sim_all))) if true_all else None,
        "calibration": None if slope is None else {"slope": slope, "intercept": intercept},
        "max_level": max_level,
    }
    return {"title": f"Simulation vs truth: {row['explanation']}", "items": items}, meta


ARM_ORDER = {"original": 0, "revised": 1, "reexplain": 2, "random_revision": 3}


def revision_tables(t: NeuronTables) -> list[Row]:
    """Revision arms per original explanation: arm, explanation, simulator, score on each scoring set."""
    arms: dict[tuple, Row] = {}
    for r in t.revision_scores:
        key = (r["original_explanation_id"], r["arm"], r["explanation"], r["simulator"])
        arm = arms.setdefault(
            key, {"original": key[0], "arm": key[1], "explanation": key[2], "simulator": key[3],
                  "original_set": None, "extended_set": None}
        )  # fmt: skip
        if r["scorer"] in ("original_set", "extended_set"):
            arm[r["scorer"]] = rounded(r["correlation"])
    return sorted(arms.values(), key=lambda a: (a["original"], ARM_ORDER.get(a["arm"], 9), a["explanation"]))


def sentence_groups(t: NeuronTables, scale: float) -> dict[str, Row]:
    """The revision test sentences of each original explanation, as heatmap groups keyed `sent<i>`."""
    by_expl: dict[str, list[Row]] = {}
    for s in t.revision_sentences:
        by_expl.setdefault(s["explanation_id"], []).append(s)
    groups = {}
    for i, eid in enumerate(sorted(by_expl)):
        items = []
        for s in sorted(by_expl[eid], key=lambda s: s["sentence_idx"]):
            label = f"sentence {int(s['sentence_idx'])} · {s['split']} · level {int(s['max_level'])}"
            items.append(
                {
                    "t": list(s["tokens"]),
                    "label": label + (" · false positive" if s["false_positive"] else ""),
                    "rows": [{"n": "activation", "v": compact(s["activations"], scale), "s": scale}],
                }
            )
        groups[f"sent{i}"] = {"title": f"Test sentences written from explanation {eid}", "items": items}
    return groups


def output_token_lists(t: NeuronTables) -> dict[str, list[Row]] | None:
    """Tokens the neuron's output weights promote (top) and suppress (bottom), by rank; None without the table."""
    if t.output_tokens is None:
        return None
    out: dict[str, list[Row]] = {"top": [], "bottom": []}
    for r in sorted(t.output_tokens, key=lambda r: r["rank"]):
        out["top" if r["sign"] > 0 else "bottom"].append({"token": str(r["token"]), "value": rounded(r["value"])})
    return out


def neuron_page(t: NeuronTables) -> dict[str, Any]:
    """Template context of one neuron page: header fields, tables, and `data` for the page script."""
    scale = _scale(t)
    groups = record_groups(t, scale)
    ranked = rank_rows(t.explanations)
    sims = []
    for k, row in enumerate(ranked):
        panel = _simulation_panel(t, row, f"sim{k}", scale)
        if panel is not None:
            groups[panel[1]["key"]] = panel[0]
            sims.append(panel[1])
    sentence = sentence_groups(t, scale)
    groups.update(sentence)
    used = {item["id"] for g in groups.values() for item in g["items"] if "id" in item}
    density, estimated = t.stats.get("density"), False
    if density is None or density != density:
        density, estimated = density_estimate(t), True
    explanations = [
        {
            **{c: r[c] for c in ("explanation", "explainer", "prompt_version", "simulator", "view")},
            **{c: int(r[c]) for c in ("round", "sample_idx")},
            **{c: rounded(r[c]) for c in SCORE_COLUMNS},
            "baseline": bool(r["baseline"]),
        }
        for r in ranked
    ]
    return {
        "layer": t.layer,
        "neuron": t.neuron,
        "model": t.model,
        "explanations": explanations,
        "stats": {
            "max": rounded(t.stats["max_activation"]),
            "min": rounded(t.stats["min_activation"]),
            "mean": rounded(t.stats["mean"]),
            "variance": rounded(t.stats["variance"]),
            "count": int(t.stats["count"]),
            "density": rounded(density),
            "density_estimated": estimated,
            "n_random_tokens": sum(len(r["activations"]) for r in of_kind(t, "random")),
        },
        "sims": sims,
        "revisions": revision_tables(t),
        "sentence_keys": list(sentence),
        "output_tokens": output_token_lists(t),
        "group_keys": [k for k in groups if k == "top" or k == "random" or k.startswith("q")],
        "data": {
            "ex": {str(i): t.tokens[i] for i in sorted(used) if i in t.tokens},
            "groups": groups,
            "hist": activation_histogram(t),
            "scatter": {m["key"]: {"cal": m["calibration"], "max_level": m["max_level"]} for m in sims},
        },
    }
