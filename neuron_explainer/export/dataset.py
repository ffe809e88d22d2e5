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
import pyarrow.parquet as pq

from neuron_explainer import __version__
from neuron_explainer.errors import RunDirError
from neuron_explainer.records.schema import table_description, table_schema
from neuron_explainer.records.store import RunStore, read_parquet
from neuron_explainer.records.tables import STAGE_TABLES

EXPORTED_TABLES = ["excerpts", "records", "neuron_stats", *(name for name in STAGE_TABLES if name != "failures")]
"""Tables a dataset holds (failures are a run's working state, not results)."""


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
    """JSON Schema (draft 2020-12) of one row of a table, with each column's description."""
    props = {}
    for f in schema:
        t = _json_type(f.type)
        if f.nullable:
            t = {"anyOf": [t, {"type": "null"}]}
        description = (f.metadata or {}).get(b"description")
        props[f.name] = {**t, "description": description.decode()} if description else t
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": name,
        "description": table_description(name),
        "type": "object",
        "properties": props,
        "required": [f.name for f in schema],
        "additionalProperties": False,
    }


def _read_dir(path: Path, schema: pa.Schema | None = None) -> pa.Table | None:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else []
    return read_parquet(files, schema=schema, what=path.name) if files else None


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
    folders = {"excerpts": store.excerpts_dir}
    sources = {name: (folders.get(name, store.root / name), table_schema(name, act_type)) for name in EXPORTED_TABLES}
    counts = {}
    for name, (path, sch) in sources.items():
        table = _read_dir(path, sch)
        if table is None:
            continue
        meta = {"description": table_description(name), "neuron_explainer_version": __version__, "table": name}
        table = _sorted(table).replace_schema_metadata({k: v for k, v in meta.items()})
        pq.write_table(table, out / "data" / f"{name}.parquet", compression="zstd")
        (out / "schemas" / f"{name}.schema.json").write_text(json.dumps(json_schema(name, sch), indent=1))
        counts[name] = table.num_rows
    shutil.copyfile(store.manifest_path, out / "manifest.json")
    (out / "README.md").write_text(_card(manifest, counts, _summary_by_layer(out)))
    return counts


FEATURE_WORDS = {
    "mlp": ("MLP neurons", "the input of the MLP output projection"),
    "sae": ("sparse-autoencoder latents", "the latent's value when the coder encodes its hooked activation"),
    "directions": ("directions in MLP activation space", "the MLP activations projected on the direction"),
}
"""Feature kind -> (what the card calls the features, what their activation is)."""


def _card(manifest: dict[str, Any], counts: dict[str, int], summary: str) -> str:
    h = manifest["harvest"]
    model, corpus = h.get("model", {}), h.get("corpus", {})
    features = h.get("features", {"kind": "mlp"})
    what, value = FEATURE_WORDS.get(features.get("kind", "mlp"), FEATURE_WORDS["mlp"])
    rows = "\n".join(f"| `{name}` | {n:,} | {table_description(name)} |" for name, n in counts.items())
    return f"""# Explanations of {what}: {model.get("spec", model.get("id", "unknown model"))}

Automatic explanations of {what}, made with neuron-explainer {__version__} after Bills et al.,
"Language models can explain neurons in language models" (OpenAI, 2023).

## Provenance

- subject model: `{json.dumps(model, sort_keys=True)}`
- corpus: `{json.dumps(corpus, sort_keys=True)}`
- features: `{json.dumps(features, sort_keys=True)}` (the `neuron` column numbers them)
- layers {h["layers"]}, {h["n_neurons"]} features each; excerpts of {h["excerpt_len"]} tokens; seed {h["seed"]}
- harvest config and versions: `manifest.json`

## Methods

Harvest: every feature's top-activating excerpts, uniformly random excerpts and per-quantile samples from
one pass over the corpus (activation = {value}). Explain: an explainer model
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
