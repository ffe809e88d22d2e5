"""The harvest reducer: per-layer streaming state that turns activation batches into kept records.

For every neuron of every requested layer it keeps, in memory independent of the corpus length:
- the top-k excerpts by maximum activation (ties: lower excerpt id first);
- k uniformly random excerpts (smallest sampling keys; the same excerpts for every neuron);
- per bucket of the excerpt-maximum distribution, k random excerpts, bucket boundaries being the
  quantiles of the maxima of the first `pilot` excerpts; buckets are sampled from later excerpts only,
  so one pass suffices;
- exact count, mean, central moments, min and max over all tokens.
No I/O and no model code: the harvest stage (stages/harvest.py) feeds batches and writes the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from neuron_explainer.activations.reducers import (
    Moments,
    Scratch,
    SelectK,
    SharedSelectK,
    bucketize,
    excerpt_keys,
    is_sync_free,
    quantile_boundaries,
)
from neuron_explainer.activations.selection import to_device
from neuron_explainer.datatypes import QUANTILES
from neuron_explainer.errors import ActivationError
from neuron_explainer.records.schema import NEURON_STATS, records_schema

RANDOM_STREAM = 0
QUANTILE_STREAM = 1
N_BUCKETS = len(QUANTILES) + 1
FLOAT16_MAX = 65504.0
NO_EXCERPT = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class HarvestShape:
    """Sizes and sampling settings that every layer state shares."""

    n_neurons: int
    seq_len: int
    top_k: int
    random_k: int
    quantile_k: int
    pilot: int
    """Excerpts [0, pilot) fix the quantile boundaries."""
    seed: int


class LayerState:
    """Streaming state of one layer.

    Control decisions (which excerpts are pilot or late, when the pilot is complete) use host-side
    excerpt ids only, and non-finite activations are flagged on the device: on a GPU the per-batch path
    never waits for the device. `check_finite` (called at every checkpoint and before any output) raises.
    """

    def __init__(
        self,
        shape: HarvestShape,
        device: torch.device | str,
        act_dtype: torch.dtype,
        layer: int = 0,
        *,
        sync_free: bool | None = None,
        scratch: Scratch | None = None,
    ) -> None:
        self.shape = shape
        self.layer = layer
        self.sync_free = is_sync_free(device) if sync_free is None else sync_free
        n, t = shape.n_neurons, shape.seq_len
        self.top = SelectK(shape.top_k, n, t, device=device, act_dtype=act_dtype, sync_free=self.sync_free)
        self.random = SharedSelectK(shape.random_k, n, t, device=device, act_dtype=act_dtype)
        self.buckets = SelectK(
            shape.quantile_k,
            n,
            t,
            device=device,
            act_dtype=act_dtype,
            sync_free=self.sync_free,
            score_dtype=torch.float64,
            groups=N_BUCKETS,
        )
        self.moments = Moments(n, device=device, scratch=scratch)
        self.pilot_max = torch.full((shape.pilot, n), float("nan"), dtype=torch.float32, device=device)
        self.pilot_filled = torch.zeros(shape.pilot, dtype=torch.bool)
        self.pilot_seen = 0
        self.boundaries: torch.Tensor | None = None
        self.first_bad = torch.full((), NO_EXCERPT, dtype=torch.int64, device=device)
        self.n_bad = torch.zeros((), dtype=torch.int64, device=device)

    def extremes(self, ids: torch.Tensor, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-excerpt (min, max) of activations (B, T, N), noting excerpts with a non-finite value."""
        minima, maxima = acts.amin(1), acts.amax(1)  # torch.aminmax over dim 1 is far slower on CPU
        self.note_finite(ids, minima, maxima)
        return minima, maxima

    def note_finite(self, ids: torch.Tensor, minima: torch.Tensor, maxima: torch.Tensor) -> None:
        """Note excerpts with a NaN or infinite activation from their (min, max) (B, N); on the CPU, raise.

        NaN propagates into both extremes and an infinity shows in one of them, so this is exactly
        "some value is not finite", with no pass over the activations beyond the extremes themselves.
        """
        if not self.sync_free and math.isfinite(float(minima.sum()) + float(maxima.sum())):
            return  # on the CPU: one look at two sums, into which NaN and inf propagate
        bad = ~(torch.isfinite(minima) & torch.isfinite(maxima)).all(1)
        self.first_bad = torch.minimum(self.first_bad, torch.where(bad, ids, NO_EXCERPT).amin())
        self.n_bad += bad.sum()
        if not self.sync_free:
            self.check_finite()  # on the CPU a check costs nothing: fail before the state is touched

    def check_finite(self) -> None:
        """Raise ActivationError if any excerpt seen so far had a NaN or infinite activation (syncs)."""
        n_bad = int(self.n_bad)
        if n_bad:
            more = f" and {n_bad - 1} more" if n_bad > 1 else ""
            raise ActivationError(
                f"non-finite (NaN or inf) activations in layer {self.layer}, excerpt {int(self.first_bad)}{more}: "
                "the model overflowed; try dtype=float32"
            )

    def update_pilot(self, ids: torch.Tensor, maxima: torch.Tensor) -> None:
        """Record maxima of pilot excerpts (host ids (B,)); fixes the boundaries once the pilot is complete."""
        if self.boundaries is not None:
            return
        rows = (ids < self.shape.pilot).nonzero().squeeze(1)
        if rows.numel():
            device = self.pilot_max.device
            self.pilot_max[to_device(ids[rows], device)] = maxima[to_device(rows, device)].float()
            self.pilot_filled[ids[rows]] = True
            self.pilot_seen += rows.numel()
        if self.pilot_seen >= self.shape.pilot:
            self.finish_pilot()

    def finish_pilot(self) -> None:
        """Fix boundaries from the pilot maxima seen so far (all of them, unless the corpus ran out)."""
        if self.boundaries is not None:
            return
        rows = self.pilot_filled.nonzero().squeeze(1)
        if rows.numel() == 0:
            seen = torch.zeros((1, self.shape.n_neurons), device=self.pilot_max.device)
        else:
            seen = self.pilot_max[to_device(rows, self.pilot_max.device)]
        self.boundaries = quantile_boundaries(seen, QUANTILES)
        self.pilot_max = self.pilot_max[:0]  # free the pilot buffer: it is never needed again

    def update(
        self,
        ids: torch.Tensor,
        acts: torch.Tensor,
        *,
        keys_random: torch.Tensor,
        keys_quantile: torch.Tensor,
        ids_device: torch.Tensor | None = None,
    ) -> None:
        """Offer a batch: host excerpt ids (B,) ascending, activations (B, T, N), host sampling keys (B,).

        `ids_device` is `ids` on the activations' device when the caller has it already.
        """
        n, device = acts.shape[2], acts.device
        ids_dev = to_device(ids, device) if ids_device is None else ids_device
        batch, minima, maxima = self.moments.reduce(acts)
        self.note_finite(ids_dev, minima, maxima)
        self.moments.merge(batch)
        self.top.update(maxima, ids_dev, acts)
        self.random.update(-keys_random, ids, acts)
        self.update_pilot(ids, maxima)
        if not self.shape.quantile_k or self.boundaries is None:
            return
        late = ids >= self.shape.pilot
        if not late.any():
            return
        keys = to_device(keys_quantile, device)
        if not late.all():  # only around the end of the pilot: the common case takes the batch as is
            rows = to_device(late.nonzero().squeeze(1), device)
            ids_dev, acts, maxima, keys = ids_dev[rows], acts[rows], maxima[rows], keys[rows]
        bucket = bucketize(maxima, self.boundaries)  # (B', N)
        self.buckets.update((-keys)[:, None].expand(len(keys), n), ids_dev, acts, group=bucket)

    # -- checkpointing -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume (raises first if a non-finite activation was seen)."""
        self.check_finite()
        return {
            "top": self.top.state_dict(),
            "random": self.random.state_dict(),
            "buckets": self.buckets.state_dict(),
            "moments": self.moments.state_dict(),
            "pilot_max": self.pilot_max,
            "pilot_seen": self.pilot_seen,
            "boundaries": self.boundaries,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`."""
        device = self.moments.mean.device
        self.top.load_state_dict(state["top"])
        self.random.load_state_dict(state["random"])
        self.buckets.load_state_dict(state["buckets"])
        self.moments.load_state_dict(state["moments"])
        self.pilot_max = state["pilot_max"].to(device)
        self.pilot_filled = ~torch.isnan(self.pilot_max[:, 0]).cpu()
        self.pilot_seen = int(state["pilot_seen"])
        b = state["boundaries"]
        self.boundaries = None if b is None else b.to(device)

    # -- output ----------------------------------------------------------------------------------
    def records_table(self, layer: int, record_dtype: str) -> pa.Table:
        """Kept records as an Arrow table, sorted by (neuron, kind, bucket, rank)."""
        self.check_finite()
        n = self.shape.n_neurons
        parts: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (kind code, bucket, ids, acts)
        for code, reducer in ((0, self.top), (1, self.random)):
            if reducer.k:
                parts.append((code, -1, reducer.sorted_ids(), reducer.sorted_acts()))
        if self.buckets.k:
            ids_b, acts_b = self.buckets.sorted_ids(), self.buckets.sorted_acts()
            parts += [(2, j, ids_b[:, j * n : (j + 1) * n], acts_b[:, j * n : (j + 1) * n]) for j in range(N_BUCKETS)]
        columns: dict[str, list[np.ndarray]] = {
            k: [] for k in ("neuron", "kind", "bucket", "rank", "excerpt_id", "max")
        }
        acts_parts: list[np.ndarray] = []
        for kind_code, bucket, ids_t, acts_t in parts:
            ids = ids_t.T.cpu().numpy()  # (N, k): neuron-major
            acts = acts_t.permute(1, 0, 2).float().cpu().numpy()  # (N, k, T)
            valid = ids >= 0
            neuron, rank = np.nonzero(valid)
            columns["neuron"].append(neuron)
            columns["rank"].append(rank)
            columns["kind"].append(np.full(len(neuron), kind_code))
            columns["bucket"].append(np.full(len(neuron), bucket))
            columns["excerpt_id"].append(ids[valid])
            sel = acts[valid]
            columns["max"].append(sel.max(axis=1) if len(sel) else np.zeros(0))
            acts_parts.append(sel)
        cat = {k: np.concatenate(v) for k, v in columns.items()}
        acts = np.concatenate(acts_parts).reshape(len(cat["neuron"]), -1)
        order = np.lexsort((cat["rank"], cat["bucket"], cat["kind"], cat["neuron"]))
        if record_dtype == "float16" and np.abs(acts).max(initial=0.0) > FLOAT16_MAX:
            raise ActivationError(
                f"layer {layer} has kept activations beyond float16 range (|a| > {FLOAT16_MAX}); "
                "rerun with record_dtype=float32"
            )
        np_dtype, pa_type = (np.float16, pa.float16()) if record_dtype == "float16" else (np.float32, pa.float32())
        flat = acts[order].astype(np_dtype).reshape(-1)
        seq_len = acts.shape[1]
        offsets = np.arange(0, len(order) * seq_len + 1, seq_len, dtype=np.int32)
        kind_dict = pa.DictionaryArray.from_arrays(
            pa.array(cat["kind"][order].astype(np.int8)), pa.array(["top", "random", "quantile"])
        )
        bucket_col = cat["bucket"][order]
        return pa.table(
            {
                "layer": pa.array(np.full(len(order), layer, dtype=np.int16)),
                "neuron": pa.array(cat["neuron"][order].astype(np.int32)),
                "kind": kind_dict,
                "bucket": pa.array(bucket_col.astype(np.int8), mask=bucket_col < 0),
                "rank": pa.array(cat["rank"][order].astype(np.int16)),
                "excerpt_id": pa.array(cat["excerpt_id"][order].astype(np.int32)),
                "max_activation": pa.array(cat["max"][order].astype(np.float32)),
                "activations": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa_type)),
            },
            schema=records_schema(pa_type),
        )

    def stats_table(self, layer: int) -> pa.Table:
        """Per-neuron statistics as an Arrow table, sorted by neuron."""
        self.check_finite()
        if self.boundaries is None:
            self.finish_pilot()
        assert self.boundaries is not None
        return stats_table(layer, self.moments, self.boundaries.T.cpu().numpy().astype(np.float64))


def stats_table(layer: int, moments: Moments, boundaries: np.ndarray) -> pa.Table:
    """The `neuron_stats` table of one layer from its moments and (N, 4) quantile boundaries."""
    stats = {k: v.cpu().numpy() for k, v in moments.stats().items()}
    positive = moments.positive.cpu().numpy()
    n = len(stats["mean"])
    return pa.table(
        {
            "layer": pa.array(np.full(n, layer, dtype=np.int16)),
            "neuron": pa.array(np.arange(n, dtype=np.int32)),
            "count": pa.array(np.full(n, moments.n, dtype=np.int64)),
            "mean": pa.array(stats["mean"]),
            "variance": pa.array(stats["variance"]),
            "skewness": pa.array(stats["skewness"], from_pandas=True),
            "kurtosis": pa.array(stats["kurtosis"], from_pandas=True),
            "min_activation": pa.array(stats["min"]),
            "max_activation": pa.array(stats["max"]),
            "positive_count": pa.array(positive),
            "density": pa.array(positive / max(moments.n, 1)),
            "quantile_boundaries": pa.FixedSizeListArray.from_arrays(pa.array(boundaries.reshape(-1)), 4),
            "m2": pa.array(moments.m2.cpu().numpy()),
            "m3": pa.array(moments.m3.cpu().numpy()),
            "m4": pa.array(moments.m4.cpu().numpy()),
        },
        schema=NEURON_STATS,
    )


class Harvester:
    """Streaming state of all requested layers.

    Excerpt ids come as host (CPU) tensors, as the driver builds them: sampling keys and pilot
    bookkeeping are computed from them on the host, so on a GPU nothing in `update` waits for the device.
    """

    def __init__(
        self,
        layers: Sequence[int],
        shape: HarvestShape,
        device: torch.device | str,
        act_dtype: torch.dtype,
        *,
        sync_free: bool | None = None,
    ) -> None:
        self.layers = list(layers)
        self.shape = shape
        scratch = Scratch()  # layers are reduced one after the other: they share work buffers
        self.states = {
            layer: LayerState(shape, device, act_dtype, layer=layer, sync_free=sync_free, scratch=scratch)
            for layer in self.layers
        }

    def update(self, ids: torch.Tensor, acts: dict[int, torch.Tensor]) -> None:
        """Offer one batch: host excerpt ids (B,) ascending, {layer: activations (B, T, N)}."""
        ids = ids.to("cpu", torch.int64)
        ids_dev = to_device(ids, next(iter(acts.values())).device)
        keys_random = excerpt_keys(self.shape.seed, RANDOM_STREAM, ids)
        keys_quantile = excerpt_keys(self.shape.seed, QUANTILE_STREAM, ids)
        for layer in self.layers:
            self.states[layer].update(
                ids, acts[layer], keys_random=keys_random, keys_quantile=keys_quantile, ids_device=ids_dev
            )

    def update_pilot(self, ids: torch.Tensor, acts: dict[int, torch.Tensor]) -> None:
        """Offer a batch of pilot excerpts that lie outside this shard (maxima only)."""
        ids = ids.to("cpu", torch.int64)
        ids_dev = to_device(ids, next(iter(acts.values())).device)
        for layer in self.layers:
            state = self.states[layer]
            state.update_pilot(ids, state.extremes(ids_dev, acts[layer])[1])

    def check_finite(self) -> None:
        """Raise ActivationError if any layer saw a non-finite activation (waits for the device)."""
        for state in self.states.values():
            state.check_finite()

    def finish_pilot(self) -> None:
        """Fix boundaries now (the corpus ended before the pilot did)."""
        for state in self.states.values():
            state.finish_pilot()

    @property
    def pilot_done(self) -> bool:
        """Whether every layer has fixed its quantile boundaries."""
        return all(s.boundaries is not None for s in self.states.values())

    def state_dict(self) -> dict:
        """Per-layer resumable state (raises first if a non-finite activation was seen)."""
        self.check_finite()
        return {layer: s.state_dict() for layer, s in self.states.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`."""
        for layer, s in self.states.items():
            s.load_state_dict(state[layer])


def without_dead_features(records: pa.Table, stats: pa.Table) -> tuple[pa.Table, int]:
    """The records of features that fired somewhere (max activation > 0), and how many never did.

    Sparse features (SAE latents) are often dead: their records would be all zeros. Their statistics
    rows stay, so a reader can tell a dead feature from a missing one.
    """
    live = pc.greater(stats["max_activation"], 0.0)
    alive = pc.filter(stats["neuron"], live)
    kept = records.filter(pc.is_in(records["neuron"], value_set=alive))
    return kept, stats.num_rows - len(alive)
