"""The streaming covariance equals numpy's on all rows, in any batching and merge order; whitening whitens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neuron_explainer.directions.covariance import EIGEN_FLOOR, StreamingCovariance, Whitener, write_npz
from neuron_explainer.errors import ConfigError


def data(n: int = 700, d: int = 9, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a large common offset and unequal scales: what naive sums of squares get wrong
    return (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 1e4).astype(np.float32)


def streamed(x: np.ndarray, cuts: list[int]) -> StreamingCovariance:
    state = StreamingCovariance(x.shape[1])
    for a, b in zip([0, *cuts], [*cuts, len(x)], strict=True):
        state.update(torch.from_numpy(x[a:b]))
    return state


@pytest.mark.parametrize("cuts", [[], [1], [5, 6, 300], list(range(10, 700, 37))])
def test_streaming_equals_numpy(cuts: list[int]) -> None:
    x = data()
    state = streamed(x, cuts)
    want = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    assert state.n == len(x)
    np.testing.assert_allclose(state.mean.numpy(), x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(state.covariance(), want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


def test_merging_parts_equals_one_stream() -> None:
    x = data(seed=1)
    parts = [streamed(x[a:b], [7]) for a, b in ((0, 100), (100, 101), (101, 700))]
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    merged.merge(StreamingCovariance(x.shape[1]))  # an empty shard changes nothing
    whole = streamed(x, [50, 400])
    assert merged.n == whole.n
    np.testing.assert_allclose(merged.covariance(), whole.covariance(), rtol=1e-10, atol=1e-12)
    with pytest.raises(Exception, match="no tokens"):
        StreamingCovariance(3).covariance()


def test_file_round_trip_and_same_bytes(tmp_path: Path) -> None:
    state = streamed(data(seed=2), [100])
    state.write(tmp_path / "a.npz", layer=4)
    state.write(tmp_path / "b.npz", layer=4)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    layer, back = StreamingCovariance.read(tmp_path / "a.npz")
    assert layer == 4 and back.n == state.n
    np.testing.assert_array_equal(back.comoment.numpy(), state.comoment.numpy())
    write_npz(tmp_path / "bad.npz", {"layer": 1})
    with pytest.raises(ConfigError, match="not a covariance file"):
        StreamingCovariance.read(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="not a readable"):
        StreamingCovariance.read(tmp_path / "junk.npz")


def test_whitening_gives_unit_covariance_and_floors_tiny_eigenvalues() -> None:
    x = data(seed=3).astype(np.float64)
    cov = np.cov(x, rowvar=False, bias=True)
    white = Whitener.from_covariance(cov)
    np.testing.assert_allclose(white.inverse_sqrt @ cov @ white.inverse_sqrt, np.eye(9), atol=1e-8)
    np.testing.assert_allclose(white.sqrt @ white.inverse_sqrt, np.eye(9), atol=1e-8)
    assert white.floored == 0
    # a dead unit (zero variance) and a duplicated one: two zero eigenvalues, raised to the floor
    y = np.concatenate([x, np.zeros((len(x), 1)), x[:, :1]], 1)
    degenerate = Whitener.from_covariance(np.cov(y, rowvar=False, bias=True))
    assert degenerate.floored == 2
    top = np.linalg.eigvalsh(np.cov(y, rowvar=False, bias=True)).max()
    assert np.abs(degenerate.inverse_sqrt).max() <= (EIGEN_FLOOR * top) ** -0.5 * 1.0001
    theta = np.random.default_rng(0).normal(size=(3, 11))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    # u^T w = theta^T theta = 1: the ablation edit's normaliser
    np.testing.assert_allclose((degenerate.read_vectors(theta) * degenerate.output_vectors(theta)).sum(1), 1, atol=1e-6)
    with pytest.raises(ConfigError, match="zero"):
        Whitener.from_covariance(np.zeros((3, 3)))
    with pytest.raises(ConfigError, match="square"):
        Whitener.from_covariance(np.zeros((3, 2)))
