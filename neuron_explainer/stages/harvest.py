"""The harvest stage: subject model + corpus + streaming reducer -> records and statistics, resumable.

Validation comes first and writes nothing: a bad config, model, layer or corpus fails before the run
directory is touched. While running, state is checkpointed atomically (excerpt part file first, then
the reducer state), so a killed harvest redoes at most one checkpoint interval and ends identical to an
uninterrupted one. The reducer itself (what is kept per neuron) is activations/harvest.py.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from neuron_explainer.activations.corpus import Excerpt, iter_excerpts, open_corpus
from neuron_explainer.activations.harvest import Harvester, HarvestShape, without_dead_features
from neuron_explainer.activations.models import SubjectModel, load_subject_model
from neuron_explainer.activations.selection import to_device
from neuron_explainer.activations.subject import wants_bos
from neuron_explainer.activations.text import decode_tokens
from neuron_explainer.config.sections import HarvestConfig, harvest_config_diff, harvest_semantic_hash
from neuron_explainer.datatypes import N_BUCKETS, QUANTILES
from neuron_explainer.directions.covariance import HarvestCovariance, covariance_layers
from neuron_explainer.errors import CorpusError, RunDirError
from neuron_explainer.features.source import make_source, source_options
from neuron_explainer.plan import HarvestPlan, estimate_disk_bytes
from neuron_explainer.records.schema import EXCERPTS, RECORDS_WRITE_OPTIONS, SCHEMA_VERSION
from neuron_explainer.records.store import RunStore, write_table_atomic
from neuron_explainer.stages.runtime import Deps, StageReport

logger = logging.getLogger(__name__)

ExcerptProgress = Callable[[int, int], None]
"""Called with (excerpts processed so far, tokens processed so far) after every batch."""


def git_sha() -> str | None:
    """The commit of the checkout the package runs from, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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
    """One harvest: validated inputs on construction (nothing written), then `run()`."""

    def __init__(
        self, cfg: HarvestConfig, out: str | Path, *, force: bool = False, subject: SubjectModel | None = None
    ) -> None:
        self.cfg = cfg
        self.store = RunStore(out)
        self.force = force
        self.semantic_hash = harvest_semantic_hash(cfg)
        self.already_complete = self._check_existing()
        if self.already_complete:
            return
        self.subject = subject or load_subject_model(
            cfg.model, revision=cfg.model_revision, dtype=cfg.dtype, device=cfg.device
        )
        self.source = make_source(cfg.features, self.subject.model, self.subject.hook_point, **source_options(cfg))
        self.layers = sorted(cfg.layers) if cfg.layers is not None else self.source.default_layers()
        self.source.check_layers(self.layers)
        self.covariance_layers = covariance_layers(cfg, self.source)
        self.capture_layers = sorted(set(self.layers) | set(self.covariance_layers))
        self.tokenizer = self.subject.tokenizer
        self.bos = wants_bos(self.tokenizer, cfg.prepend_bos)
        self.corpus = open_corpus(cfg.corpus)
        self.range = cfg.excerpt_range or (0, cfg.n_excerpts)
        self.pilot = cfg.pilot_excerpts
        self._docs = _CountingDocs(self.corpus.documents())
        self._stream = iter_excerpts(
            self._docs,
            lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"],
            excerpt_len=cfg.excerpt_len,
            seed=cfg.seed,
            excerpts_per_doc=cfg.corpus.excerpts_per_doc,
            limit=cfg.n_excerpts,
        )
        self._first = self._peek()

    def _check_existing(self) -> bool:
        existing = None if self.force else self.store.read_manifest()
        if existing is None or "harvest" not in existing:
            return False
        old = existing["harvest"]
        if old.get("semantic_hash") != self.semantic_hash:
            diff = harvest_config_diff(old.get("config", {}), self.cfg.model_dump(mode="json"))
            raise RunDirError(
                f"{self.store.root} holds a harvest made with a different config ({diff}); "
                "choose another --out or pass --force to delete it and start over"
            )
        return existing.get("status", {}).get("harvest") == "complete"

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
            "git_sha": git_sha(),
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
                "features": self.source.provenance(),
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

    def run(self, progress: ExcerptProgress | None = None) -> dict[str, Any]:
        """Harvest (or resume) and write the outputs. Returns the final manifest."""
        if self.already_complete:
            manifest = self.store.read_manifest()
            assert manifest is not None
            return manifest
        if self.force:
            self.store.clear_harvest()
        cfg = self.cfg
        act_dtype = next(self.subject.model.parameters()).dtype
        shape = HarvestShape(
            self.source.n_neurons, cfg.excerpt_len, cfg.top_k, cfg.random_k, cfg.quantile_k, self.pilot, cfg.seed
        )
        loop = _HarvestLoop(self, Harvester(self.layers, shape, torch.device(cfg.device), act_dtype))
        loop.restore()
        self.store.write_manifest(self._manifest("in_progress"))
        loop.stream(progress)
        return self._finish(loop)

    def _finish(self, loop: _HarvestLoop) -> dict[str, Any]:
        cfg, (start, stop) = self.cfg, self.range
        parts = list(self.store.excerpts_dir.glob("part-*.parquet"))
        if loop.excerpts_done == 0 or not parts:
            raise CorpusError(f"the corpus has no excerpts in the requested range {self.range}")
        n_main = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        if n_main < stop - start:
            logger.warning("the corpus ran out: harvested %d excerpts of the %d requested", n_main, stop - start)
        if not loop.harvester.pilot_done:
            loop.harvester.finish_pilot()
        dead: dict[int, int] = {}
        for layer, state in loop.harvester.states.items():
            records, stats = state.records_table(layer, cfg.record_dtype), state.stats_table(layer)
            if self.source.kind != "mlp" and cfg.excerpt_range is None:
                records, dead[layer] = without_dead_features(records, stats)
            write_table_atomic(
                records,
                self.store.records_path(layer),
                row_group_size=max(1, 64 * (cfg.top_k + cfg.random_k + N_BUCKETS * cfg.quantile_k)),
                **RECORDS_WRITE_OPTIONS,
            )
            write_table_atomic(stats, self.store.stats_path(layer))
        loop.covariance.write(self.store.root)
        result = {
            "n_excerpts": n_main,
            "n_tokens": n_main * cfg.excerpt_len,
            "excerpt_range": [start, start + n_main],
            "documents_read": self._docs.count,
            **({"dead_features": {str(k): v for k, v in dead.items()}} if dead else {}),
        }
        manifest = self._manifest("complete", result)
        self.store.write_manifest(manifest)
        self.store.state_path.unlink(missing_ok=True)
        return manifest


class _HarvestLoop:
    """The streaming part of one harvest: batches in, reducer updates, excerpt parts and checkpoints out."""

    def __init__(self, run: HarvestRun, harvester: Harvester) -> None:
        self.run, self.harvester = run, harvester
        self.covariance = HarvestCovariance(run.covariance_layers, run.source.n_neurons, run.cfg.device)
        """Covariances of `harvest.covariance_layers` (directions/covariance.py), main-range excerpts only."""
        self.device = torch.device(run.cfg.device)
        self.next_id = self.tokens_done = self.excerpts_done = 0
        self.pending: list[dict[str, Any]] = []
        self.batch: list[tuple[Excerpt, str]] = []
        self.last_ckpt = time.monotonic()

    def restore(self) -> None:
        """Continue from a checkpoint if there is one (dropping excerpt parts written after it)."""
        store = self.run.store
        if not store.state_path.exists():
            return
        state = torch.load(store.state_path, weights_only=False, map_location=self.device)
        if state["semantic_hash"] != self.run.semantic_hash:
            raise RunDirError(f"{store.state_path} belongs to another config; pass --force")
        self.harvester.load_state_dict(state["harvester"])
        self.covariance.load_state_dict(state.get("covariance", {}))
        self.next_id, self.tokens_done, self.excerpts_done = state["next_id"], state["tokens"], state["excerpts_done"]
        for part in store.excerpts_dir.glob("part-*.parquet"):
            if int(part.stem.split("-")[1]) >= self.next_id:
                part.unlink()  # written after the checkpoint we resume from
        logger.info("resuming harvest at excerpt %d", self.next_id)

    def stream(self, progress: ExcerptProgress | None) -> None:
        """Feed every needed excerpt from the resume point on, checkpointing as configured."""
        cfg, run = self.run.cfg, self.run
        stop = max(run.range[1], run.pilot if cfg.quantile_k else 0)
        last_id = self.next_id - 1
        for excerpt in itertools.chain([run._first], run._stream):
            if excerpt.excerpt_id < self.next_id:
                continue
            if excerpt.excerpt_id >= stop:
                break
            last_id = excerpt.excerpt_id
            kind = run._needed(excerpt.excerpt_id)
            if kind is None:
                continue
            self.batch.append((excerpt, kind))
            if len(self.batch) == cfg.batch_size:
                self.flush_batch()
                if progress:
                    progress(self.excerpts_done, self.tokens_done)
                if time.monotonic() - self.last_ckpt >= cfg.checkpoint_seconds:
                    self.checkpoint(last_id + 1)
        self.flush_batch()
        if progress:
            progress(self.excerpts_done, self.tokens_done)
        self.checkpoint(last_id + 1)

    def flush_batch(self) -> None:
        """Run the model on the batch and offer its activations to the reducer."""
        if not self.batch:
            return
        run = self.run
        ids = torch.tensor([e.excerpt_id for e, _ in self.batch])
        input_ids = torch.tensor([e.token_ids for e, _ in self.batch])
        if run.bos:
            bos = torch.full((len(self.batch), 1), run.tokenizer.bos_token_id, dtype=input_ids.dtype)
            input_ids = torch.cat([bos, input_ids], 1)
        acts = run.source.activations(to_device(input_ids, self.device), run.capture_layers)  # no stream sync
        if run.bos:
            acts = {layer: a[:, 1:] for layer, a in acts.items()}
        main = torch.tensor([kind == "main" for _, kind in self.batch])
        if (~main).any():
            self.harvester.update_pilot(ids[~main], {k: v[~main.to(v.device)] for k, v in acts.items()})
        if main.any():
            # the common case, every excerpt a main one, copies no activations and waits on no device
            main_acts = acts if main.all() else {k: v[main.to(v.device)] for k, v in acts.items()}
            self.harvester.update(ids[main], main_acts)
            self.covariance.update(main_acts)
            self.pending += [
                {
                    "excerpt_id": e.excerpt_id,
                    "doc_index": e.doc_index,
                    "token_start": e.token_start,
                    "token_ids": e.token_ids,
                    "tokens": decode_tokens(run.tokenizer, e.token_ids),
                }
                for e, kind in self.batch
                if kind == "main"
            ]
        self.excerpts_done += len(self.batch)
        self.tokens_done += len(self.batch) * run.cfg.excerpt_len
        self.batch.clear()

    def checkpoint(self, upto: int) -> None:
        """Write pending excerpts, then the reducer state (atomically, in that order)."""
        store = self.run.store
        if self.pending:
            write_table_atomic(
                pa.Table.from_pylist(self.pending, schema=EXCERPTS),
                store.excerpt_part_path(self.pending[0]["excerpt_id"]),
            )
        self.pending = []
        state = {
            "semantic_hash": self.run.semantic_hash,
            "next_id": upto,
            "tokens": self.tokens_done,
            "excerpts_done": self.excerpts_done,
            "harvester": self.harvester.state_dict(),
            "covariance": self.covariance.state_dict(),
        }
        tmp = store.state_path.with_name(store.state_path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, store.state_path)
        self.last_ckpt = time.monotonic()


async def run(store: RunStore, cfg: HarvestConfig, deps: Deps) -> StageReport:
    """Harvest `cfg` into `store` (resuming, or nothing to do if complete with the same config)."""
    report = StageReport("harvest", planned=1)
    harvest = HarvestRun(cfg, store.root, force=deps.force)
    if harvest.already_complete:
        deps.notify(f"harvest in {store.root} is already complete (same config); nothing to do")
        report.skipped_done = 1
        return report
    plan = harvest.plan()
    deps.notify(plan.describe(cfg.corpus.source, store.root))
    t0 = time.monotonic()
    manifest = harvest.run(progress=lambda done, _tokens: deps.report_progress("harvest", done, plan.n_excerpts))
    result = manifest["harvest"]["result"]
    seconds = time.monotonic() - t0
    deps.notify(
        f"harvested {result['n_excerpts']} excerpts ({result['n_tokens']:,} tokens) in {seconds:.1f} s "
        f"({result['n_tokens'] / max(seconds, 1e-9):,.0f} tokens/s) -> {store.root}"
    )
    report.completed = 1
    report.details = {"result": result, "seconds": seconds}
    return report
