"""The sync-free (GPU) reducer path keeps exactly what the sparse (CPU) path keeps, and never syncs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from neuron_explainer.activations.harvest import Harvester, HarvestShape
from neuron_explainer.activations.reducers import SelectK, SharedSelectK
from neuron_explainer.errors import ActivationError

SHAPE = HarvestShape(n_neurons=6, seq_len=5, top_k=4, random_k=3, quantile_k=2, pilot=20, seed=9)


def batches(n: int, seed: int, quantized: bool = True) -> list[tuple[torch.Tensor, dict[int, torch.Tensor]]]:
    """Batches of uneven sizes for layers 0 and 3, with many exact ties when quantized."""
    rng = np.random.default_rng(seed)
    acts = rng.normal(size=(2, n, SHAPE.seq_len, SHAPE.n_neurons)).astype(np.float32)
    if quantized:
        acts = np.round(acts * 2) / 2
    out, start = [], 0
    for size in [1, 7, 3, 8, 2, 9, 5] * n:
        if start >= n:
            break
        stop = min(n, start + size)
        layers = {0: torch.tensor(acts[0, start:stop]), 3: torch.tensor(acts[1, start:stop])}
        out.append((torch.arange(start, stop), layers))
        start = stop
    return out


def run(sync_free: bool, data: list, pilot_only: int = 0) -> Harvester:
    h = Harvester([0, 3], SHAPE, "cpu", torch.float32, sync_free=sync_free)
    for ids, acts in data:
        if int(ids[-1]) < pilot_only:
            h.update_pilot(ids, acts)
        else:
            h.update(ids, acts)
    if not h.pilot_done:
        h.finish_pilot()
    return h


@pytest.mark.parametrize("quantized", [True, False])
@pytest.mark.parametrize("pilot_only", [0, 8])
def test_sync_free_and_sparse_harvests_are_identical(quantized: bool, pilot_only: int) -> None:
    data = batches(70, seed=1, quantized=quantized)
    sparse, dense = run(False, data, pilot_only), run(True, data, pilot_only)
    for layer in (0, 3):
        a, b = sparse.states[layer], dense.states[layer]
        for record_dtype in ("float32", "float16"):
            assert a.records_table(layer, record_dtype).equals(b.records_table(layer, record_dtype))
        assert a.stats_table(layer).equals(b.stats_table(layer))


def brute_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Per column: rows of the k best by (score desc, row asc), -inf excluded, -1 padded."""
    out = np.full((k, scores.shape[1]), -1)
    for c in range(scores.shape[1]):
        rows = sorted((r for r in range(len(scores)) if scores[r, c] != -np.inf), key=lambda r: (-scores[r, c], r))
        out[: len(rows[:k]), c] = rows[:k]
    return out


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("batch", [1, 4, 11])
def test_grouped_selectk_matches_brute_force(sync_free: bool, batch: int) -> None:
    rng = np.random.default_rng(batch)
    n, t, nn, k, groups = 40, 3, 5, 3, 3
    acts = torch.tensor(rng.normal(size=(n, t, nn)).astype(np.float32))
    group = torch.tensor(rng.integers(0, groups, size=(n, nn)))
    scores = torch.tensor(np.round(rng.normal(size=(n, nn)), 1))  # ties
    red = SelectK(k, nn, t, device="cpu", act_dtype=torch.float32, score_dtype=torch.float64, groups=groups,
                  sync_free=sync_free)  # fmt: skip
    for s in range(0, n, batch):
        red.update(scores[s : s + batch], torch.arange(s, min(n, s + batch)), acts[s : s + batch], group[s : s + batch])
    full = torch.cat([torch.where(group == g, scores, float("-inf")) for g in range(groups)], 1).numpy()
    want = brute_topk(full, k)
    got_acts = red.sorted_acts()
    assert np.array_equal(red.sorted_ids().numpy(), want)
    for rank, col in zip(*np.nonzero(want >= 0), strict=True):
        assert torch.equal(got_acts[rank, col], acts[want[rank, col], :, col % nn])


def test_shared_selectk_matches_brute_force_and_loads_the_old_layout() -> None:
    rng = np.random.default_rng(3)
    n, t, nn, k = 30, 4, 5, 6
    acts = torch.tensor(rng.normal(size=(n, t, nn)).astype(np.float32))
    scores = torch.tensor(np.round(rng.random(n), 1))  # ties
    shared = SharedSelectK(k, nn, t, device="cpu", act_dtype=torch.float32)
    per_neuron = SelectK(k, nn, t, device="cpu", act_dtype=torch.float32, score_dtype=torch.float64)
    for s in range(0, n, 4):
        ids = torch.arange(s, min(n, s + 4))
        shared.update(scores[ids], ids, acts[ids])
        per_neuron.update(scores[ids][:, None].expand(len(ids), nn), ids, acts[ids])
    want = brute_topk(scores.numpy()[:, None], k)[:, 0]
    assert shared.sorted_ids()[:, 0].tolist() == want.tolist()
    assert torch.equal(shared.sorted_ids(), per_neuron.sorted_ids())
    assert torch.equal(shared.sorted_acts(), per_neuron.sorted_acts())
    restored = SharedSelectK(k, nn, t, device="cpu", act_dtype=torch.float32)
    restored.load_state_dict(per_neuron.state_dict())  # a checkpoint written before the shared reducer
    assert torch.equal(restored.sorted_acts(), shared.sorted_acts())
    again = SharedSelectK(k, nn, t, device="cpu", act_dtype=torch.float32)
    again.load_state_dict(shared.state_dict())
    assert torch.equal(again.sorted_ids(), shared.sorted_ids())


def tensors_in(value: object) -> list[torch.Tensor]:
    """Every tensor inside nested tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    return []


class HostTransfers(TorchFunctionMode):
    """Records blocking host-to-device copies and calls mixing host arrays with device tensors.

    On CUDA a plain `.to("cuda")` of a host tensor synchronises the stream, and a host index into a
    device tensor is such a copy; the meta device accepts both silently, so they are caught here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", repr(func))
        if func is torch.Tensor.to:
            moved = isinstance(out, torch.Tensor) and args[0].device.type == "cpu" and out.device.type != "cpu"
            if moved and not kwargs.get("non_blocking"):
                self.bad.append(f"blocking host-to-device copy ({name})")
        else:
            seen = {t.device.type for t in tensors_in((args, kwargs)) if t.dim() > 0 or t.device.type != "cpu"}
            if "cpu" in seen and len(seen) > 1:
                self.bad.append(f"{name} mixes host and device tensors")
        return out


def test_per_batch_path_never_syncs() -> None:
    """On the meta device every host sync fails: .item(), bool(), .cpu(), .tolist(), nonzero, mask indexing.

    So a sync-free harvest that runs there waits for the device nowhere; `HostTransfers` catches the
    host-to-device copies that would. The sparse path, which does sync, fails there.
    """
    shape = HarvestShape(n_neurons=8, seq_len=4, top_k=3, random_k=2, quantile_k=2, pilot=6, seed=0)
    h = Harvester([0, 1], shape, "meta", torch.bfloat16)
    assert all(s.sync_free for s in h.states.values())
    batches = [(torch.arange(start, start + 4), start) for start in range(0, 20, 4)]  # crosses the pilot's end
    with HostTransfers() as transfers:
        for ids, start in batches:
            acts = {layer: torch.empty(4, 4, 8, dtype=torch.bfloat16, device="meta") for layer in (0, 1)}
            if start == 0:
                h.update_pilot(ids, acts)
            else:
                h.update(ids, acts)
    assert transfers.bad == []
    assert h.pilot_done
    with pytest.raises((RuntimeError, NotImplementedError)):
        h.check_finite()  # the one deliberate sync
    sparse = Harvester([0], shape, "meta", torch.bfloat16, sync_free=False)
    with pytest.raises((RuntimeError, NotImplementedError)):
        sparse.update(torch.arange(4), {0: torch.empty(4, 4, 8, dtype=torch.bfloat16, device="meta")})


def test_host_transfers_catches_blocking_copies() -> None:
    with HostTransfers() as transfers:
        torch.arange(3).to("meta")
        torch.empty(3, device="meta")[torch.arange(2)]
        torch.arange(3).to("meta", non_blocking=True)
    assert len(transfers.bad) == 2


@pytest.mark.parametrize("sync_free", [False, True])
def test_non_finite_activations_raise_by_the_next_checkpoint(sync_free: bool) -> None:
    data = batches(30, seed=2)
    data[2][1][3][1, 2, 4] = float("nan")
    data[4][1][3][0, 0, 0] = float("inf")
    h = Harvester([0, 3], SHAPE, "cpu", torch.float32, sync_free=sync_free)
    bad_id = int(data[2][0][1])
    with pytest.raises(ActivationError, match=rf"non-finite \(NaN or inf\) activations in layer 3, excerpt {bad_id}"):
        for ids, acts in data:
            h.update(ids, acts)
        h.state_dict()  # a checkpoint: the sync-free path raises here at the latest
