"""Harvest driver: model + corpus + reducer + run directory, with checkpointed resume.

Validation comes first and writes nothing: a bad config, model, layer or corpus fails before the run
directory is touched. While running, state is checkpointed atomically (excerpt part file first, then
the reducer state), so a killed harvest redoes at most one checkpoint interval and ends identical to an
uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from neuron_explainer.activations.corpus import Excerpt, iter_excerpts, open_corpus
from neuron_explainer.activations.harvest import N_BUCKETS, Harvester, HarvestShape
from neuron_explainer.activations.models import SubjectModel, load_subject_model
from neuron_explainer.activations.selection import to_device
from neuron_explainer.activations.sources import ActivationSource
from neuron_explainer.activations.text import decode_tokens
from neuron_explainer.config import QUANTILES, HarvestConfig, harvest_semantic_hash
from neuron_explainer.errors import CorpusError, RunDirError
from neuron_explainer.records.schema import EXCERPTS, RECORDS_WRITE_OPTIONS, SCHEMA_VERSION
from neuron_explainer.records.store import RunStore, write_table_atomic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HarvestPlan:
    """What a harvest is about to do; shown before it starts."""

    layers: list[int]
    n_neurons: int
    n_excerpts: int
    excerpt_len: int
    estimated_bytes: int
    resumed_from: int
    """Excerpt id the harvest resumes at (0 for a fresh start)."""


ProgressFn = Callable[[int, int], None]
"""Called with (excerpts processed so far, tokens processed so far) after every batch."""


def estimate_disk_bytes(cfg: HarvestConfig, n_layers: int, n_neurons: int) -> int:
    """Rough on-disk size of the harvest output (compressed records + stats + excerpts)."""
    per_value = 2 if cfg.record_dtype == "float16" else 4
    records = cfg.top_k + cfg.random_k + N_BUCKETS * cfg.quantile_k
    per_neuron = records * (cfg.excerpt_len * per_value * 0.8 + 12) + 130
    excerpts = cfg.n_excerpts * cfg.excerpt_len * 9
    return int(n_layers * n_neurons * per_neuron + excerpts)


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _wants_bos(tokenizer: Any, setting: bool | None) -> bool:
    if setting is not None:
        return setting
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    return tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


class _CountingDocs:
    """Wraps a document iterable, counting documents read."""

    def __init__(self, docs: Any) -> None:
        self.docs = docs
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for doc in self.docs:
            self.count += 1
            yield doc


class HarvestRun:
    """One harvest: validated inputs, then `run()`."""

    def __init__(
        self, cfg: HarvestConfig, out: str | Path, *, force: bool = False, subject: SubjectModel | None = None
    ) -> None:
        self.cfg = cfg
        self.store = RunStore(out)
        self.force = force
        self.semantic_hash = harvest_semantic_hash(cfg)
        self.already_complete = False
        existing = None if force else self.store.read_manifest()
        if existing is not None and "harvest" in existing:
            old = existing["harvest"]
            if old.get("semantic_hash") != self.semantic_hash:
                diff = _config_diff(old.get("config", {}), cfg.model_dump(mode="json"))
                raise RunDirError(
                    f"{self.store.root} holds a harvest made with a different config ({diff}); "
                    "choose another --out or pass --force to delete it and start over"
                )
            self.already_complete = existing.get("status", {}).get("harvest") == "complete"
        if self.already_complete:
            return
        self.subject = subject or load_subject_model(
            cfg.model, revision=cfg.model_revision, dtype=cfg.dtype, device=cfg.device
        )
        self.source = ActivationSource(self.subject.model, self.subject.hook_point)
        self.layers = sorted(cfg.layers) if cfg.layers is not None else list(range(self.source.n_layers))
        self.source.check_layers(self.layers)
        self.tokenizer = self.subject.tokenizer
        self.bos = _wants_bos(self.tokenizer, cfg.prepend_bos)
        self.corpus = open_corpus(cfg.corpus)
        self.range = cfg.excerpt_range or (0, cfg.n_excerpts)
        self.pilot = cfg.pilot_excerpts
        self._docs = _CountingDocs(self.corpus.documents())
        self._stream = self._excerpts()
        self._first = self._peek()

    # -- validation -------------------------------------------------------------------------------
    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _excerpts(self) -> Iterator[Excerpt]:
        return iter_excerpts(
            self._docs,
            self._tokenize,
            excerpt_len=self.cfg.excerpt_len,
            seed=self.cfg.seed,
            excerpts_per_doc=self.cfg.corpus.excerpts_per_doc,
            limit=self.cfg.n_excerpts,
        )

    def _peek(self) -> Excerpt:
        first = next(self._stream, None)
        if first is None:
            if self._docs.count == 0:
                raise CorpusError(f"corpus {self.cfg.corpus.source!r} has no documents (or only empty ones)")
            raise CorpusError(
                f"none of the {self._docs.count} documents of corpus {self.cfg.corpus.source!r} has "
                f"{self.cfg.excerpt_len} tokens: lower excerpt_len or use longer documents"
            )
        return first

    def _needed(self, excerpt_id: int) -> str | None:
        start, stop = self.range
        if start <= excerpt_id < stop:
            return "main"
        if excerpt_id < self.pilot and self.cfg.quantile_k:
            return "pilot"
        return None

    def _all(self) -> Iterator[Excerpt]:
        yield self._first
        yield from self._stream

    # -- running ----------------------------------------------------------------------------------
    def plan(self) -> HarvestPlan:
        """Sizes and disk estimate; call before run()."""
        resumed = 0
        if self.store.state_path.exists():
            resumed = int(torch.load(self.store.state_path, weights_only=False, mmap=True)["next_id"])
        start, stop = self.range
        pilot_only = len(set(range(self.pilot)) - set(range(start, stop))) if self.cfg.quantile_k else 0
        return HarvestPlan(
            self.layers,
            self.source.n_neurons,
            stop - start + pilot_only,
            self.cfg.excerpt_len,
            estimate_disk_bytes(self.cfg, len(self.layers), self.source.n_neurons),
            resumed,
        )

    def _manifest(self, status: str, result: dict[str, Any] | None = None) -> dict[str, Any]:
        from neuron_explainer import __version__

        return {
            "schema_version": SCHEMA_VERSION,
            "package_version": __version__,
            "git_sha": _git_sha(),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": {"harvest": status},
            "harvest": {
                "config": self.cfg.model_dump(mode="json"),
                "semantic_hash": self.semantic_hash,
                "model": self.subject.provenance,
                "corpus": self.corpus.provenance,
                "layers": self.layers,
                "n_layers_model": self.source.n_layers,
                "n_neurons": self.source.n_neurons,
                "prepend_bos": self.bos,
                "dtype": self.cfg.dtype,
                "record_dtype": self.cfg.record_dtype,
                "excerpt_len": self.cfg.excerpt_len,
                "seed": self.cfg.seed,
                "pilot_excerpts": self.pilot,
                "quantiles": list(QUANTILES),
                "torch_version": torch.__version__,
                "result": result,
            },
        }

    def run(self, progress: ProgressFn | None = None) -> dict[str, Any]:
        """Harvest (or resume) and write the outputs. Returns the final manifest."""
        if self.already_complete:
            logger.info("harvest in %s is already complete", self.store.root)
            manifest = self.store.read_manifest()
            assert manifest is not None
            return manifest
        if self.force:
            self.store.clear_harvest()
        cfg = self.cfg
        device = torch.device(cfg.device)
        act_dtype = next(self.subject.model.parameters()).dtype
        shape = HarvestShape(
            self.source.n_neurons, cfg.excerpt_len, cfg.top_k, cfg.random_k, cfg.quantile_k, self.pilot, cfg.seed
        )
        harvester = Harvester(self.layers, shape, device, act_dtype)
        next_id, tokens_done, excerpts_done = 0, 0, 0
        if self.store.state_path.exists():
            state = torch.load(self.store.state_path, weights_only=False, map_location=device)
            if state["semantic_hash"] != self.semantic_hash:
                raise RunDirError(f"{self.store.state_path} belongs to another config; pass --force")
            harvester.load_state_dict(state["harvester"])
            next_id, tokens_done, excerpts_done = state["next_id"], state["tokens"], state["excerpts_done"]
            for part in self.store.excerpts_dir.glob("part-*.parquet"):
                if int(part.stem.split("-")[1]) >= next_id:
                    part.unlink()  # written after the checkpoint we resume from
            logger.info("resuming harvest at excerpt %d", next_id)
        self.store.write_manifest(self._manifest("in_progress"))

        pending: list[dict[str, Any]] = []
        last_ckpt = time.monotonic()
        batch: list[tuple[Excerpt, str]] = []

        def flush_batch() -> None:
            nonlocal tokens_done, excerpts_done
            if not batch:
                return
            ids = torch.tensor([e.excerpt_id for e, _ in batch])
            input_ids = torch.tensor([e.token_ids for e, _ in batch])
            if self.bos:
                bos = torch.full((len(batch), 1), self.tokenizer.bos_token_id, dtype=input_ids.dtype)
                input_ids = torch.cat([bos, input_ids], 1)
            acts = self.source.activations(to_device(input_ids, device), self.layers)  # no stream sync
            if self.bos:
                acts = {layer: a[:, 1:] for layer, a in acts.items()}
            main = torch.tensor([kind == "main" for _, kind in batch])
            if (~main).any():
                harvester.update_pilot(ids[~main], {k: v[~main.to(v.device)] for k, v in acts.items()})
            if main.any():
                if main.all():  # the common case: no copy of every layer's activations, no device sync
                    harvester.update(ids, acts)
                else:
                    harvester.update(ids[main], {k: v[main.to(v.device)] for k, v in acts.items()})
                for e, kind in batch:
                    if kind == "main":
                        pending.append(
                            {
                                "excerpt_id": e.excerpt_id,
                                "doc_index": e.doc_index,
                                "token_start": e.token_start,
                                "token_ids": e.token_ids,
                                "tokens": decode_tokens(self.tokenizer, e.token_ids),
                            }
                        )
            excerpts_done += len(batch)
            tokens_done += len(batch) * cfg.excerpt_len
            batch.clear()

        def checkpoint(upto: int) -> None:
            nonlocal pending, last_ckpt
            if pending:
                write_table_atomic(
                    pa.Table.from_pylist(pending, schema=EXCERPTS),
                    self.store.excerpt_part_path(pending[0]["excerpt_id"]),
                )
            pending = []
            state = {
                "semantic_hash": self.semantic_hash,
                "next_id": upto,
                "tokens": tokens_done,
                "excerpts_done": excerpts_done,
                "harvester": harvester.state_dict(),
            }
            tmp = self.store.state_path.with_name(self.store.state_path.name + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, self.store.state_path)
            last_ckpt = time.monotonic()

        start, stop = self.range
        last_id = next_id - 1
        for excerpt in self._all():
            if excerpt.excerpt_id < next_id:
                continue
            if excerpt.excerpt_id >= max(stop, self.pilot if cfg.quantile_k else 0):
                break
            last_id = excerpt.excerpt_id
            kind = self._needed(excerpt.excerpt_id)
            if kind is None:
                continue
            batch.append((excerpt, kind))
            if len(batch) == cfg.batch_size:
                flush_batch()
                if progress:
                    progress(excerpts_done, tokens_done)
                if time.monotonic() - last_ckpt >= cfg.checkpoint_seconds:
                    checkpoint(last_id + 1)
        flush_batch()
        if progress:
            progress(excerpts_done, tokens_done)
        checkpoint(last_id + 1)
        if excerpts_done == 0 or not any(True for _ in self.store.excerpts_dir.glob("part-*.parquet")):
            raise CorpusError(f"the corpus has no excerpts in the requested range {self.range}")
        n_main = sum(pq_rows(p) for p in self.store.excerpts_dir.glob("part-*.parquet"))
        if n_main < stop - start:
            logger.warning("the corpus ran out: harvested %d excerpts of the %d requested", n_main, stop - start)
        if not harvester.pilot_done:
            harvester.finish_pilot()
        for layer, state in harvester.states.items():
            write_table_atomic(
                state.records_table(layer, cfg.record_dtype),
                self.store.records_path(layer),
                row_group_size=max(1, 64 * (cfg.top_k + cfg.random_k + N_BUCKETS * cfg.quantile_k)),
                **RECORDS_WRITE_OPTIONS,
            )
            write_table_atomic(state.stats_table(layer), self.store.stats_path(layer))
        result = {
            "n_excerpts": n_main,
            "n_tokens": n_main * cfg.excerpt_len,
            "excerpt_range": [start, start + n_main],
            "documents_read": self._docs.count,
        }
        manifest = self._manifest("complete", result)
        self.store.write_manifest(manifest)
        self.store.state_path.unlink(missing_ok=True)
        return manifest


def pq_rows(path: Path) -> int:
    """Row count of a Parquet file from its footer."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _config_diff(a, b, f"{prefix}{key}.")
            if sub:
                diffs.append(sub)
        elif a != b and key not in ("device", "batch_size", "checkpoint_seconds"):
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(diffs)
