import numpy as np
import pytest
import scipy.stats

from neuron_explainer.prompts.formatting import normalize_activations
from neuron_explainer.scoring.correlation import score_correlation


def random_records(rng: np.random.Generator, n: int = 6, t: int = 16) -> list[list[float]]:
    return [list(rng.gamma(0.3, size=t) * rng.choice([0.0, 1.0, 3.0])) for _ in range(n)]


def test_pooled_correlation_and_ev_equal_direct_computation() -> None:
    rng = np.random.default_rng(0)
    true = random_records(rng)
    sim = [list(np.asarray(a) * 2 + rng.normal(size=len(a))) for a in true]
    score = score_correlation(true, sim)
    a, s = np.concatenate(true), np.concatenate(sim)
    r = scipy.stats.pearsonr(a, s).statistic
    assert abs(score.correlation - r) < 1e-12
    calibrated = a.mean() + (s - s.mean()) / s.std() * r * a.std()
    ev = 1 - np.mean((calibrated - a) ** 2) / np.var(a)
    assert abs(score.explained_variance - ev) < 1e-12
    assert abs(score.explained_variance - r**2) < 1e-12  # calibrated on the scored data, EV is r^2
    for got, x, y in zip(score.per_excerpt, true, sim, strict=True):
        if np.std(x) == 0:
            assert got is None
        else:
            assert abs(got - scipy.stats.pearsonr(x, y).statistic) < 1e-12
    assert score.n_tokens == a.size


def test_perfect_simulation_scores_one() -> None:
    rng = np.random.default_rng(1)
    true = random_records(rng)
    top = max(max(x) for x in true)
    sim = [normalize_activations(x, top) for x in true]  # a simulator that outputs the true 0-10 level
    sim_exact = [list(np.asarray(x) / top * 10) for x in true]
    assert score_correlation(true, sim_exact).correlation == pytest.approx(1.0, abs=1e-12)
    assert score_correlation(true, sim).correlation > 0.95  # flooring to integers costs a little


def test_constant_simulation_is_undefined_not_nan() -> None:
    true = [[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]]
    score = score_correlation(true, [[5.0] * 3, [5.0] * 3])
    assert score.correlation is None and score.explained_variance is None
    assert score.undefined_reason == "constant simulation" and not score.defined
    assert score_correlation([[1.0, 1.0]], [[0.0, 2.0]]).undefined_reason == "constant activations"


def test_shuffled_simulation_scores_about_zero() -> None:
    rng = np.random.default_rng(2)
    true = [list(rng.gamma(0.5, size=64)) for _ in range(50)]
    flat = np.concatenate(true)
    shuffled = rng.permutation(flat)
    sim = [list(x) for x in np.split(shuffled, 50)]
    assert abs(score_correlation(true, sim).correlation) < 0.05


def test_shape_mismatch_and_nan_are_errors() -> None:
    with pytest.raises(ValueError, match="2 true activations but 3"):
        score_correlation([[1.0, 2.0]], [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="finite"):
        score_correlation([[1.0, 2.0]], [[1.0, float("nan")]])
