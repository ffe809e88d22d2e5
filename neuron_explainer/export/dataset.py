"""Export a run as a publishable dataset: one Parquet file per table, JSON Schemas and a dataset card.

    dataset/
      README.md                    dataset card: provenance, methods, score summaries by layer, loading
      data/<table>.parquet         excerpts, records, neuron_stats, explanations, simulations, scores,
                                   ablation_scores, revision_sentences, revision_scores (those present)
      schemas/<table>.schema.json  JSON Schema of one row of each table
      manifest.json                the run's provenance manifest, as harvested

Every Parquet file carries its table description in the schema metadata, so a file read on its own
still says what it holds. Loads with `datasets.load_dataset("parquet", data_files=...)`, pandas, DuckDB.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from neuron_explainer import __version__
from neuron_explainer.errors import RunDirError
from neuron_explainer.records import schema as S
from neuron_explainer.records.store import RunStore

DESCRIPTIONS = {
    "excerpts": "Every harvested excerpt once: token ids and decoded token strings.",
    "records": "Kept excerpts per neuron (kind top / random / quantile) with the neuron's activation per token.",
    "neuron_stats": "Per-neuron statistics over every harvested token (mean, variance, skewness, kurtosis, ...).",
    "explanations": "One row per explanation of a neuron (LLM explainers, revision rounds, baselines).",
    "simulations": "Simulated activations per explanation and excerpt (valid, calibration splits) and calibration.",
    "scores": "Correlation scores per explanation and scorer (top_and_random, random_only).",
    "ablation_scores": "Ablation scores: 1 - E[AvgJSD(simulation)] / E[AvgJSD(mean)] per explanation and scorer.",
    "revision_sentences": "Test sentences written from explanations, with the subject model's real activations.",
    "revision_scores": "Scores of original and revised explanations on the original and extended scoring sets.",
}
STAGE_SCHEMAS = {
    "explanations": S.EXPLANATIONS,
    "simulations": S.SIMULATIONS,
    "scores": S.SCORES,
    "ablation_scores": S.ABLATION_SCORES,
    "revision_sentences": S.REVISION_SENTENCES,
    "revision_scores": S.REVISION_SCORES,
}


def _json_type(t: pa.DataType) -> dict[str, Any]:
    if pa.types.is_dictionary(t):
        return _json_type(t.value_type)
    if pa.types.is_integer(t):
        return {"type": "integer"}
    if pa.types.is_floating(t):
        return {"type": "number"}
    if pa.types.is_boolean(t):
        return {"type": "boolean"}
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return {"type": "string"}
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        out: dict[str, Any] = {"type": "array", "items": _json_type(t.value_type)}
        if pa.types.is_fixed_size_list(t):
            out["minItems"] = out["maxItems"] = t.list_size
        return out
    raise TypeError(f"no JSON Schema type for Arrow type {t}")


def json_schema(name: str, schema: pa.Schema) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one row of a table."""
    props = {}
    for f in schema:
        t = _json_type(f.type)
        if f.nullable:
            t = {"anyOf": [t, {"type": "null"}]}
        props[f.name] = t
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": name,
        "description": DESCRIPTIONS.get(name, ""),
        "type": "object",
        "properties": props,
        "required": [f.name for f in schema],
        "additionalProperties": False,
    }


def _read_dir(path: Path, schema: pa.Schema | None = None) -> pa.Table | None:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else []
    if not files:
        return None
    try:
        return ds.dataset([str(f) for f in files], schema=schema, format="parquet").to_table()
    except (pa.ArrowInvalid, OSError) as e:
        raise RunDirError(f"cannot read {path}: {e}") from e


def _sorted(table: pa.Table) -> pa.Table:
    keys = [k for k in ("layer", "neuron", "excerpt_id", "explanation_id") if k in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys]) if keys else table


def _summary_by_layer(out: Path) -> str:
    scores_path = out / "data" / "scores.parquet"
    if not scores_path.exists():
        return "No explanations were scored in this run.\n"
    scores = pd.read_parquet(scores_path)
    wide = scores.pivot_table(index=["layer", "explanation_id"], columns="scorer", values="correlation").reset_index()
    lines = ["| layer | explanations | mean top-and-random | mean random-only |", "|---|---|---|---|"]
    for layer, g in wide.groupby("layer"):
        tr = g.get("top_and_random", pd.Series(dtype=float)).mean()
        ro = g.get("random_only", pd.Series(dtype=float)).mean()
        lines.append(f"| {layer} | {len(g)} | {tr:.3f} | {ro:.3f} |")
    return "\n".join(lines) + "\n\nUndefined scores (constant simulations) are left out of the means.\n"


def export_dataset(run_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write the dataset; returns rows per table.

    Raises:
        RunDirError: the run's harvest is incomplete, a table is unreadable, or out_dir is not empty.
    """
    store = RunStore(run_dir)
    manifest = store.require_harvest()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out} exists and is not empty: export into a new directory")
    (out / "data").mkdir(parents=True)
    (out / "schemas").mkdir()
    act_type = pa.float16() if manifest["harvest"].get("record_dtype") == "float16" else pa.float32()
    sources = {
        "excerpts": (store.excerpts_dir, S.EXCERPTS),
        "records": (store.root / "records", S.records_schema(act_type)),
        "neuron_stats": (store.root / "neuron_stats", S.NEURON_STATS),
        **{name: (store.root / name, sch) for name, sch in STAGE_SCHEMAS.items()},
    }
    counts = {}
    for name, (path, sch) in sources.items():
        table = _read_dir(path, sch)
        if table is None:
            continue
        meta = {"description": DESCRIPTIONS[name], "neuron_explainer_version": __version__, "table": name}
        table = _sorted(table).replace_schema_metadata({k: v for k, v in meta.items()})
        pq.write_table(table, out / "data" / f"{name}.parquet", compression="zstd")
        (out / "schemas" / f"{name}.schema.json").write_text(json.dumps(json_schema(name, sch), indent=1))
        counts[name] = table.num_rows
    shutil.copyfile(store.manifest_path, out / "manifest.json")
    (out / "README.md").write_text(_card(manifest, counts, _summary_by_layer(out)))
    return counts


def _card(manifest: dict[str, Any], counts: dict[str, int], summary: str) -> str:
    h = manifest["harvest"]
    model, corpus = h.get("model", {}), h.get("corpus", {})
    rows = "\n".join(f"| `{name}` | {n:,} | {DESCRIPTIONS[name]} |" for name, n in counts.items())
    return f"""# Neuron explanations: {model.get("spec", model.get("id", "unknown model"))}

Automatic explanations of MLP neurons, made with neuron-explainer {__version__} after Bills et al.,
"Language models can explain neurons in language models" (OpenAI, 2023).

## Provenance

- subject model: `{json.dumps(model, sort_keys=True)}`
- corpus: `{json.dumps(corpus, sort_keys=True)}`
- layers {h["layers"]}, {h["n_neurons"]} neurons each; excerpts of {h["excerpt_len"]} tokens; seed {h["seed"]}
- harvest config and versions: `manifest.json`

## Methods

Harvest: every neuron's top-activating excerpts, uniformly random excerpts and per-quantile samples from
one pass over the corpus (activation = input of the MLP output projection). Explain: an explainer model
reads 5 train-split top excerpts (activations as integers 0-10). Simulate: a simulator model predicts
each token's activation from the explanation alone (expected value over its label probabilities).
Score: Pearson correlation pooled over the valid split's 5 top + 5 random excerpts (top-and-random) and
its random excerpts (random-only). Where present: ablation scores, revision rounds and explanation-free
baselines. Column definitions: `schemas/*.schema.json` and each file's Parquet metadata.

## Tables

| table | rows | contents |
|---|---|---|
{rows}

## Scores by layer

{summary}
## Loading

```python
import pandas as pd
scores = pd.read_parquet("data/scores.parquet")

from datasets import load_dataset
explanations = load_dataset("parquet", data_files="data/explanations.parquet", split="train")
```
```sql
-- duckdb
SELECT e.layer, e.neuron, e.explanation, s.correlation
FROM 'data/explanations.parquet' e JOIN 'data/scores.parquet' s USING (explanation_id)
WHERE s.scorer = 'top_and_random' ORDER BY s.correlation DESC LIMIT 20;
```
"""
