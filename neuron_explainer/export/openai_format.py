"""Convert to and from OpenAI's published neuron-explainer JSON format (docs: ../shared/OPENAI_FORMAT.md).

- `export_openai(run, out)`: `{out}/collated-activations/{layer}/{neuron}.json` (one `NeuronRecord`) and,
  for scored neurons, `{out}/explanations/{layer}/{neuron}.jsonl` (first line: `NeuronSimulationResults`).
- `import_openai(src, run)`: the reverse, into a run directory our stages read: excerpts (token strings,
  no token ids: the release has none), records, neuron statistics, a manifest marking the import, and
  the release's explanations with their published scores (explainer `openai:release`). Simulating and
  scoring them with our simulators then compares scores on the same records.

Splits are positional in both (top i::4, random i::3), so the record order is kept exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from neuron_explainer.datatypes import ActivationRecord, NeuronRecord
from neuron_explainer.errors import RunDirError
from neuron_explainer.pipeline import read_table
from neuron_explainer.records import schema as S
from neuron_explainer.records.reader import load_neuron_record
from neuron_explainer.records.store import RunStore, write_json_atomic, write_table_atomic

IMPORTED_EXPLAINER = "openai:release"


def _record(r: ActivationRecord) -> dict[str, Any]:
    return {
        "dataclass_name": "ActivationRecord",
        "tokens": list(r.tokens),
        "activations": [float(a) for a in r.activations],
    }


def neuron_record_json(rec: NeuronRecord) -> dict[str, Any]:
    """One NeuronRecord in the release's serialisation."""
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {
            "dataclass_name": "NeuronId",
            "layer_index": rec.neuron_id.layer_index,
            "neuron_index": rec.neuron_id.neuron_index,
        },
        "random_sample": [_record(r) for r in rec.random_sample],
        "random_sample_by_quantile": [[_record(r) for r in b] for b in rec.random_sample_by_quantile],
        "quantile_boundaries": list(rec.quantile_boundaries),
        "mean": rec.mean,
        "variance": rec.variance,
        "skewness": rec.skewness,
        "kurtosis": rec.kurtosis,
        "most_positive_activation_records": [_record(r) for r in rec.most_positive_activation_records],
    }


def _nan_to_none(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def export_openai(run_dir: str | Path, out_dir: str | Path) -> tuple[int, int]:
    """Write every harvested neuron's record, and the scored explanations; returns (records, explanation files)."""
    store = RunStore(run_dir)
    manifest = store.require_harvest()
    out = Path(out_dir)
    h = manifest["harvest"]
    n_records = 0
    for layer in h["layers"]:
        for neuron in range(h["n_neurons"]):
            rec = load_neuron_record(store.root, layer, neuron)
            path = out / "collated-activations" / str(layer) / f"{neuron}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(neuron_record_json(rec)))
            n_records += 1
    expl = read_table(store, "explanations", S.EXPLANATIONS)
    sims = read_table(store, "simulations", S.SIMULATIONS)
    scores = read_table(store, "scores", S.SCORES)
    sims = sims[sims.split == "valid"]
    n_files = 0
    for (layer, neuron), group in expl.groupby(["layer", "neuron"]):
        rec = load_neuron_record(store.root, int(layer), int(neuron))
        truth = {r.excerpt_id: r for r in rec.most_positive_activation_records + rec.random_sample}
        scored = []
        for row in group.itertuples():
            s = sims[sims.explanation_id == row.explanation_id]
            sc = scores[(scores.explanation_id == row.explanation_id) & (scores.scorer == "top_and_random")]
            if s.empty or sc.empty:
                continue
            s = s[s.simulator == sc.simulator.iloc[0]]
            s = s.assign(order=s.record_kind.map({"top": 0, "random": 1})).sort_values(["order"], kind="stable")
            per_excerpt = list(sc.per_excerpt.iloc[0])
            seqs = []
            for k, srow in enumerate(s.itertuples()):
                true = truth[int(srow.excerpt_id)]
                seqs.append(
                    {
                        "dataclass_name": "ScoredSequenceSimulation",
                        "simulation": {
                            "dataclass_name": "SequenceSimulation",
                            "tokens": list(true.tokens),
                            "expected_activations": [float(v) for v in srow.expected_values],
                            "activation_scale": "simulated_normalized_activations",
                            "distribution_values": [],
                            "distribution_probabilities": [],
                            "uncalibrated_simulation": None,
                        },
                        "true_activations": [float(a) for a in true.activations],
                        "ev_correlation_score": _nan_to_none(per_excerpt[k]) if k < len(per_excerpt) else None,
                        "rsquared_score": None,
                        "absolute_dev_explained_score": None,
                    }
                )
            scored.append(
                {
                    "dataclass_name": "ScoredExplanation",
                    "explanation": row.explanation,
                    "scored_simulation": {
                        "dataclass_name": "ScoredSimulation",
                        "scored_sequence_simulations": seqs,
                        "ev_correlation_score": _nan_to_none(sc.correlation.iloc[0]),
                        "rsquared_score": None,
                        "absolute_dev_explained_score": None,
                    },
                }
            )
        if scored:
            path = out / "explanations" / str(int(layer)) / f"{int(neuron)}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            results = {
                "dataclass_name": "NeuronSimulationResults",
                "neuron_id": {"dataclass_name": "NeuronId", "layer_index": int(layer), "neuron_index": int(neuron)},
                "scored_explanations": scored,
            }
            path.write_text(json.dumps(results) + "\n")
            n_files += 1
    return n_records, n_files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text.splitlines()[0] if path.suffix == ".jsonl" else text)
    except (OSError, ValueError, IndexError) as e:
        raise RunDirError(f"{path} is not a readable OpenAI neuron file: {e}") from e


def _records(items: list[dict[str, Any]], path: Path) -> list[ActivationRecord]:
    try:
        return [ActivationRecord(tokens=i["tokens"], activations=i["activations"]) for i in items]
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{path}: malformed ActivationRecord: {e}") from e


def import_openai(src_dir: str | Path, run_dir: str | Path) -> dict[str, int]:
    """Build a run directory from `collated-activations/` (and `explanations/` if present) under src_dir.

    Raises:
        RunDirError: no neuron files, a malformed file, or an existing run directory.
    """
    src, store = Path(src_dir), RunStore(run_dir)
    if store.manifest_path.exists():
        raise RunDirError(f"{store.root} already holds a run: import into a new directory")
    files = sorted((src / "collated-activations").glob("*/*.json"), key=lambda p: (int(p.parent.name), int(p.stem)))
    if not files:
        raise RunDirError(f"no collated-activations/<layer>/<neuron>.json files under {src}")
    excerpt_ids: dict[tuple[str, ...], int] = {}
    excerpt_tokens: list[list[str]] = []
    by_layer: dict[int, tuple[list[dict], list[dict]]] = {}
    n_neurons = 0
    excerpt_len = 0
    for path in files:
        data = _read_json(path)
        try:
            layer, neuron = int(data["neuron_id"]["layer_index"]), int(data["neuron_id"]["neuron_index"])
            groups = [("top", None, data["most_positive_activation_records"]), ("random", None, data["random_sample"])]
            groups += [("quantile", b, items) for b, items in enumerate(data["random_sample_by_quantile"])]
            stats = (data["mean"], data["variance"], data["skewness"], data["kurtosis"], data["quantile_boundaries"])
        except (KeyError, TypeError, ValueError) as e:
            raise RunDirError(f"{path}: not a NeuronRecord: missing {e}") from e
        n_neurons = max(n_neurons, neuron + 1)
        rec_rows, stat_rows = by_layer.setdefault(layer, ([], []))
        all_acts = []
        for kind, bucket, items in groups:
            for rank, r in enumerate(_records(items, path)):
                key = tuple(r.tokens)
                if key not in excerpt_ids:
                    excerpt_ids[key] = len(excerpt_tokens)
                    excerpt_tokens.append(list(r.tokens))
                    excerpt_len = max(excerpt_len, len(r.tokens))
                acts = [float(a) for a in r.activations]
                all_acts += acts
                rec_rows.append(
                    {"layer": layer, "neuron": neuron, "kind": kind, "bucket": bucket, "rank": rank,
                     "excerpt_id": excerpt_ids[key], "max_activation": max(acts, default=0.0), "activations": acts}
                )  # fmt: skip
        mean, var, skew, kurt, bounds = stats
        arr = np.asarray(all_acts or [0.0])
        stat_rows.append(
            {"layer": layer, "neuron": neuron, "count": 0, "mean": float(mean), "variance": float(var),
             "skewness": _nan_to_none(skew), "kurtosis": _nan_to_none(kurt), "min_activation": float(arr.min()),
             "max_activation": float(arr.max()), "quantile_boundaries": [float(b) for b in bounds],
             "m2": float("nan"), "m3": float("nan"), "m4": float("nan")}
        )  # fmt: skip
    store.root.mkdir(parents=True, exist_ok=True)
    write_table_atomic(
        pa.Table.from_pylist(
            [
                {"excerpt_id": i, "doc_index": -1, "token_start": -1, "token_ids": [], "tokens": t}
                for i, t in enumerate(excerpt_tokens)
            ],
            schema=S.EXCERPTS,
        ),
        store.excerpt_part_path(0),
    )
    for layer, (rec_rows, stat_rows) in by_layer.items():
        write_table_atomic(
            pa.Table.from_pylist(rec_rows, schema=S.records_schema(pa.float32())), store.records_path(layer)
        )
        write_table_atomic(pa.Table.from_pylist(stat_rows, schema=S.NEURON_STATS), store.stats_path(layer))
    n_expl = _import_explanations(src, store)
    write_json_atomic(
        {
            "schema_version": S.SCHEMA_VERSION,
            "status": {"harvest": "complete"},
            "harvest": {
                "config": {"source": "openai-import", "path": str(src)},
                "model": {"spec": "imported from OpenAI's neuron-explainer release", "kind": "openai-import"},
                "corpus": {"source": "openai-import"},
                "layers": sorted(by_layer),
                "n_neurons": n_neurons,
                "prepend_bos": False,
                "record_dtype": "float32",
                "excerpt_len": excerpt_len,
                "seed": 0,
                "note": "imported records: token strings only (no token ids); statistics as published (count and "
                "raw moments unknown)",
            },
        },
        store.manifest_path,
    )
    return {"neurons": len(files), "excerpts": len(excerpt_tokens), "explanations": n_expl}


def _import_explanations(src: Path, store: RunStore) -> int:
    from neuron_explainer.pipeline import explanation_id, write_part

    rows, score_rows = [], []
    for path in sorted((src / "explanations").glob("*/*.jsonl")):
        data = _read_json(path)
        try:
            layer, neuron = int(data["neuron_id"]["layer_index"]), int(data["neuron_id"]["neuron_index"])
            items = [(e["explanation"], e.get("scored_simulation") or {}) for e in data["scored_explanations"]]
        except (KeyError, TypeError, ValueError) as e:
            raise RunDirError(f"{path}: not a NeuronSimulationResults: missing {e}") from e
        for i, (text, scored) in enumerate(items):
            eid = explanation_id(layer, neuron, IMPORTED_EXPLAINER, "openai/release", i)
            rows.append(
                {"layer": layer, "neuron": neuron, "explanation_id": eid, "explanation": str(text),
                 "explainer": IMPORTED_EXPLAINER, "prompt_version": "openai/release", "view": "current_token",
                 "sample_idx": i, "round": 1, "params_hash": ""}
            )  # fmt: skip
            seqs = scored.get("scored_sequence_simulations") or []
            per_excerpt = [_nan_to_none(q.get("ev_correlation_score")) for q in seqs]
            score_rows.append(
                {"layer": layer, "neuron": neuron, "explanation_id": eid, "scorer": "top_and_random",
                 "correlation": _nan_to_none(scored.get("ev_correlation_score")), "explained_variance": None,
                 "undefined_reason": None if scored.get("ev_correlation_score") is not None else "not published",
                 "n_tokens": sum(len(s.get("true_activations", [])) for s in seqs),
                 "per_excerpt": [float("nan") if v is None else v for v in per_excerpt],
                 "simulator": IMPORTED_EXPLAINER}
            )  # fmt: skip
    write_part(store, "explanations", rows, S.EXPLANATIONS)
    write_part(store, "scores", score_rows, S.SCORES)
    return len(rows)
