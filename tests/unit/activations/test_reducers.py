import numpy as np
import pytest
import scipy.stats
import torch

from neuron_explainer.activations.reducers import Moments, SelectK, bucketize, excerpt_keys, quantile_boundaries


def brute_topk(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column: indices of the k best rows by (score desc, id asc), excluding -inf."""
    out_idx = np.full((k, scores.shape[1]), -1)
    for c in range(scores.shape[1]):
        rows = [r for r in range(len(ids)) if scores[r, c] != -np.inf]
        rows.sort(key=lambda r: (-scores[r, c], ids[r]))
        rows = rows[:k]
        out_idx[: len(rows), c] = rows
    return out_idx


@pytest.mark.parametrize("quantized", [False, True])
@pytest.mark.parametrize("batch", [1, 3, 7])
def test_selectk_matches_brute_force(quantized: bool, batch: int) -> None:
    rng = np.random.default_rng(1)
    n, t, nn, k = 40, 5, 6, 4
    acts = rng.normal(size=(n, t, nn)).astype(np.float32)
    if quantized:  # many exact ties
        acts = np.round(acts * 2) / 2
    scores = acts.max(1)
    scores[rng.random(scores.shape) < 0.2] = -np.inf  # ineligible candidates
    ids = np.arange(n)
    red = SelectK(k, nn, t, device="cpu", act_dtype=torch.float32)
    for s in range(0, n, batch):
        red.update(
            torch.tensor(scores[s : s + batch]), torch.tensor(ids[s : s + batch]), torch.tensor(acts[s : s + batch])
        )
    want = brute_topk(scores, ids, k)
    got_ids = red.sorted_ids().numpy()
    got_acts = red.sorted_acts().numpy()
    for c in range(nn):
        for r in range(k):
            if want[r, c] < 0:
                assert got_ids[r, c] == -1
            else:
                assert got_ids[r, c] == ids[want[r, c]]
                np.testing.assert_array_equal(got_acts[r, c], acts[want[r, c], :, c])


def test_selectk_merge_equals_single_stream() -> None:
    rng = np.random.default_rng(2)
    n, t, nn, k = 30, 4, 5, 6
    acts = np.round(rng.normal(size=(n, t, nn)), 1).astype(np.float32)
    scores = torch.tensor(acts.max(1))
    ids = torch.arange(n)
    whole = SelectK(k, nn, t, device="cpu", act_dtype=torch.float32)
    whole.update(scores, ids, torch.tensor(acts))
    a = SelectK(k, nn, t, device="cpu", act_dtype=torch.float32)
    b = SelectK(k, nn, t, device="cpu", act_dtype=torch.float32)
    a.update(scores[:13], ids[:13], torch.tensor(acts[:13]))
    b.update(scores[13:], ids[13:], torch.tensor(acts[13:]))
    b.merge(a)  # other order on purpose
    assert torch.equal(b.sorted_ids(), whole.sorted_ids())
    assert torch.equal(b.sorted_acts(), whole.sorted_acts())


def test_moments_match_scipy_and_merge() -> None:
    rng = np.random.default_rng(3)
    x = (rng.gamma(0.5, size=(1000, 7)) * 3 + 100).astype(np.float32)  # skewed, large mean
    m = Moments(7, device="cpu")
    for s in range(0, 1000, 128):
        m.update(torch.tensor(x[s : s + 128]).reshape(-1, 8, 7))
    st = {k: v.numpy() for k, v in m.stats().items()}
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(st["mean"], x64.mean(0), rtol=1e-7)
    np.testing.assert_allclose(st["variance"], x64.var(0), rtol=1e-5)
    np.testing.assert_allclose(st["skewness"], scipy.stats.skew(x64, axis=0), rtol=1e-4)
    np.testing.assert_allclose(st["kurtosis"], scipy.stats.kurtosis(x64, axis=0), rtol=1e-4)
    np.testing.assert_array_equal(st["max"], x64.max(0))
    np.testing.assert_array_equal(st["min"], x64.min(0))
    a, b = Moments(7, device="cpu"), Moments(7, device="cpu")
    a.update(torch.tensor(x[:300])[None])
    b.update(torch.tensor(x[300:])[None])
    a.merge(b)
    np.testing.assert_allclose(a.stats()["kurtosis"].numpy(), st["kurtosis"], rtol=1e-6)


def test_moments_count_positive_tokens_through_merges() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 16, 9)).astype(np.float32) - np.linspace(-2, 2, 9, dtype=np.float32)
    x[:, :, 0] = 0.0  # zero is not active
    whole, a, b = (Moments(9, device="cpu") for _ in range(3))
    whole.update(torch.tensor(x))
    a.update(torch.tensor(x[:13]))
    b.update(torch.tensor(x[13:]))
    b.merge(a)
    want = (x > 0).sum((0, 1))
    np.testing.assert_array_equal(whole.positive.numpy(), want)
    np.testing.assert_array_equal(b.positive.numpy(), want)
    restored = Moments(9, device="cpu")
    restored.load_state_dict(b.state_dict())
    np.testing.assert_array_equal(restored.positive.numpy(), want)


def test_moments_constant_neuron_gives_nan_shape_stats() -> None:
    m = Moments(2, device="cpu")
    m.update(torch.tensor([[[1.0, 0.0], [1.0, 2.0]]]))
    st = m.stats()
    assert st["variance"][0] == 0 and torch.isnan(st["skewness"][0]) and torch.isnan(st["kurtosis"][0])
    assert not torch.isnan(st["kurtosis"][1])


def test_quantile_boundaries_match_numpy() -> None:
    x = np.random.default_rng(4).normal(size=(101, 3))
    q = (0.5, 0.9, 0.99, 0.999)
    np.testing.assert_allclose(quantile_boundaries(torch.tensor(x), q).numpy(), np.quantile(x, q, axis=0), rtol=1e-12)


def test_bucketize_counts_boundaries_at_or_below() -> None:
    bounds = torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64)
    vals = torch.tensor([[-1.0], [0.0], [1.5], [3.0], [9.0]])
    assert bucketize(vals, bounds)[:, 0].tolist() == [0, 1, 2, 4, 4]


def test_excerpt_keys_deterministic_uniform_and_streams_differ() -> None:
    ids = torch.arange(20000)
    a = excerpt_keys(0, 0, ids)
    assert torch.equal(a, excerpt_keys(0, 0, ids))
    assert not torch.equal(a, excerpt_keys(1, 0, ids))
    assert not torch.equal(a, excerpt_keys(0, 1, ids))
    assert a.min() >= 0 and a.max() < 1
    assert scipy.stats.kstest(a.numpy(), "uniform").pvalue > 1e-3
    assert len(set(a.tolist())) == len(ids)


def test_grouped_selectk_equals_separate_reducers() -> None:
    rng = np.random.default_rng(5)
    n, t, nn, k, groups = 24, 3, 4, 3, 3
    acts = torch.tensor(rng.normal(size=(n, t, nn)).astype(np.float32))
    group_of = torch.tensor(rng.integers(0, groups, size=(n, nn)))
    keys = torch.tensor(rng.random(n))
    grouped = SelectK(k, nn, t, device="cpu", act_dtype=torch.float32, score_dtype=torch.float64, groups=groups)
    separate = [
        SelectK(k, nn, t, device="cpu", act_dtype=torch.float32, score_dtype=torch.float64) for _ in range(groups)
    ]
    for s in range(0, n, 5):
        sl = slice(s, s + 5)
        ids = torch.arange(n)[sl]
        score = -keys[sl][:, None].expand(len(ids), nn)
        grouped.update(score, ids, acts[sl], group=group_of[sl])
        for g in range(groups):
            separate[g].update(torch.where(group_of[sl] == g, score, float("-inf")), ids, acts[sl])
    for g in range(groups):
        assert torch.equal(grouped.sorted_ids()[:, g * nn : (g + 1) * nn], separate[g].sorted_ids())
        assert torch.equal(grouped.sorted_acts()[:, g * nn : (g + 1) * nn], separate[g].sorted_acts())
