"""Directions files: what is read, and every malformed file refused with a one-line ConfigError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from neuron_explainer.activations.hookpoints import hook_point_for
from neuron_explainer.directions.covariance import StreamingCovariance, covariance_path, write_npz
from neuron_explainer.directions.source import load_directions, write_directions
from neuron_explainer.errors import ConfigError
from neuron_explainer.features.source import make_source

D = 48  # the tiny llama's MLP width


def spd(d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(4 * d, d))
    return x.T @ x / len(x)


def test_rows_are_normalised_and_the_hash_covers_the_covariance(tmp_path: Path) -> None:
    run = tmp_path / "run"
    state = StreamingCovariance(D)
    state.n, state.comoment = 10, torch.tensor(spd(D) * 10)
    state.write(covariance_path(run, 1), 1)
    write_directions(tmp_path / "d.npz", 1, 3 * np.eye(D)[:2], covariance_run="run")  # relative to the file
    first = load_directions(tmp_path / "d.npz")
    np.testing.assert_allclose(np.linalg.norm(first.theta, axis=1), 1)
    assert first.covariance_from == str(covariance_path(run, 1))
    state.comoment = state.comoment * 2
    state.write(covariance_path(run, 1), 1)
    assert load_directions(tmp_path / "d.npz").content_sha256 != first.content_sha256


@pytest.mark.parametrize(
    ("arrays", "whiten", "message"),
    [
        ({"theta": np.eye(D)[:1]}, False, "lacks \\['layer'\\]"),
        ({"layer": 1, "theta": np.zeros((2, D))}, False, "zero vectors"),
        ({"layer": 1, "theta": np.full((1, D), np.nan)}, False, "finite"),
        ({"layer": 1, "theta": np.eye(D)[:1], "whitened": True}, False, "holds whitened directions but whiten=False"),
        ({"layer": 1, "theta": np.eye(D)[:1]}, True, "exactly one of `covariance` or `covariance_run`"),
        ({"layer": 1, "theta": np.eye(D)[:1], "covariance": np.eye(3)}, True, "does not match"),
        ({"layer": 1, "theta": np.eye(D)[:1], "covariance_run": "nowhere"}, True, "does not exist"),
        ({"layer": 1, "theta": np.eye(D)[:1], "covariance": np.zeros((D, D))}, True, "covariance is zero"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, arrays: dict, whiten: bool, message: str) -> None:
    write_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(ConfigError, match=message):
        load_directions(tmp_path / "bad.npz", whiten=whiten)


def test_a_file_that_does_not_fit_the_model_is_refused(tiny_model_dirs, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()
    point = hook_point_for("llama")
    write_directions(tmp_path / "wide.npz", 1, np.eye(D + 1)[:2], whitened=False)
    with pytest.raises(ConfigError, match="width 49"):
        make_source(f"directions:{tmp_path / 'wide.npz'}", model, point, whiten=False)
    write_directions(tmp_path / "deep.npz", 7, np.eye(D)[:2], whitened=False)
    with pytest.raises(ConfigError, match="out of range"):
        make_source(f"directions:{tmp_path / 'deep.npz'}", model, point, whiten=False)
    write_directions(tmp_path / "ok.npz", 1, np.eye(D)[:2], whitened=False)
    source = make_source(f"directions:{tmp_path / 'ok.npz'}", model, point, whiten=False)
    with pytest.raises(ConfigError, match="layer 1 only"):
        source.check_layers([0, 1])
    with pytest.raises(ConfigError, match="only the whiten option"):
        make_source(f"directions:{tmp_path / 'ok.npz'}", model, point, whiten=False, hook="x")
    with pytest.raises(ConfigError, match="does not exist"):
        make_source(f"directions:{tmp_path / 'missing.npz'}", model, point)
