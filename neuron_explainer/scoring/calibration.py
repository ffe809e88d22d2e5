"""Linear calibration of simulations to activation units. Pure numpy.

Simulated values live on the 0..max_level scale; ablation needs activations. The map
`a ≈ slope * s + intercept` is the least-squares fit on the calibration split, which is disjoint from the
explanation (train) and scoring (valid) splits, so calibrating cannot leak the scored excerpts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from neuron_explainer.errors import NeuronExplainerError


class CalibrationError(NeuronExplainerError):
    """The calibration split cannot fit a linear map (empty, or constant on either side)."""


@dataclass(frozen=True)
class LinearCalibration:
    """`activation ≈ slope * simulated + intercept`."""

    slope: float
    intercept: float
    n_tokens: int

    def apply(self, simulated: Sequence[float]) -> list[float]:
        """Map simulated values to activation units."""
        return [self.slope * float(v) + self.intercept for v in simulated]


def fit_calibration(true: Sequence[Sequence[float]], simulated: Sequence[Sequence[float]]) -> LinearCalibration:
    """Least-squares line from simulated to true activations, pooled over every token.

    Raises:
        CalibrationError: no tokens, mismatched lengths, non-finite values, or a constant side.
    """
    if len(true) != len(simulated) or any(len(a) != len(s) for a, s in zip(true, simulated, strict=True)):
        raise CalibrationError("calibration split: true and simulated excerpts differ in number or length")
    a = np.concatenate([np.asarray(x, dtype=np.float64) for x in true]) if true else np.zeros(0)
    s = np.concatenate([np.asarray(x, dtype=np.float64) for x in simulated]) if simulated else np.zeros(0)
    if a.size == 0:
        raise CalibrationError("the calibration split is empty: this neuron has no calibration records")
    if not (np.isfinite(a).all() and np.isfinite(s).all()):
        raise CalibrationError("the calibration split holds non-finite values")
    if np.ptp(s) == 0.0:
        raise CalibrationError("the simulation is constant on the calibration split: no line can be fitted")
    if np.ptp(a) == 0.0:
        raise CalibrationError("the true activations are constant on the calibration split: nothing to calibrate to")
    ds = s - s.mean()
    slope = float((ds * (a - a.mean())).sum() / (ds * ds).sum())
    return LinearCalibration(slope, float(a.mean() - slope * s.mean()), int(a.size))


def calibration_columns(calibrate: bool, true: Sequence[Sequence[float]], simulated: Sequence[Sequence[float]]) -> dict:
    """The calibration columns stored on an explanation's simulation rows.

    Slope and intercept of the fit, or the reason it is impossible in `calibration_error`; all null when
    calibration is off.
    """
    if not calibrate:
        return {"calibration_slope": None, "calibration_intercept": None, "calibration_error": None}
    try:
        cal = fit_calibration(true, simulated)
    except CalibrationError as e:
        return {"calibration_slope": None, "calibration_intercept": None, "calibration_error": str(e)}
    return {"calibration_slope": cal.slope, "calibration_intercept": cal.intercept, "calibration_error": None}
