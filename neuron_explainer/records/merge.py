"""Merge runs into one: harvest shards, or runs of one harvest that wrote their stage tables separately.

Harvest shards cover disjoint layer sets or disjoint ranges of one excerpt stream; they merge into exactly
what one unsharded harvest writes: top-k, random and bucket samples are re-selected from the shards' kept
records with the same ordering keys, and moments merge with Pébay's formulas. Runs of one harvest (workers
that wrote separate directories) keep that harvest and join their stage tables by key
(records/table_merge.py); so do layer shards, whose stage tables cover disjoint neurons.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from neuron_explainer.activations.harvest import QUANTILE_STREAM, RANDOM_STREAM, stats_table, without_dead_features
from neuron_explainer.activations.reducers import Moments, excerpt_keys
from neuron_explainer.config import HarvestConfig, harvest_semantic_hash
from neuron_explainer.directions.covariance import merge_covariance_files
from neuron_explainer.errors import RunDirError
from neuron_explainer.records.schema import RECORDS_WRITE_OPTIONS
from neuron_explainer.records.store import RunStore, read_parquet, write_table_atomic
from neuron_explainer.records.table_merge import link_or_copy, merge_stage_tables
from neuron_explainer.records.tables import STAGE_TABLES, table_parts

_SHARD_FIELDS = ("excerpt_range", "layers")


def _read(path: Path) -> pa.Table:
    return read_parquet(path, what=path.name)


def _select(table: pa.Table, seed: int, cfg: HarvestConfig) -> pa.Table:
    """Re-select each neuron's kept records from the union of shards' records."""
    neuron = table["neuron"].to_numpy()
    kind = pc.cast(table["kind"], pa.string()).to_numpy(zero_copy_only=False)
    bucket = table["bucket"].fill_null(-1).to_numpy()
    eid = table["excerpt_id"].to_numpy().astype(np.int64)
    keys_r = excerpt_keys(seed, RANDOM_STREAM, torch.from_numpy(eid)).numpy()
    keys_q = excerpt_keys(seed, QUANTILE_STREAM, torch.from_numpy(eid)).numpy()
    kind_code = np.select([kind == "top", kind == "random"], [0, 1], 2)
    # one ordering key per row: top by (max desc, id asc); random and quantile by (key asc, id asc)
    score = np.where(
        kind_code == 0, -table["max_activation"].to_numpy().astype(np.float64), np.where(kind_code == 1, keys_r, keys_q)
    )
    order = np.lexsort((eid, score, bucket, kind_code, neuron))
    group = np.stack([neuron, kind_code, bucket], 1)[order]
    new_group = np.ones(len(order), dtype=bool)
    new_group[1:] = (group[1:] != group[:-1]).any(1)
    starts = np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))
    rank = np.arange(len(order)) - starts
    limit = np.select([group[:, 1] == 0, group[:, 1] == 1], [cfg.top_k, cfg.random_k], cfg.quantile_k)
    keep = order[rank < limit]
    out = table.take(pa.array(keep))
    return out.set_column(out.schema.get_field_index("rank"), "rank", pa.array(rank[rank < limit].astype(np.int16)))


def _merge_stats(tables: list[pa.Table]) -> pa.Table:
    merged: Moments | None = None
    for t in tables:
        m = Moments(t.num_rows, device="cpu")
        m.n = int(t["count"][0].as_py())
        m.mean = torch.tensor(t["mean"].to_numpy())
        m.m2, m.m3, m.m4 = (torch.tensor(t[c].to_numpy()) for c in ("m2", "m3", "m4"))
        m.min, m.max = torch.tensor(t["min_activation"].to_numpy()), torch.tensor(t["max_activation"].to_numpy())
        if "positive_count" not in t.column_names or t["positive_count"].null_count:
            raise RunDirError("a shard's neuron_stats has no positive_count: it was harvested by an older version")
        m.positive = torch.tensor(t["positive_count"].to_numpy())
        if merged is None:
            merged = m
        else:
            merged.merge(m)
    assert merged is not None
    bounds = [t["quantile_boundaries"] for t in tables]
    if any(not b.equals(bounds[0]) for b in bounds[1:]):
        raise RunDirError("shards disagree on quantile boundaries: they were not cut from one excerpt stream")
    first = tables[0]
    if first["neuron"].to_pylist() != list(range(first.num_rows)):
        raise RunDirError("neuron_stats rows are not the neurons 0..N-1 in order")
    stacked = np.stack(first["quantile_boundaries"].to_numpy(zero_copy_only=False))
    return stats_table(int(first["layer"][0].as_py()), merged, stacked)


def _same_harvest(manifests: list[dict[str, Any]]) -> bool:
    def ident(h: dict[str, Any]) -> tuple:
        return (h.get("semantic_hash") or repr(h["config"]), h["layers"], h.get("result", {}).get("excerpt_range"))

    return all(ident(m["harvest"]) == ident(manifests[0]["harvest"]) for m in manifests)


def merge_same_harvest(stores: list[RunStore], manifests: list[dict[str, Any]], out: RunStore) -> dict[str, Any]:
    """Runs of one harvest: the harvest (linked, or copied) and the join of their stage tables into `out`."""
    counts = merge_stage_tables(stores, out)  # refuses conflicts before the harvest is linked
    first = stores[0]
    for path in sorted(first.excerpts_dir.glob("part-*.parquet")):
        link_or_copy(path, out.excerpts_dir / path.name)
    for folder in ("records", "neuron_stats"):
        for path in sorted((first.root / folder).glob("layer-*.parquet")):
            link_or_copy(path, out.root / folder / path.name)
    manifest = {**manifests[0], "stage_tables_merged_from": [str(s.root) for s in stores], "merged_rows": counts}
    out.write_manifest(manifest)
    return manifest


def merge_runs(shards: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Merge completed harvest shards, or runs of one harvest, into `out`; returns the merged manifest.

    Raises:
        RunDirError: a shard is incomplete, the shards' configs differ in more than layers and excerpt
            range, or they overlap, or they are neither layer shards nor excerpt-range shards (nor runs
            of one harvest); excerpt-range shards hold stage tables; stage tables hold conflicting rows.
    """
    stores = [RunStore(s) for s in shards]
    manifests = [s.require_harvest() for s in stores]
    out_store = RunStore(out)
    if out_store.manifest_path.exists():
        raise RunDirError(f"{out_store.root} already holds a run; merge into a new directory")
    if _same_harvest(manifests):
        return merge_same_harvest(stores, manifests, out_store)
    mode, stores, manifests = _shard_mode(stores, manifests)
    base = HarvestConfig.model_validate(manifests[0]["harvest"]["config"])
    layer_sets = [m["harvest"]["layers"] for m in manifests]
    ranges = [tuple(m["harvest"]["result"]["excerpt_range"]) for m in manifests]
    out_store.root.mkdir(parents=True, exist_ok=True)
    layers = sorted({layer for ls in layer_sets for layer in ls})
    first = manifests[0]
    full_range = (ranges[0][0], ranges[-1][1])
    # shards keep dead features' records (a latent dead in one range may fire in another); the whole drops them
    kind = (first["harvest"].get("features") or {}).get("kind", "mlp")
    drop_dead = kind != "mlp" and full_range == (0, base.n_excerpts)
    dead: dict[str, int] = {}
    for layer in layers:
        if mode == "layers":
            src, src_manifest = next(
                (s, m) for s, m in zip(stores, manifests, strict=True) if layer in m["harvest"]["layers"]
            )
            src_dead = src_manifest["harvest"]["result"].get("dead_features", {})
            if str(layer) in src_dead:  # the layer shard harvested the whole range and dropped them itself
                dead[str(layer)] = src_dead[str(layer)]
            shutil.copy(src.records_path(layer), _mk(out_store.records_path(layer)))
            shutil.copy(src.stats_path(layer), _mk(out_store.stats_path(layer)))
        else:
            records = pa.concat_tables([_read(s.records_path(layer)) for s in stores], promote_options="permissive")
            records = _select(records, base.seed, base)
            stats = _merge_stats([_read(s.stats_path(layer)) for s in stores])
            if drop_dead:
                records, dead[str(layer)] = without_dead_features(records, stats)
            write_table_atomic(records, out_store.records_path(layer), **RECORDS_WRITE_OPTIONS)
            write_table_atomic(stats, out_store.stats_path(layer))
    merge_covariance_files([s.root for s in stores], out_store.root, same_excerpts=mode == "layers")
    for s in stores if mode == "excerpts" else stores[:1]:
        for part in sorted(s.excerpts_dir.glob("part-*.parquet")):
            shutil.copy(part, _mk(out_store.excerpts_dir / part.name))
    merged_cfg = base.model_copy(
        update={
            "layers": None if base.layers is None and mode == "excerpts" else layers,
            "excerpt_range": None if full_range == (0, base.n_excerpts) else full_range,
        }
    )
    if mode == "layers" and layers == list(range(first["harvest"]["n_layers_model"])):
        merged_cfg = merged_cfg.model_copy(update={"layers": None})
    harvest = dict(first["harvest"])
    harvest.update(
        config=merged_cfg.model_dump(mode="json"),
        semantic_hash=harvest_semantic_hash(merged_cfg),
        layers=layers,
        merged_from=[str(s.root) for s in stores],
        result={
            "n_excerpts": full_range[1] - full_range[0],
            "n_tokens": (full_range[1] - full_range[0]) * base.excerpt_len,
            "excerpt_range": list(full_range),
            "documents_read": max(m["harvest"]["result"]["documents_read"] for m in manifests),
            **({"dead_features": dead} if dead else {}),
        },
    )
    manifest = {**first, "harvest": harvest, "status": {"harvest": "complete"}}
    if mode == "layers":
        merge_stage_tables(stores, out_store)
    out_store.write_manifest(manifest)
    return manifest


def _shard_mode(
    stores: list[RunStore], manifests: list[dict[str, Any]]
) -> tuple[str, list[RunStore], list[dict[str, Any]]]:
    """Whether the shards split layers or excerpt ranges; the stores and manifests in merge order.

    Raises:
        RunDirError: configs differ in more than layers and excerpt range, shards overlap or leave gaps,
            excerpt-range shards hold stage tables, or the shards are neither kind.
    """
    configs = [HarvestConfig.model_validate(m["harvest"]["config"]) for m in manifests]
    base_hash = harvest_semantic_hash(configs[0].model_copy(update={f: None for f in _SHARD_FIELDS}))
    for cfg, store in zip(configs[1:], stores[1:], strict=True):
        if harvest_semantic_hash(cfg.model_copy(update={f: None for f in _SHARD_FIELDS})) != base_hash:
            raise RunDirError(f"{store.root} was harvested with another config than {stores[0].root}")
    layer_sets = [m["harvest"]["layers"] for m in manifests]
    ranges = [tuple(m["harvest"]["result"]["excerpt_range"]) for m in manifests]
    if all(r == ranges[0] for r in ranges) and len({tuple(ls) for ls in layer_sets}) == len(layer_sets):
        if len({layer for ls in layer_sets for layer in ls}) != sum(len(ls) for ls in layer_sets):
            raise RunDirError("layer shards overlap")
        return "layers", stores, manifests
    if not all(ls == layer_sets[0] for ls in layer_sets):
        raise RunDirError(
            "shards must differ only in layers (same excerpts) or only in excerpt range (same layers), or be "
            "runs of one harvest"
        )
    ordered = sorted(zip(ranges, stores, manifests, strict=True), key=lambda x: x[0][0])
    for (r1, _, _), (r2, _, _) in zip(ordered, ordered[1:], strict=False):
        if r1[1] != r2[0]:
            raise RunDirError(f"excerpt-range shards must be contiguous and disjoint; got {r1} then {r2}")
    stores = [s for _, s, _ in ordered]
    with_tables = [str(st.root) for st in stores if any(table_parts(st, name) for name in STAGE_TABLES)]
    if with_tables:
        raise RunDirError(
            f"{', '.join(with_tables)} hold stage tables, which excerpt-range shards cannot share (their "
            "records differ from the merged run's): merge the harvests, then explain the merged run"
        )
    return "excerpts", stores, [m for _, _, m in ordered]


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
