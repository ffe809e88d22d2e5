import numpy as np
import pytest
from scipy import stats

from neuron_explainer.scoring.calibration import CalibrationError, fit_calibration


def test_fit_equals_scipy_linregress() -> None:
    rng = np.random.default_rng(0)
    sim = [rng.uniform(0, 10, size=n) for n in (5, 9, 3)]
    true = [0.3 * s - 1.2 + rng.normal(0, 0.5, size=s.size) for s in sim]
    cal = fit_calibration([t.tolist() for t in true], [s.tolist() for s in sim])
    ref = stats.linregress(np.concatenate(sim), np.concatenate(true))
    assert cal.slope == pytest.approx(ref.slope, abs=1e-12) and cal.intercept == pytest.approx(ref.intercept, abs=1e-12)
    assert cal.n_tokens == 17
    assert cal.apply([0.0, 10.0]) == pytest.approx([ref.intercept, ref.intercept + 10 * ref.slope])


@pytest.mark.parametrize(
    ("true", "sim", "match"),
    [
        ([], [], "empty"),
        ([[1.0, 2.0]], [[3.0, 3.0]], "simulation is constant"),
        ([[0.0, 0.0]], [[1.0, 2.0]], "true activations are constant"),
        ([[1.0, 2.0]], [[1.0]], "differ"),
        ([[1.0, float("nan")]], [[1.0, 2.0]], "non-finite"),
    ],
)
def test_unfittable_calibration_splits_are_clear_errors(true, sim, match) -> None:
    with pytest.raises(CalibrationError, match=match):
        fit_calibration(true, sim)
