"""Import OpenAI's published neuron-explainer JSON layout into a run directory our stages read.

From `collated-activations/<layer>/<neuron>.json` (one NeuronRecord each) and, if present,
`explanations/<layer>/<neuron>.jsonl` (NeuronSimulationResults): excerpts (token strings, no token ids:
the release has none), records in their published order (so our positional splits apply to the same
excerpts), neuron statistics as published, a manifest marking the import, and the explanations with
their published scores (explainer `openai:release`). Every file is validated; a malformed one is a
RunDirError naming it, never a traceback.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from neuron_explainer.datatypes import N_BUCKETS, QUANTILES, ActivationRecord
from neuron_explainer.errors import RunDirError
from neuron_explainer.export.openai_export import nan_to_none
from neuron_explainer.records import schema as S
from neuron_explainer.records.store import RunStore, write_json_atomic, write_table_atomic
from neuron_explainer.records.tables import explanation_row, write_part

IMPORTED_EXPLAINER = "openai:release"


def read_release_json(path: Path) -> dict[str, Any]:
    """One release file (a .jsonl file's first line).

    Raises:
        RunDirError: unreadable, or not JSON.
    """
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text.splitlines()[0] if path.suffix == ".jsonl" else text)
    except (OSError, ValueError, IndexError) as e:
        raise RunDirError(f"{path} is not a readable OpenAI neuron file: {e}") from e


def _records(items: Any, path: Path, what: str) -> list[ActivationRecord]:
    if not isinstance(items, list):
        raise RunDirError(f"{path}: {what} must be a list of ActivationRecord objects")
    out = []
    for item in items:
        try:
            rec = ActivationRecord(tokens=item["tokens"], activations=item["activations"])
        except (KeyError, TypeError, ValueError) as e:
            raise RunDirError(f"{path}: malformed ActivationRecord in {what}: {e}") from e
        if len(rec.tokens) != len(rec.activations):
            raise RunDirError(
                f"{path}: a record in {what} has {len(rec.tokens)} tokens but {len(rec.activations)} activations"
            )
        if not all(math.isfinite(a) for a in rec.activations):
            raise RunDirError(f"{path}: a record in {what} holds non-finite activations")
        out.append(rec)
    return out


def _neuron_record(path: Path) -> tuple[int, int, list[tuple[str, int | None, list[ActivationRecord]]], dict]:
    """(layer, neuron, [(kind, bucket, records)], statistics) of one collated-activations file."""
    data = read_release_json(path)
    try:
        layer, neuron = int(data["neuron_id"]["layer_index"]), int(data["neuron_id"]["neuron_index"])
        buckets = data["random_sample_by_quantile"]
        bounds = [float(b) for b in data["quantile_boundaries"]]
        stats = {k: data[k] for k in ("mean", "variance", "skewness", "kurtosis")}
        groups: list[tuple[str, int | None, list[ActivationRecord]]] = [
            ("top", None, _records(data["most_positive_activation_records"], path, "most_positive_activation_records")),
            ("random", None, _records(data["random_sample"], path, "random_sample")),
        ]
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{path}: not a NeuronRecord: missing or malformed {e}") from e
    if not isinstance(buckets, list) or len(buckets) != N_BUCKETS:
        raise RunDirError(f"{path}: random_sample_by_quantile must hold {N_BUCKETS} buckets")
    if len(bounds) != len(QUANTILES):
        raise RunDirError(
            f"{path}: quantile_boundaries has {len(bounds)} values; {N_BUCKETS} buckets need {len(QUANTILES)}"
        )
    groups += [("quantile", b, _records(items, path, f"bucket {b}")) for b, items in enumerate(buckets)]
    return layer, neuron, groups, {**stats, "quantile_boundaries": bounds}


@dataclass
class _Collected:
    """Rows gathered over every neuron file before writing."""

    excerpt_ids: dict[tuple[str, ...], int] = field(default_factory=dict)
    excerpt_tokens: list[list[str]] = field(default_factory=list)
    by_layer: dict[int, tuple[list[dict], list[dict]]] = field(default_factory=dict)
    n_neurons: int = 0
    excerpt_len: int = 0

    def excerpt(self, tokens: list[str]) -> int:
        key = tuple(tokens)
        if key not in self.excerpt_ids:
            self.excerpt_ids[key] = len(self.excerpt_tokens)
            self.excerpt_tokens.append(list(tokens))
            self.excerpt_len = max(self.excerpt_len, len(tokens))
        return self.excerpt_ids[key]

    def add(self, path: Path) -> None:
        layer, neuron, groups, stats = _neuron_record(path)
        self.n_neurons = max(self.n_neurons, neuron + 1)
        rec_rows, stat_rows = self.by_layer.setdefault(layer, ([], []))
        all_acts: list[float] = []
        for kind, bucket, records in groups:
            for rank, r in enumerate(records):
                acts = [float(a) for a in r.activations]
                all_acts += acts
                rec_rows.append(
                    {
                        "layer": layer,
                        "neuron": neuron,
                        "kind": kind,
                        "bucket": bucket,
                        "rank": rank,
                        "excerpt_id": self.excerpt(r.tokens),
                        "max_activation": max(acts, default=0.0),
                        "activations": acts,
                    }
                )
        arr = np.asarray(all_acts or [0.0])
        stat_rows.append(
            {
                "layer": layer,
                "neuron": neuron,
                "count": 0,
                "mean": float(stats["mean"]),
                "variance": float(stats["variance"]),
                "skewness": nan_to_none(stats["skewness"]),
                "kurtosis": nan_to_none(stats["kurtosis"]),
                "min_activation": float(arr.min()),
                "max_activation": float(arr.max()),
                "quantile_boundaries": stats["quantile_boundaries"],
                "m2": float("nan"),
                "m3": float("nan"),
                "m4": float("nan"),
            }
        )

    def write(self, store: RunStore) -> None:
        store.root.mkdir(parents=True, exist_ok=True)
        excerpts = [
            {"excerpt_id": i, "doc_index": -1, "token_start": -1, "token_ids": [], "tokens": t}
            for i, t in enumerate(self.excerpt_tokens)
        ]
        write_table_atomic(pa.Table.from_pylist(excerpts, schema=S.EXCERPTS), store.excerpt_part_path(0))
        for layer, (rec_rows, stat_rows) in self.by_layer.items():
            records = pa.Table.from_pylist(rec_rows, schema=S.records_schema(pa.float32()))
            write_table_atomic(records, store.records_path(layer))
            write_table_atomic(pa.Table.from_pylist(stat_rows, schema=S.NEURON_STATS), store.stats_path(layer))


def _manifest(src: Path, collected: _Collected) -> dict[str, Any]:
    return {
        "schema_version": S.SCHEMA_VERSION,
        "status": {"harvest": "complete"},
        "harvest": {
            "config": {"source": "openai-import", "path": str(src)},
            "model": {"spec": "imported from OpenAI's neuron-explainer release", "kind": "openai-import"},
            "corpus": {"source": "openai-import"},
            "layers": sorted(collected.by_layer),
            "n_neurons": collected.n_neurons,
            "prepend_bos": False,
            "record_dtype": "float32",
            "excerpt_len": collected.excerpt_len,
            "seed": 0,
            "note": "imported records: token strings only (no token ids); statistics as published (count and "
            "raw moments unknown)",
        },
    }


def import_openai(src_dir: str | Path, run_dir: str | Path) -> dict[str, int]:
    """Build a run directory from `collated-activations/` (and `explanations/` if present) under src_dir.

    Raises:
        RunDirError: no neuron files, a malformed file (named), or an existing run directory.
    """
    src, store = Path(src_dir), RunStore(run_dir)
    if store.manifest_path.exists():
        raise RunDirError(f"{store.root} already holds a run: import into a new directory")
    files = [p for p in (src / "collated-activations").glob("*/*.json") if p.parent.name.isdigit() and p.stem.isdigit()]
    if not files:
        raise RunDirError(f"no collated-activations/<layer>/<neuron>.json files under {src}")
    collected = _Collected()
    for path in sorted(files, key=lambda p: (int(p.parent.name), int(p.stem))):
        collected.add(path)
    collected.write(store)
    n_expl = import_explanations(src, store)
    write_json_atomic(_manifest(src, collected), store.manifest_path)
    return {"neurons": len(files), "excerpts": len(collected.excerpt_tokens), "explanations": n_expl}


def _published_score(layer: int, neuron: int, eid: str, scored: dict[str, Any]) -> dict[str, Any]:
    seqs = scored.get("scored_sequence_simulations") or []
    per_excerpt = [nan_to_none(q.get("ev_correlation_score")) for q in seqs]
    correlation = nan_to_none(scored.get("ev_correlation_score"))
    return {
        "layer": layer,
        "neuron": neuron,
        "explanation_id": eid,
        "scorer": "top_and_random",
        "correlation": correlation,
        "explained_variance": None,
        "undefined_reason": None if correlation is not None else "not published",
        "n_tokens": sum(len(s.get("true_activations", [])) for s in seqs),
        "per_excerpt": [float("nan") if v is None else v for v in per_excerpt],
        "simulator": IMPORTED_EXPLAINER,
    }


def import_explanations(src: Path, store: RunStore) -> int:
    """The release's explanations and published scores, as `explanations` and `scores` rows."""
    rows, score_rows = [], []
    for path in sorted((src / "explanations").glob("*/*.jsonl")):
        data = read_release_json(path)
        try:
            layer, neuron = int(data["neuron_id"]["layer_index"]), int(data["neuron_id"]["neuron_index"])
            items = [(str(e["explanation"]), e.get("scored_simulation") or {}) for e in data["scored_explanations"]]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RunDirError(f"{path}: not a NeuronSimulationResults: missing or malformed {e}") from e
        for i, (text, scored) in enumerate(items):
            row = explanation_row(
                layer, neuron, text, explainer=IMPORTED_EXPLAINER, prompt_version="openai/release", sample_idx=i
            )
            rows.append(row)
            score_rows.append(_published_score(layer, neuron, row["explanation_id"], scored))
    write_part(store, "explanations", rows)
    write_part(store, "scores", score_rows)
    return len(rows)
