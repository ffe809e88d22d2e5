"""The update step, the neurons-needed count and the explanation history, against brute force."""

from __future__ import annotations

import numpy as np
import torch

from neuron_explainer.directions.pool import neurons_needed, pearson, update_direction
from neuron_explainer.directions.results import best_earlier, history, rounds_by_direction


def test_pearson_matches_numpy_and_is_zero_when_constant() -> None:
    rng = np.random.default_rng(0)
    a, s = rng.normal(size=50), rng.normal(size=50) + 0.3 * np.arange(50)
    got = float(pearson(torch.tensor(a), torch.tensor(s)))
    assert abs(got - np.corrcoef(a, s)[0, 1]) < 1e-12
    assert float(pearson(torch.tensor(a), torch.ones(50, dtype=torch.float64))) == 0.0


def test_update_step_climbs_to_the_direction_that_explains_the_simulation() -> None:
    rng = np.random.default_rng(1)
    whitened = rng.normal(size=(400, 12))
    star = rng.normal(size=12)
    star /= np.linalg.norm(star)
    simulation = 10 * (whitened @ star > 1.0)  # a thresholded read of theta*: not linear, but monotone
    theta = rng.normal(size=12)
    theta /= np.linalg.norm(theta)
    before = np.corrcoef(whitened @ theta, simulation)[0, 1]
    after, fit = update_direction(whitened, simulation, theta, steps=300)
    assert abs(np.linalg.norm(after) - 1) < 1e-12
    assert abs(fit - np.corrcoef(whitened @ after, simulation)[0, 1]) < 1e-9
    assert fit > before + 0.3 and after @ star > 0.95
    unchanged, _ = update_direction(whitened, simulation, theta, steps=0)
    np.testing.assert_array_equal(unchanged, theta)


def test_neurons_needed_equals_brute_force() -> None:
    rng = np.random.default_rng(2)
    raw = rng.normal(size=(300, 20))
    read = rng.normal(size=20) * np.geomspace(1, 1e-3, 20)  # a few large coefficients, many small
    simulation = raw @ read + 0.1 * rng.normal(size=300)
    full = np.corrcoef(raw @ read, simulation)[0, 1]
    order = np.argsort(-np.abs(read))
    want = next(
        k for k in range(1, 21) if np.corrcoef(raw[:, order[:k]] @ read[order[:k]], simulation)[0, 1] >= 0.9 * full
    )
    assert neurons_needed(raw, read, simulation) == want < 20
    assert neurons_needed(raw, read, -simulation) is None  # nothing positive to recover


def row(direction: int, round_: int, pick: str | None, after: float | None, cands: dict[str, float]) -> dict:
    return {"direction": direction, "round": round_, "explanation": pick, "score_after": after,
            "candidates": list(cands), "candidate_scores": list(cands.values())}  # fmt: skip


def test_history_keeps_latest_scores_and_earlier_puts_the_last_pick_first() -> None:
    rows = [
        row(0, 0, "a", 0.1, {"a": 0.5, "b": 0.4}),
        row(0, 1, "c", 0.2, {"c": 0.6, "a": 0.05, "d": float("nan")}),
    ]
    assert history(rows) == {"a": 0.05, "b": 0.4, "c": 0.2, "d": None}
    assert best_earlier(rows, 3) == ["c", "b", "a"]
    assert best_earlier(rows, 0) == [] and best_earlier([], 2) == []
    nothing = [row(0, 0, None, None, {"x": float("nan")})]
    assert best_earlier(nothing, 2) == ["x"]
    by = rounds_by_direction([rows[1], rows[0], row(1, 1, "z", 0.0, {}), row(0, 2, "e", 0.3, {})], rounds=2)
    assert [r["round"] for r in by[0]] == [0, 1] and by[1] == []  # a gap (no round 0) is not resumed from
